"""Evaluation of a pretrained model on held-out pairs: retrieval, captioning, question answering.

- retrieval (needs the contrastive heads): R@1/5/10 and mean rank, media -> text and text -> media, over the
  held-out pairs' embeddings (a caption identical to the gold one counts as gold);
- captioning: greedy captions (up to pretrain.max_caption_tokens) scored by BLEU-4 and CIDEr-D against the
  pair's caption, and the share of distinct captions (one caption for every picture: the media are ignored);
- QA: exact-match accuracy of the greedy answer (teacher forced: the same verdict as generating, see
  eval/teacher_forced.py), and of the answer head over the closed answer set when there is one.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from mmdialog.data.conversation import Conversation, Text
from mmdialog.data.formats.common import media_part
from mmdialog.eval.contexts import Sequence
from mmdialog.eval.teacher_forced import TeacherForcedScorer
from mmdialog.modalities import BATCH_KEYS
from mmdialog.objectives.lm import IGNORE_INDEX, shift_labels
from mmdialog.pretrain.data import PairCollator, PairDataset, PairRecord, text_hash
from mmdialog.pretrain.metrics import bleu4, cider_d, retrieval_metrics
from mmdialog.pretrain.objective import MEDIA_KEYS, media_embedding, text_embedding


def _batches(dataset: PairDataset, size: int):
    for i in range(0, len(dataset), size):
        yield [(dataset.items[j], 0 if dataset.items[j].qas else -1) for j in range(i, min(i + size, len(dataset)))]


@torch.no_grad()
def retrieval(model, heads, dataset: PairDataset, pad_id: int, batch_size: int = 64) -> dict:
    collate = PairCollator(pad_id)
    media_embs, text_embs = [], []
    for items in _batches(dataset, batch_size):
        b = collate(items)
        key = next(k for k in MEDIA_KEYS if k in b)
        media_embs.append(media_embedding(model, heads, model.encode_media(**{key: b[key]})))
        text_embs.append(text_embedding(model, heads, b["text_ids"], b["text_mask"]))
    hashes = torch.tensor([text_hash(it.text_ids) for it in dataset.items])
    return retrieval_metrics(torch.cat(media_embs), torch.cat(text_embs), hashes[:, None] == hashes[None, :])


@torch.no_grad()
def captioning(model, processor, records: list[PairRecord], max_new_tokens: int, progress: bool = False,
               examples: int = 5) -> dict:
    """Greedy captions of the records' media, BLEU-4 and CIDEr-D against their captions."""
    tok = processor.tokenizer
    hyps, refs = [], []
    for rec in tqdm(records, desc="captions", disable=not progress, leave=False):
        conv = Conversation()
        conv.add("user", media_part(rec.modality, rec.path), Text(rec.prompt))
        ex = processor(conv, add_generation_prompt=True, where=f"pair {rec.id}")
        media = {k: getattr(ex, k) for k in MEDIA_KEYS.keys() if getattr(ex, k) is not None}
        out = model.generate(ex.input_ids[None], max_new_tokens=max_new_tokens, eos_id=tok.end_id, **media)
        hyps.append(tok.decode([t for t in out if t != tok.end_id]).strip())
        refs.append([rec.text])
    if not hyps:
        return {"bleu4": None, "cider": None, "captions": 0}
    cider, _ = cider_d(hyps, refs)
    # distinct_captions: the share of different captions; near 1 / captions, the model ignores the media
    return {"bleu4": bleu4(hyps, refs), "cider": cider, "captions": len(hyps),
            "distinct_captions": len(set(hyps)) / len(hyps),
            "examples": [{"id": r.id, "generated": h, "reference": rf[0]}
                         for r, h, rf in zip(records[:examples], hyps, refs)]}


@torch.no_grad()
def question_answering(model, processor, records: list[PairRecord], *, max_new_tokens: int, heads=None,
                       answer_vocab=None) -> dict:
    """Exact match of the greedy answers to every question of the records; the answer head's accuracy too."""
    seqs = []
    for rec in records:
        for k, (q, a) in enumerate(rec.qas):
            conv = Conversation(meta={"id": f"{rec.id}#{k}"})
            conv.add("user", media_part(rec.modality, rec.path), Text(q))
            conv.add("assistant", a)
            seqs.append(Sequence(f"{rec.id}#{k}", conv, [(0, 0)]))
    if not seqs:
        return {"accuracy": None, "questions": 0}
    scorer = TeacherForcedScorer(model, processor, max_new_tokens=max_new_tokens)
    examples = scorer.prepare(seqs)
    scores = scorer.score(seqs, examples)
    out = {"accuracy": sum(s[0].correct for s in scores) / len(scores), "questions": len(scores)}
    head = getattr(heads, "answers", None) if heads is not None else None
    if head is not None and answer_vocab is not None:
        right = 0
        for i in range(0, len(seqs), 64):
            batch = scorer.collate(examples[i:i + 64])
            labels = batch.pop("labels")
            media = model.encode_media(**{k: batch.pop(k, None) for k in BATCH_KEYS})
            hidden = model.hidden(batch.pop("input_ids"), media, attention_mask=batch["attention_mask"])
            first = (shift_labels(labels) != IGNORE_INDEX).float().argmax(1)
            pred = head(hidden[torch.arange(len(first)), first]).argmax(-1).tolist()
            gold = [answer_vocab.encode(s.conv.turns[-1].parts[0].text) for s in seqs[i:i + 64]]
            right += sum(p == g for p, g in zip(pred, gold))
        out["head_accuracy"] = right / len(seqs)
    return out
