"""Pretraining on paired data: a weighted mixture of objectives (objectives/contrastive, matching, masked,
lm for captioning, qa) trained by the ordinary trainer, then evaluated on held-out pairs.

    data.py       (media, caption[, question, answer]) pairs from the world or a JSONL file; processing, collating
    objective.py  the heads it adds to the model and the mixture (PretrainObjective)
    run.py        `mmdialog pretrain`: data -> trainer -> checkpoint for train.init_from -> metrics.json, plots.png
    evaluate.py   retrieval R@1/5/10 both ways, captioning BLEU-4 / CIDEr-D, QA accuracy
    metrics.py    the metric functions
"""
