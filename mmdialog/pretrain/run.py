"""`mmdialog pretrain`: pairs -> the objective mixture trained by the ordinary trainer -> a checkpoint that
`train.init_from` fine-tunes -> metrics on held-out pairs.

OUT/ holds what `mmdialog train` writes (checkpoint/, checkpoints/ with --resume, train_log.jsonl, whose records
also carry each objective's loss), plus:
    pretrain_heads.safetensors, pretrain_heads.json   the heads (projections, temperature, matching and answer
                                                        heads, the BERT text tower), not needed to fine-tune
    metrics.json, plots.png                             retrieval, captioning, QA; losses per objective
    skipped.jsonl                                       pairs left out, with the reason (when there are any)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mmdialog.config import Config, build_part, to_dict
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.errors import MMDialogError
from mmdialog.model import count_parameters
from mmdialog.modelio import world_meta
from mmdialog.objectives.qa import AnswerVocab
from mmdialog.pretrain.data import (CAPTION_PROMPT, USER_CAPTION_PROMPT, PairCollator, PairDataset, PairRecord,
                                    read_pairs_file, world_pairs, world_texts)
from mmdialog.pretrain.objective import PretrainHeads, PretrainObjective, check_weights
from mmdialog.train.distributed import Dist

HEADS_FILE, HEADS_META = "pretrain_heads.safetensors", "pretrain_heads.json"
TEXT_ENCODER_DEFAULTS = {"name": "bert", "dim": 128, "depth": 2, "heads": 4}


def pair_sources(cfg: Config, out: Path, dist: Dist, progress: bool = True):
    """(training records, skipped while reading, held-out records, extra tokenizer texts, source description)."""
    pc = cfg.pretrain
    if pc.pairs_file:
        records, skipped = read_pairs_file(pc.pairs_file, pc.media_root or None)
        held, held_skipped = read_pairs_file(pc.eval_file, pc.media_root or None) if pc.eval_file else ([], [])
        skipped += held_skipped
        texts = [t for r in records for t in (r.text, *[x for qa in r.qas for x in qa])] + [USER_CAPTION_PROMPT]
        return records, skipped, held, texts, {"pairs_file": str(Path(pc.pairs_file).resolve())}
    from mmdialog.demo import ensure_world

    world = ensure_world(cfg, out, progress=progress) if dist.is_main else None
    dist.barrier()
    world = world or ensure_world(cfg, out)
    records = world_pairs(world, "train", pc.world_captions)
    held = world_pairs(world, "val", pc.world_captions)
    texts = world_texts(world) + [r.text for r in records] + [CAPTION_PROMPT, "Describe the picture."]
    return records, [], held, texts, world_meta(world)


def build_heads(cfg: Config, model, tokenizer: ChatTokenizer, weights: dict, modality: str,
                answer_vocab: AnswerVocab | None) -> PretrainHeads:
    pc = cfg.pretrain
    text_encoder = None
    if pc.text_tower == "bert":
        from mmdialog.registry import ENCODERS

        spec = {**TEXT_ENCODER_DEFAULTS, **pc.text_encoder}
        text_encoder = build_part(ENCODERS, spec, "pretrain.text_encoder", vocab_size=tokenizer.vocab_size,
                                  pad_id=tokenizer.pad_id)
    elif pc.text_tower != "decoder":
        raise MMDialogError(f"pretrain.text_tower must be decoder or bert, got {pc.text_tower!r}")
    if modality not in model.encoders:
        raise MMDialogError(f"the pairs hold {modality} but the model has no {modality} encoder "
                            f"(it has: {', '.join(model.encoders)})")
    return PretrainHeads(objectives=weights, media_dim=model.encoders[modality].dim, model_dim=model.decoder.dim,
                         embed_dim=pc.embed_dim, temperature=pc.temperature, text_encoder=text_encoder,
                         n_answers=len(answer_vocab) if answer_vocab is not None else 0)


def run_pretrain(cfg: Config, out: str | Path, *, resume: bool = False, dist: Dist | None = None,
                 progress: bool = True, log=print) -> dict:
    """Pretrain cfg.model with the cfg.pretrain mixture; returns the metrics written to OUT/metrics.json."""
    from mmdialog.modelio import save_checkpoint
    from mmdialog.train.checkpoint import latest_training_checkpoint
    from mmdialog.train.trainer import tokenizer_and_model, train

    dist = dist or Dist()
    out = Path(out)
    pc = cfg.pretrain
    weights = check_weights(pc.objectives)
    if pc.hard_negatives not in ("hardest", "sample"):
        raise MMDialogError(f"pretrain.hard_negatives must be hardest or sample, got {pc.hard_negatives!r}")
    if not 0 < pc.mask_prob <= 1:
        raise MMDialogError(f"pretrain.mask_prob must be in (0, 1], got {pc.mask_prob}")
    records, skipped, held, texts, source = pair_sources(cfg, out, dist, progress and dist.is_main)

    latest = latest_training_checkpoint(out / "checkpoints") if resume else None
    # a resumed run keeps its own tokenizer, whatever the data would train now
    tokenizer, model = tokenizer_and_model(cfg, lambda: texts, ChatTokenizer.load(latest) if latest else None)
    processor = Processor.for_model(tokenizer, model, max_length=cfg.model.decoder.max_seq_len)
    dataset = PairDataset.build(records, processor, skipped=skipped, progress=progress and dist.is_main)
    if len(dataset) < cfg.train.batch_size:
        raise MMDialogError(f"{len(dataset)} usable pairs, fewer than train.batch_size={cfg.train.batch_size}; "
                            + dataset.report())
    answer_vocab = AnswerVocab.build([a for r in records for _, a in r.qas]) if pc.qa_head and "qa" in weights else None
    model.pretrain_heads = build_heads(cfg, model, tokenizer, weights, dataset.modality, answer_vocab)
    objective = PretrainObjective(model, weights, mask_id=tokenizer.tok.token_to_id("<|bos|>"),
                                  end_id=tokenizer.end_id, mask_prob=pc.mask_prob, hard_negatives=pc.hard_negatives)
    log(f"pretraining objectives: " + ", ".join(f"{k} x{v:g}" for k, v in weights.items())
        + f"; text tower: {pc.text_tower}; heads: {count_parameters(model.pretrain_heads):,} parameters")
    meta = {**source, "pretrain": {"objectives": weights, "text_tower": pc.text_tower}}
    result = train(cfg, model, tokenizer, dataset, out, meta=meta, resume=resume, dist=dist, progress=progress,
                   log=log, objective=objective, collate=PairCollator(tokenizer.pad_id, answer_vocab))

    heads = model.pretrain_heads
    del model.pretrain_heads  # the checkpoint is the plain model, for train.init_from, chat, eval, export
    if not dist.is_main:
        return {}
    ck_meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    save_checkpoint(out / "checkpoint", model, tokenizer, cfg, {k: v for k, v in ck_meta.items()
                                                                  if k not in ("format", "mmdialog_version",
                                                                               "vocab_size", "placeholder_ids")})
    save_heads(out, heads, pc, answer_vocab)
    if dataset.skipped:
        from mmdialog.data.dataset import report_skipped

        report_skipped(dataset.skipped, out / "skipped.jsonl")
    metrics = {
        "objectives": weights, "text_tower": pc.text_tower,
        "data": {**source, "pairs": len(dataset), "questions": sum(len(it.qas) for it in dataset.items),
                 "skipped": len(dataset.skipped), "report": dataset.report()},
        "train": {"steps": result.steps, "wall_seconds": round(result.wall_seconds, 1),
                  "tokens_per_second": round(result.tokens_per_second, 1), "final_loss": result.final_loss,
                  "stopped": result.stopped},
        "model": {"parameters": count_parameters(model), "head_parameters": count_parameters(heads)},
    }
    if not result.stopped and pc.eval_pairs > 0 and held:
        metrics["eval"] = evaluate_pretrained(model, heads, processor, held[:pc.eval_pairs], cfg, weights,
                                              answer_vocab, progress=progress, log=log)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_pretrain(out / "train_log.jsonl", metrics, out / "plots.png")
    return metrics


def evaluate_pretrained(model, heads, processor, records: list[PairRecord], cfg: Config, weights: dict,
                        answer_vocab=None, progress: bool = True, log=print) -> dict:
    from mmdialog.pretrain.evaluate import captioning, question_answering, retrieval

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


def save_heads(out: Path, heads, pc, answer_vocab) -> None:
    from safetensors.torch import save_model

    save_model(heads, str(out / HEADS_FILE))
    (out / HEADS_META).write_text(json.dumps({
        "text_tower": pc.text_tower, "text_encoder": {**TEXT_ENCODER_DEFAULTS, **pc.text_encoder}
        if pc.text_tower == "bert" else None, "embed_dim": pc.embed_dim,
        "temperature": heads.contrastive.scale.temperature if hasattr(heads, "contrastive") else None,
        "answers": answer_vocab.answers if answer_vocab is not None else None,
        "config": to_dict(pc)}, indent=2))


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
