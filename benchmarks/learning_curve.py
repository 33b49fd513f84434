"""Learning curves of the demo recipe on the shapes world: teacher-forced accuracy on the val split at fixed
step counts, for variants of the knobs that decide early learning. One table, one row per variant.

Each variant is the demo config (or --config) plus overrides, trained with the project's own parts
(prepare, make_optimizer, NextTokenObjective, the StepSampler, bf16 autocast where the CPU has it) for
--steps steps on a cosine schedule, and scored at each --eval-at step on --val val dialogues with the gold
history (TeacherForcedScorer: greedy exact match without generating). Columns: overall accuracy at each
eval step, then at the last one the accuracy at distance 0 / 1 / 2 / 3+, the `memory` family, and the
`no_media` ablation at distance 0 (how much the picture is read).

  python benchmarks/learning_curve.py --steps 1500 --eval-at 250,500,1000,1500 --seed 0 \\
      --variant adamw-gpt2:train.optimizer=adamw,model.decoder.init=gpt2 \\
      --variant adamw:train.optimizer=adamw --variant muon:

A variant is NAME:OVERRIDE,OVERRIDE,... (config overrides as on the command line; empty: the config as is).
`model.reader={}` removes the demo recipe's user-turn reader (a frozen MiniLM reading each user turn,
encoders/reader.py). --paraphrase N also scores N test_paraphrase dialogues (wordings never trained on) at the end.
`model.image.name=shapes_oracle` (benchmarks/oracle_image.py) replaces the ViT by exact per-cell labels: the
decoder's curve alone, with the picture read perfectly.
world.* overrides build (and cache, under --cache) a world of their own: `world.dialogues=24000` gives four
times as many distinct pictures for the same steps (fresh vs repeated pictures). --jobs runs variants in
parallel processes of --threads threads each. Results are appended as JSON lines to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def world_for(cfg, cache: Path) -> Path:
    from mmdialog.data.worlds.shapes import generate_world

    held = "-" + "-".join(cfg.world.held_out) if cfg.world.held_out else ""
    w = cache / f"world-{cfg.world.dialogues}-{cfg.world.seed}-{cfg.world.image_size}{held}"
    if not (w / "world.json").is_file():
        generate_world(w, dialogues=cfg.world.dialogues, seed=cfg.world.seed, image_size=cfg.world.image_size,
                       held_out=cfg.world.held_out, progress=False)
    return w


def score(model, processor, records, world, max_new_tokens: int) -> dict:
    from mmdialog.eval.contexts import Context, NoMedia, record_image
    from mmdialog.eval.lab import teacher_forced_rows
    from mmdialog.eval.multiturn import distance_bucket
    from mmdialog.eval.teacher_forced import TeacherForcedScorer

    model.eval()
    scorer = TeacherForcedScorer(model, processor, max_new_tokens=max_new_tokens)
    images = {r["id"]: record_image(r, world) for r in records}
    asked = {(r["id"], rd["round"]): rd["program"].get("attr") for r in records for rd in r["rounds"]}
    out = {}
    for ctx in (Context(), NoMedia()):
        rows = teacher_forced_rows(scorer, ctx, records, images)
        acc = lambda rs: round(sum(r["correct"] for r in rs) / max(len(rs), 1), 3)  # noqa: E731
        res = {"overall": acc(rows)}
        for b in ("0", "1", "2", "3+"):
            res[f"d{b}"] = acc([r for r in rows if distance_bucket(r["distance"]) == b])
        for fam in ("count", "exist", "attribute", "memory"):
            res[fam] = acc([r for r in rows if r["family"] == fam])
        for attr in ("colour", "shape", "size", "position"):  # attribute questions by the attribute asked
            res[f"attribute_{attr}"] = acc([r for r in rows if r["family"] == "attribute"
                                            and asked[(r["id"], r["round"])] == attr])
        out[ctx.name] = res
    model.train()
    return out


def run_variant(name: str, overrides: list[str], args) -> dict:
    import torch

    from mmdialog.config import load_config
    from mmdialog.data.collate import Collator
    from mmdialog.data.worlds.shapes import load_split
    from mmdialog.objectives.lm import NextTokenObjective
    from mmdialog.train.sampler import StepSampler
    from mmdialog.train.trainer import autocast_context, lr_factor, make_optimizer, prepare, resolve_precision

    import oracle_image  # noqa: F401  (registers the `shapes_oracle` image encoder, for decoder-only curves)

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"train.seed={args.seed}", *overrides])
    world = world_for(cfg, Path(args.cache))
    tokenizer, model, processor, dataset = prepare(cfg, world, progress=False)
    tc = cfg.train
    val = load_split(world, "val")[: args.val]
    opt = make_optimizer(model, tc)
    objective = NextTokenObjective(model)
    sampler = StepSampler.for_dataset(dataset, tc)
    collate = Collator(tokenizer.pad_id, loss_turns=tc.loss_turns)
    precision = resolve_precision(tc.precision)
    eval_at = sorted({int(s) for s in args.eval_at.split(",")} | {args.steps})
    curve, t0, train_seconds = {}, time.perf_counter(), 0.0
    model.train()
    for step in range(1, args.steps + 1):
        t = time.perf_counter()
        lr = tc.lr * lr_factor(step - 1, (step - 1) / args.steps, tc)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        batch = collate([dataset[i] for mb in sampler.next() for i in mb])
        with autocast_context(precision):
            loss, weight = objective(batch)
        (loss / weight).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - t
        if step in eval_at:
            curve[step] = score(model, processor, val, world, cfg.eval.max_new_tokens)
            if step == args.steps and args.paraphrase:
                para = load_split(world, "test_paraphrase")[: args.paraphrase]
                curve[step]["paraphrase"] = score(model, processor, para, world, cfg.eval.max_new_tokens)["gold_history"]
            print(f"[{name}] step {step}: {curve[step]['gold_history']['overall']:.3f} "
                  f"(loss {float(loss.detach() / weight):.3f}, {time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    return {"name": name, "overrides": overrides, "seed": args.seed, "steps": args.steps, "val": len(val),
            "steps_per_second": round(args.steps / train_seconds, 2), "curve": curve}


def table(results: list[dict]) -> str:
    steps = sorted({int(s) for r in results for s in r["curve"]})
    para = any("paraphrase" in v for r in results for v in r["curve"].values())
    head = ["variant", *[f"@{s}" for s in steps], "d0", "d1", "d2", "d3+", "memory", "no_media d0",
            *(["paraphrase"] if para else []), "steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        c = {int(k): v for k, v in r["curve"].items()}
        last = c[max(c)]
        g, nm = last["gold_history"], last["no_media"]
        cells = [r["name"], *[f"{c[s]['gold_history']['overall']:.3f}" if s in c else "" for s in steps],
                 *[f"{g[k]:.3f}" for k in ("d0", "d1", "d2", "d3+", "memory")], f"{nm['d0']:.3f}",
                 *([f"{last['paraphrase']['overall']:.3f}" if "paraphrase" in last else ""] if para else []),
                 f"{r['steps_per_second']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _one(job):
    name, overrides, args = job
    return run_variant(name, overrides, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--variant", action="append", default=[], help="NAME:OVERRIDE,OVERRIDE,...")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-at", default="250,500,1000,1500")
    ap.add_argument("--val", type=int, default=200, help="val dialogues scored")
    ap.add_argument("--paraphrase", type=int, default=0,
                    help="also score this many test_paraphrase dialogues at the last step (world.held_out must have it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--cache", default=str(ROOT / "runs" / "learning_curve"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "learning_curve" / "results.jsonl"))
    args = ap.parse_args()
    variants = args.variant or ["default:"]
    jobs = []
    for v in variants:
        name, _, rest = v.partition(":")
        jobs.append((name, [o for o in rest.split(",") if o], args))
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    # build the worlds first, once each, so parallel jobs do not race on them
    from mmdialog.config import load_config

    for _, overrides, _ in jobs:
        world_for(load_config(args.config, [o for o in overrides if o.startswith("world.")]), Path(args.cache))
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as ex:
            results = list(ex.map(_one, jobs))
    else:
        results = [_one(j) for j in jobs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    print(f"learning curves: {args.config}, seed {args.seed}, {args.steps} steps, val {args.val} dialogues, "
          f"teacher-forced gold history ({os.cpu_count()} CPUs, {args.threads} thread(s) per variant)")
    print(table(results))


if __name__ == "__main__":
    main()
