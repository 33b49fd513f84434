"""`mmdialog pretrain`: pairs -> the objective mixture trained by the ordinary trainer -> a checkpoint that
`train.init_from` fine-tunes -> metrics on held-out pairs.

run_pretrain does it and returns the metrics; main is the command (under torchrun too).

OUT/ holds what `mmdialog train` writes (checkpoint/, checkpoints/ with --resume, train_log.jsonl, whose records
also carry each objective's loss), plus:
    pretrain_heads.safetensors, pretrain_heads.json   the heads (projections, temperature, matching and answer
                                                        heads, the BERT text tower), not needed to fine-tune
    metrics.json, plots.png                             retrieval, captioning, QA; losses per objective
    skipped.jsonl                                       pairs left out, with the reason (when there are any)
"""

from __future__ import annotations

import json
from pathlib import Path

from mmdialog.config import Config
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.errors import MMDialogError
from mmdialog.eval.validation import Validator
from mmdialog.model import count_parameters
from mmdialog.modelio import world_meta
from mmdialog.objectives.qa import AnswerVocab
from mmdialog.pretrain.data import (CAPTION_PROMPT, USER_CAPTION_PROMPT, PairCollator, PairDataset, read_pairs_file,
                                    world_pairs, world_texts)
from mmdialog.pretrain.evaluate import evaluate_pretrained, plot_pretrain, summary_line
from mmdialog.pretrain.heads import build_heads, save_heads
from mmdialog.pretrain.objective import PretrainObjective, check_weights
from mmdialog.recipes.world import ensure_world
from mmdialog.train.distributed import Dist


def pair_sources(cfg: Config, out: Path, dist: Dist, progress: bool = True):
    """(training records, skipped while reading, held-out records, extra tokenizer texts, source description)."""
    pc = cfg.pretrain
    if pc.pairs_file:
        records, skipped = read_pairs_file(pc.pairs_file, pc.media_root or None)
        held, held_skipped = read_pairs_file(pc.eval_file, pc.media_root or None) if pc.eval_file else ([], [])
        skipped += held_skipped
        texts = [t for r in records for t in (r.text, *[x for qa in r.qas for x in qa])] + [USER_CAPTION_PROMPT]
        return records, skipped, held, texts, {"pairs_file": str(Path(pc.pairs_file).resolve())}
    world = ensure_world(cfg, out, progress=progress) if dist.is_main else None
    dist.barrier()
    world = world or ensure_world(cfg, out)
    records = world_pairs(world, "train", pc.world_captions)
    held = world_pairs(world, "val", pc.world_captions)
    texts = world_texts(world) + [r.text for r in records] + [CAPTION_PROMPT, "Describe the picture."]
    return records, [], held, texts, world_meta(world)


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
    log("pretraining objectives: " + ", ".join(f"{k} x{v:g}" for k, v in weights.items())
        + f"; text tower: {pc.text_tower}; heads: {count_parameters(model.pretrain_heads):,} parameters")
    meta = {**source, "pretrain": {"objectives": weights, "text_tower": pc.text_tower}}
    result = train(cfg, model, tokenizer, dataset, out, meta=meta, resume=resume, dist=dist, progress=progress,
                   log=log, objective=objective, collate=PairCollator(tokenizer.pad_id, answer_vocab),
                   validator=Validator.build)

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


def main(cfg: Config, out: str | Path, *, resume: bool = False) -> int:
    """`mmdialog pretrain`: run_pretrain under torchrun too; 0 when done, 143 when stopped (continue with --resume)."""
    from mmdialog.train.distributed import destroy_distributed, init_distributed
    from mmdialog.train.trainer import resolve_device

    dist = init_distributed(resolve_device(cfg.train.device).type)
    try:
        m = run_pretrain(cfg, Path(out), resume=resume, dist=dist, progress=dist.is_main,
                         log=print if dist.is_main else (lambda *a, **k: None))
    finally:
        destroy_distributed()
    if not dist.is_main:
        return 0
    t = m["train"]
    if t["stopped"]:
        print(f"stopped by {t['stopped']} at step {t['steps']}; continue with: mmdialog pretrain ... --resume")
        return 143
    print(f"pretrained {t['steps']} steps in {t['wall_seconds']:.0f}s, final loss {t['final_loss']:.4f}; "
          f"checkpoint: {Path(out) / 'checkpoint'} (fine-tune it with train.init_from=...)")
    if "eval" in m:
        print("held-out " + summary_line(m["eval"]))
    print(f"wrote {Path(out) / 'metrics.json'} and plots.png")
    return 0
