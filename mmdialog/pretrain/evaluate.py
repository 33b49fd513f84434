"""Evaluation of a pretrained model on held-out pairs: retrieval, captioning, question answering.

- retrieval (needs the contrastive heads): R@1/5/10 and mean rank, media -> text and text -> media, over the
  held-out pairs' embeddings (a caption identical to the gold one counts as gold);
- captioning: greedy captions (up to pretrain.max_caption_tokens) scored by BLEU-4 and CIDEr-D against the
  pair's caption, and the share of distinct captions (one caption for every picture: the media are ignored);
- QA: exact-match accuracy of the greedy answer (teacher forced: the same verdict as generating, see
  eval/teacher_forced.py), and of the answer head over the closed answer set when there is one.

evaluate_pretrained runs those the mixture trained, summary_line puts them on one line and plot_pretrain
draws them beside each objective's training loss (OUT/plots.png).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mmdialog.config import Config
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


def evaluate_pretrained(model, heads, processor, records: list[PairRecord], cfg: Config, weights: dict,
                        answer_vocab=None, progress: bool = True, log=print) -> dict:
    model.eval()
    heads.eval()
    t = time.perf_counter()
    held = PairDataset.build(records, processor, desc="processing held-out pairs", progress=progress)
    out: dict = {"pairs": len(held), "skipped": len(held.skipped)}
    usable = set(held.ids)
    records = [r for r in records if r.id in usable]
    if hasattr(heads, "contrastive"):
        out["retrieval"] = retrieval(model, heads, held, processor.tokenizer.pad_id)
    if "captioning" in weights:
        out["captioning"] = captioning(model, processor, records, cfg.pretrain.max_caption_tokens, progress=progress)
    if "qa" in weights:
        out["qa"] = question_answering(model, processor, records,
                                       max_new_tokens=cfg.eval.max_new_tokens, heads=heads, answer_vocab=answer_vocab)
    out["seconds"] = round(time.perf_counter() - t, 1)
    log("held-out: " + summary_line(out))
    return out


def summary_line(ev: dict) -> str:
    parts = []
    if "retrieval" in ev:
        r = ev["retrieval"]
        parts.append("retrieval media->text R@1/5/10 " + "/".join(f"{r['media_to_text'][f'r@{k}']:.2f}" for k in (1, 5, 10))
                     + ", text->media " + "/".join(f"{r['text_to_media'][f'r@{k}']:.2f}" for k in (1, 5, 10)))
    if ev.get("captioning", {}).get("bleu4") is not None:
        c = ev["captioning"]
        parts.append(f"BLEU-4 {c['bleu4']:.3f}, CIDEr {c['cider']:.3f}"
                     + (f", distinct captions {c['distinct_captions']:.2f}" if "distinct_captions" in c else ""))
    if ev.get("qa", {}).get("accuracy") is not None:
        parts.append(f"QA accuracy {ev['qa']['accuracy']:.3f}"
                     + (f" (head {ev['qa']['head_accuracy']:.3f})" if "head_accuracy" in ev["qa"] else ""))
    return f"{ev['pairs']} pairs: " + "; ".join(parts)


def plot_pretrain(log_path: Path, metrics: dict, path: Path) -> Path | None:
    """Each objective's training loss (left) and the held-out metrics (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        rows = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("contrastive", "matching", "masked", "captioning", "qa"):
        pts = [(r["step"], r[name]) for r in rows if name in r]
        if pts:
            ax1.plot(*zip(*pts), label=name)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title("pretraining losses")
    ax1.legend(fontsize=8)
    ev = metrics.get("eval", {})
    bars = {}
    for d, short in (("media_to_text", "m->t"), ("text_to_media", "t->m")):
        for k in (1, 5, 10):
            if "retrieval" in ev:
                bars[f"{short} R@{k}"] = ev["retrieval"][d][f"r@{k}"]
    if ev.get("captioning", {}).get("bleu4") is not None:
        bars["BLEU-4"] = ev["captioning"]["bleu4"]
        bars["CIDEr/10"] = ev["captioning"]["cider"] / 10
    if ev.get("qa", {}).get("accuracy") is not None:
        bars["QA acc"] = ev["qa"]["accuracy"]
    if bars:
        b = ax2.bar(list(bars), list(bars.values()), color="#4878cf")
        for rect, v in zip(b, bars.values()):
            ax2.text(rect.get_x() + rect.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
        ax2.tick_params(axis="x", rotation=45, labelsize=7)
    ax2.set_ylim(0, 1.1)
    ax2.set_title(f"held-out ({ev.get('pairs', 0)} pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
