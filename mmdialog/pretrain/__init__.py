"""Pretraining on paired data: a weighted mixture of objectives (objectives/contrastive, matching, masked,
lm for captioning, qa) trained by the ordinary trainer, then evaluated on held-out pairs. The run itself
(`mmdialog pretrain`: data -> trainer -> checkpoint for train.init_from -> metrics.json, plots.png) is the
recipe in recipes/pretrain.py.

    data.py       (media, caption[, question, answer]) pairs from the world or a JSONL file; processing, collating
    objective.py  the heads it adds to the model and the mixture (PretrainObjective)
    heads.py      the heads built from the config (build_heads) and written beside the checkpoint (save_heads)
    evaluate.py   retrieval R@1/5/10 both ways, captioning BLEU-4 / CIDEr-D, QA accuracy; the held-out run,
                  its summary line and plot
    metrics.py    the metric functions
"""
