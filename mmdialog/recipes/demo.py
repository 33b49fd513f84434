"""`mmdialog demo`: generate the world, train, evaluate, chat about one test image, plot, explain, report.

run_demo does it and returns the metrics; main is the command: run_demo, then the figures it is judged by."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from mmdialog.answers import normalise
from mmdialog.chat.session import ChatSession
from mmdialog.config import Config
from mmdialog.data.conversation import Image
from mmdialog.data.worlds.shapes import heldout_info, load_split
from mmdialog.data.worlds.shapes.as_said import golds_as_said
from mmdialog.eval.lab import run_lab
from mmdialog.eval.plots import plot_run
from mmdialog.eval.report import build_report
from mmdialog.eval.run import heldout_metrics, write_outputs
from mmdialog.eval.validation import Validator
from mmdialog.explain import explain_dialogue
from mmdialog.model import count_parameters
from mmdialog.modelio import world_meta
from mmdialog.recipes.world import ensure_world
from mmdialog.train.trainer import prepare, train


# The demo has 10 minutes on 2 cores. The gold history is one batched pass over every test dialogue (~3s
# for 600); these parts cost more per dialogue, so they run on the first test dialogues only
# (benchmarks/eval_speed.py: ~0.1s per dialogue for the six ablations, ~0.12s chat, ~0.17s ranking).
DEMO_ABLATIONS = 300  # dialogues for the six ablations (per-round contexts)
DEMO_OWN_HISTORY = 100  # dialogues chatted through with the model's own answers (generation)
DEMO_RANKING = 50  # dialogues whose questions get their candidate answers ranked


def write_transcript(session: ChatSession, record: dict, world: Path, path: Path) -> None:
    """The model chats about one test image using its own earlier answers; gold answers stand beside."""
    session.reset()
    image = (world / record["image"]).resolve()
    lines = [f"# Transcript: {record['id']}", "", f"Image: `{image}`", "", f"![scene]({image})", "",
             "The model sees its own earlier answers (not the gold ones).", "",
             "| round | user | model | gold | ok | needs history |", "|---|---|---|---|---|---|"]
    replies = [session.ask(*([Image(path=str(image)), rd["question"]] if rd["round"] == 0 else [rd["question"]]))
               for rd in record["rounds"]]
    for rd, reply, gold in zip(record["rounds"], replies, golds_as_said(record, replies)):
        ok = normalise(reply) == normalise(gold)
        dist = f"{rd['distance']} ({rd['ref']})" if rd["distance"] else "no"
        shown = gold if gold == rd["answer"] else f"{gold} (about the object the model named; scripted: {rd['answer']})"
        lines.append(f"| {rd['round']} | {rd['question']} | {reply} | {shown} | {'yes' if ok else 'NO'} | {dist} |")
    path.write_text("\n".join(lines) + "\n")


PROBE_DIALOGUES = (4, 32)  # the evaluation is timed on this many test dialogues before training (demo_minutes)
TAIL_SECONDS = 15.0  # transcript, plots, explain and report after the evaluation (~5 s on a 2-core Xeon)


def _probe_seconds(model, processor, records: list[dict], world: Path, k: int, max_new_tokens: int,
                   max_heldout: int) -> dict[str, float]:
    """Seconds of each part of the demo's evaluation on k dialogues (held-out splits: k of each)."""
    lab = run_lab(model, processor, records[:k], world, max_new_tokens=max_new_tokens, own_history=k, ranking=k,
                  ablation_dialogues=k, progress=False)
    seconds = dict(lab.metrics["eval"]["seconds"])
    t = time.perf_counter()
    heldout_metrics(model, processor, world, max_new_tokens=max_new_tokens,
                    max_dialogues=min(k, max_heldout) if max_heldout else k)
    seconds["heldout"] = time.perf_counter() - t
    return seconds


def estimate_eval_seconds(model, processor, records: list[dict], world: Path, max_new_tokens: int,
                          max_heldout: int = 0) -> float:
    """What the demo's evaluation will take, extrapolated from two timed probes (PROBE_DIALOGUES test
    dialogues, and as many of each held-out split) with the model as it is: each part's cost is a fixed
    part plus a part per dialogue, and the line through the two probes gives both (a single small probe
    scaled up counts the fixed part hundreds of times: 8 dialogues predicted 1,448 s for an evaluation
    of 234 s), after a warm-up probe of one dialogue (first calls cost more). Teacher-forced passes cost the
    same whatever the weights; what generates (the real chat, the held-out splits) generates the gold answers'
    mean length per answer, since an untrained model rarely stops."""
    k1, k2 = (min(k, len(records)) for k in PROBE_DIALOGUES)
    tok = processor.tokenizer
    answers = [len(tok.encode_text(rd["answer"])) + 1 for r in records[:k2] for rd in r["rounds"]]
    # The probes generate as many tokens per answer as the gold answers have on average (+ the end token):
    # an untrained model rarely stops, and at max_new_tokens the real chat of 16 dialogues took 29 s of the
    # probes for what the trained model does in 0.5 s.
    probe_tokens = max(1, min(max_new_tokens, math.ceil(sum(answers) / max(len(answers), 1))))
    _probe_seconds(model, processor, records, world, 1, probe_tokens, max_heldout)  # warm-up, not counted
    small = _probe_seconds(model, processor, records, world, k1, probe_tokens, max_heldout)
    large = _probe_seconds(model, processor, records, world, k2, probe_tokens, max_heldout)
    n = len(records)
    splits = [s for s in (heldout_info(world).get("splits") or {}) if (world / f"{s}.jsonl").is_file()]
    sizes = [sum(1 for line in open(world / f"{s}.jsonl", encoding="utf-8") if line.strip()) for s in splits]
    per_split = min(max(sizes, default=0), max_heldout) if max_heldout else max(sizes, default=0)
    dialogues = {"gold_history": n, "reader": n, "own_history": min(DEMO_OWN_HISTORY, n), "ranking": min(DEMO_RANKING, n),
                 "heldout": per_split}
    total = 0.0
    for part, sec in large.items():
        want = dialogues.get(part, min(DEMO_ABLATIONS, n))
        per = (sec - small.get(part, 0.0)) / (k2 - k1) if k2 > k1 else sec / max(k2, 1)
        per = max(per, 0.0)
        total += sec + per * max(want - k2, 0)
    return total


def budget_training(cfg: Config, t0: float, eval_seconds: float, log=print) -> Config:
    """cfg with train.max_minutes cut to what eval.demo_minutes leaves after the time spent so far, the
    evaluation's estimate and the tail; at least one minute."""
    left = cfg.eval.demo_minutes * 60 - (time.perf_counter() - t0) - eval_seconds - TAIL_SECONDS
    minutes = max(1.0, left / 60)
    if cfg.train.max_minutes:
        minutes = min(minutes, cfg.train.max_minutes)
    log(f"demo budget: {cfg.eval.demo_minutes:g} min in all; {time.perf_counter() - t0:.0f}s so far, evaluation "
        f"estimated at {eval_seconds:.0f}s: training gets {minutes:.1f} min"
        + (f" (train.max_minutes {cfg.train.max_minutes:g})" if cfg.train.max_minutes else ""))
    return replace(cfg, train=replace(cfg.train, max_minutes=round(minutes, 2)))


def run_demo(cfg: Config, out: Path, progress: bool = True, log=print) -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = ensure_world(cfg, out, progress, log)
    tokenizer, model, processor, dataset = prepare(cfg, world, progress)
    records = load_split(world, cfg.eval.split)
    if cfg.eval.max_dialogues:
        records = records[: cfg.eval.max_dialogues]
    if cfg.eval.demo_minutes:
        was_training = model.training
        with torch.no_grad():
            estimate = estimate_eval_seconds(model.eval(), processor, records, world, cfg.eval.max_new_tokens,
                                             max_heldout=cfg.eval.max_dialogues)
        model.train(was_training)
        cfg = budget_training(cfg, t0, estimate, log)
    result = train(cfg, model, tokenizer, dataset, out, progress=progress, log=log, meta=world_meta(world),
                   validator=Validator.build)
    log(f"trained {result.steps} steps in {result.wall_seconds:.0f}s ({result.tokens_per_second:.0f} tokens/s)")
    t = time.perf_counter()
    # The gold history and the ablations are teacher forced (one batched pass each); the real chat (own
    # history) and the ranking generate or score per question, so they run on the first dialogues only.
    lab = run_lab(model, processor, records, world, max_new_tokens=cfg.eval.max_new_tokens,
                  own_history=DEMO_OWN_HISTORY, ranking=DEMO_RANKING, ablation_dialogues=DEMO_ABLATIONS,
                  progress=progress)
    summary = lab.metrics
    # the held-out splits on as many dialogues as the test split (the full 3,000 each took 194 s of the 10 minutes)
    held = heldout_metrics(model, processor, world, max_new_tokens=cfg.eval.max_new_tokens,
                           max_dialogues=cfg.eval.max_dialogues, progress=progress)
    if held:
        summary["heldout"] = held
    eval_seconds = time.perf_counter() - t
    log(f"evaluated {len(records)} dialogues in {eval_seconds:.0f}s "
        + ", ".join(f"{k} {v:.0f}s" for k, v in summary["eval"]["seconds"].items()))
    metrics = {
        **summary,
        "train": {"wall_seconds": result.wall_seconds, "steps": result.steps, "tokens": result.tokens,
                  "tokens_per_second": result.tokens_per_second, "final_loss": result.final_loss,
                  "precision": result.precision,
                  "skipped_conversations": result.skipped},
        "eval": {**summary["eval"], "split": cfg.eval.split, "dialogues": len(records), "wall_seconds": eval_seconds},
        "model": {"parameters": count_parameters(model)},
        "world": str(world),
    }
    # metrics.json, summary.md, accuracy.png, ablations.png, predictions.jsonl (+ _own, _ablations), ranking.jsonl
    write_outputs(lab, metrics, out, title=f"Multi-turn evaluation of the demo model on {cfg.eval.split}")
    session = ChatSession(model, processor, max_new_tokens=cfg.eval.max_new_tokens)
    write_transcript(session, records[0], world, out / "transcript.md")
    plot_run(result.losses, metrics, out / "plots.png")
    explain_dialogue(model, processor, records[0], world, out / "explain", max_new_tokens=cfg.eval.max_new_tokens)
    build_report([out], out / "report.html", title="mmdialog demo")
    return metrics


def demo_checks(m: dict) -> str:
    """The figures the demo is judged by, on one line each: the memory family, the own-history gap, what the
    picture is worth at distance 0 (full minus no_media), and each held-out split."""
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    acc = m["accuracy"]
    lines = [f"memory family {f(acc['by_family'].get('memory'))}"]
    if m.get("gap"):
        own = m["modes"]["own_history"]["accuracy"]["overall"]
        gold = m["modes"]["gold_history_same_dialogues"]["accuracy"]["overall"]
        lines.append(f"on {m['gap']['dialogues']} dialogues: gold history {f(gold)}, own history {f(own)}, "
                     f"gap {f(m['gap'].get('overall'))}")
    nm = (m.get("ablations") or {}).get("no_media")
    same = (m.get("modes") or {}).get("gold_history_ablation_dialogues", m["modes"]["gold_history"])
    if nm:
        d0, n0 = same["accuracy"]["by_distance"].get("0"), nm["accuracy"]["by_distance"].get("0")
        lines.append(f"distance 0: full {f(d0)}, no_media {f(n0)}, the picture is worth "
                     f"{f(d0 - n0) if d0 is not None and n0 is not None else 'n/a'}")
    for name, h in (m.get("heldout") or {}).items():
        lines.append(f"{name} {f((h.get('accuracy') or {}).get('overall'))}"
                     + (f" ({h['skipped']} dialogues too long, skipped)" if h.get("skipped") else ""))
    return "\n".join(lines)


def main(cfg: Config, out: str | Path) -> int:
    """`mmdialog demo`: run_demo, then the accuracy, the figures it is judged by, training and the files written."""
    m = run_demo(cfg, Path(out))
    acc = m["accuracy"]
    print(f"\naccuracy overall {acc['overall']:.3f}; by distance "
          + ", ".join(f"{k}: {v:.3f}" for k, v in acc["by_distance"].items() if v is not None)
          + f"; needs history {acc['needs_history']:.3f}")
    print(demo_checks(m))
    print(f"train: {m['train']['steps']} steps, {m['train']['wall_seconds']:.0f}s, {m['train']['tokens_per_second']:.0f} tokens/s "
          f"in {m['train'].get('precision') or '?'}; "
          f"model: {m['model']['parameters']:,} parameters")
    print(f"wrote {out}/metrics.json, summary.md, transcript.md, plots.png, explain/, report.html, checkpoint/")
    return 0
