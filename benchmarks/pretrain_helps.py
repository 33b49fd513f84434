"""Does pretraining help? Fine-tune the demo model on the world's dialogues from a pretrained checkpoint and from
scratch, with the same steps, the same data order and the same tokenizer, and compare the accuracy curves.

    python benchmarks/pretrain_helps.py --out runs/pretrain_helps --pretrain-minutes 18 --steps 600 --every 100

1. `mmdialog pretrain --config configs/pretrain.yaml` (its own world, seed 1: other pictures than the demo's)
   for --pretrain-minutes, unless OUT/pretrain/checkpoint exists (or --pretrain-dir names one);
2. the demo's world (configs/demo.yaml: 6000 dialogues, seed 0) written once to OUT/world;
3. `mmdialog train --config configs/demo.yaml` twice, --steps steps each, a checkpoint every --every steps:
   pretrained (train.init_from=the pretrained checkpoint) and scratch (data.tokenizer=the same checkpoint,
   so that only the initial weights differ);
4. each checkpoint (and step 0, the initial weights) scored on the first --eval-dialogues test dialogues:
   exact-match accuracy with the gold history (teacher forced), overall and by dependency distance, and the
   same without the image (no_media): the image gain shows whether the model reads the picture.

Writes OUT/pretrain_helps.json (every number), pretrain_helps.md (the table) and pretrain_helps.png (the
curves). Prints the table. Figures, not asserts: the run's budget decides how far the curves get.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args) -> None:
    cmd = [sys.executable, "-m", "mmdialog.cli", *map(str, args)]
    print("$ mmdialog " + " ".join(map(str, args)), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    lines = [line for line in r.stdout.splitlines() if "it/s]" not in line and "step/s" not in line]
    print("\n".join(lines[-6:]), flush=True)
    if r.returncode != 0:
        sys.exit(f"mmdialog {args[0]} failed ({r.returncode}):\n{r.stdout[-3000:]}")


def score(checkpoint: Path | None, model_tokenizer, world: Path, records: list[dict], max_new_tokens: int) -> dict:
    """Gold-history and no-media accuracy of a checkpoint (or of a (model, tokenizer) pair) on the records."""
    from mmdialog.data.processor import Processor
    from mmdialog.eval.contexts import Context, NoMedia, record_image
    from mmdialog.eval.lab import teacher_forced_rows
    from mmdialog.eval.multiturn import summarise
    from mmdialog.eval.teacher_forced import TeacherForcedScorer
    from mmdialog.modelio import load_checkpoint

    if checkpoint is not None:
        ck = load_checkpoint(checkpoint)
        model, processor = ck.model, ck.processor
    else:
        model, tokenizer = model_tokenizer
        model.eval()
        processor = Processor.for_model(tokenizer, model, max_length=model.decoder.max_seq_len)
    scorer = TeacherForcedScorer(model, processor, max_new_tokens=max_new_tokens)
    images = {r["id"]: record_image(r, world) for r in records}
    out = {}
    for ctx in (Context(), NoMedia()):
        m = summarise(teacher_forced_rows(scorer, ctx, records, images))
        out[ctx.name] = {"overall": m["accuracy"]["overall"], "by_distance": m["accuracy"]["by_distance"],
                         "questions": m["counts"]["overall"]}
    out["image_gain"] = out["gold_history"]["overall"] - out["no_media"]["overall"]
    return out


def curve(run: Path, init, world: Path, records: list[dict], max_new_tokens: int) -> list[dict]:
    from mmdialog.train.checkpoint import step_dirs

    points = [{"step": 0, **score(init if isinstance(init, Path) else None, init, world, records, max_new_tokens)}]
    for step, d in step_dirs(run / "checkpoints"):
        points.append({"step": step, **score(d, None, world, records, max_new_tokens)})
        print(f"  {run.name} step {step}: accuracy {points[-1]['gold_history']['overall']:.3f} "
              f"(no image {points[-1]['no_media']['overall']:.3f})", flush=True)
    return points


def scratch_init(cfg_path: Path, tokenizer_dir: Path, seed: int):
    """The model `mmdialog train` builds from scratch (same seed, same tokenizer): step 0 of the scratch curve."""
    import torch

    from mmdialog.config import load_config
    from mmdialog.data.tokenizer import ChatTokenizer
    from mmdialog.model import build_model

    cfg = load_config(cfg_path)
    tok = ChatTokenizer.load(tokenizer_dir)
    torch.manual_seed(seed)
    return build_model(cfg.model, vocab_size=tok.vocab_size, placeholder_ids=dict(tok.media_ids)), tok


def steps_to_reach(points: list[dict], target: float) -> int | None:
    return next((p["step"] for p in points if p["gold_history"]["overall"] >= target), None)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"# Does pretraining help? ({s['steps']} fine-tuning steps, batch {s['batch_size']}, "
             f"{s['eval_dialogues']} test dialogues, {s['pretrain']['train']['steps']} pretraining steps in "
             f"{s['pretrain']['train']['wall_seconds']:.0f}s)", "",
             "| step | scratch | pretrained | scratch, no image | pretrained, no image |", "|---|---|---|---|---|"]
    a, b = result["runs"]["scratch"], result["runs"]["pretrained"]
    for pa, pb in zip(a, b):
        lines.append(f"| {pa['step']} | {pa['gold_history']['overall']:.3f} | {pb['gold_history']['overall']:.3f} | "
                     f"{pa['no_media']['overall']:.3f} | {pb['no_media']['overall']:.3f} |")
    fa, fb = a[-1], b[-1]
    lines += ["", "| final, by distance | " + " | ".join(fa["gold_history"]["by_distance"]) + " |",
              "|---|" + "---|" * len(fa["gold_history"]["by_distance"])]
    for name, p in (("scratch", fa), ("pretrained", fb)):
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}"
                                                 for v in p["gold_history"]["by_distance"].values()) + " |")
    n = fa["gold_history"]["questions"]
    se = (fa["gold_history"]["overall"] * (1 - fa["gold_history"]["overall"]) / max(n, 1)) ** 0.5
    lines += ["", f"{n} questions: one standard error of an accuracy is about ±{se:.3f}.",
              f"Scratch's final accuracy {fa['gold_history']['overall']:.3f} is reached by the pretrained run at "
              f"step {result['pretrained_reaches_scratch_final_at']} (of {s['steps']}).",
              f"Image gain (gold history − no image) at the end: scratch {fa['image_gain']:+.3f}, "
              f"pretrained {fb['image_gain']:+.3f}.",
              f"Pretraining on held-out pairs: {result['pretrain_eval']}"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, color in (("scratch", "#999999"), ("pretrained", "#4878cf")):
        pts = result["runs"][name]
        steps = [p["step"] for p in pts]
        ax1.plot(steps, [p["gold_history"]["overall"] for p in pts], "o-", color=color, label=name)
        ax1.plot(steps, [p["no_media"]["overall"] for p in pts], "--", color=color, alpha=0.6,
                 label=f"{name}, no image")
    ax1.set_xlabel("fine-tuning step")
    ax1.set_ylabel("exact-match accuracy (gold history)")
    ax1.set_title("fine-tuning the demo model")
    ax1.legend(fontsize=8)
    keys = list(result["runs"]["scratch"][-1]["gold_history"]["by_distance"])
    x = range(len(keys))
    for k, (name, color) in enumerate((("scratch", "#999999"), ("pretrained", "#4878cf"))):
        vals = [v or 0.0 for v in result["runs"][name][-1]["gold_history"]["by_distance"].values()]
        ax2.bar([i + 0.4 * k for i in x], vals, 0.4, color=color, label=name)
    ax2.set_xticks([i + 0.2 for i in x], keys)
    ax2.set_xlabel("dependency distance")
    ax2.set_title(f"after {result['settings']['steps']} steps")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/pretrain_helps")
    p.add_argument("--pretrain-config", default=str(ROOT / "configs" / "pretrain.yaml"))
    p.add_argument("--finetune-config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--pretrain-dir", help="an existing `mmdialog pretrain` output to fine-tune (skips pretraining)")
    p.add_argument("--pretrain-minutes", type=float, default=18.0)
    p.add_argument("--steps", type=int, default=600, help="fine-tuning steps of each run")
    p.add_argument("--every", type=int, default=100, help="checkpoint and score every N steps")
    p.add_argument("--eval-dialogues", type=int, default=200)
    p.add_argument("--pretrain-overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--finetune-overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from mmdialog.config import load_config
    from mmdialog.data.worlds.shapes import generate_world, load_split

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pre = Path(args.pretrain_dir) if args.pretrain_dir else out / "pretrain"
    if not (pre / "checkpoint" / "model.safetensors").is_file():
        cli("pretrain", "--config", args.pretrain_config, "--out", pre, f"train.max_minutes={args.pretrain_minutes}",
            *args.pretrain_overrides)
    pre_metrics = json.loads((pre / "metrics.json").read_text())
    ft = load_config(args.finetune_config, args.finetune_overrides)
    world = out / "world"
    if not (world / "world.json").is_file():
        generate_world(world, dialogues=ft.world.dialogues, seed=ft.world.seed, image_size=ft.world.image_size,
                       progress=False)
    common = [f"world.dir={world}", "train.max_minutes=0", f"train.max_steps={args.steps}",
              f"train.save_every={args.every}", f"train.keep_last={args.steps // args.every + 1}",
              *args.finetune_overrides]
    runs = {"scratch": [f"data.tokenizer={pre / 'checkpoint'}"],
            "pretrained": [f"train.init_from={pre / 'checkpoint'}"]}
    for name, extra in runs.items():
        if not (out / name / "checkpoint" / "model.safetensors").is_file():
            cli("train", "--config", args.finetune_config, "--out", out / name, *common, *extra)
    records = load_split(world, "test")[:args.eval_dialogues]
    n_tok = ft.eval.max_new_tokens
    result = {"settings": {"steps": args.steps, "every": args.every, "batch_size": ft.train.batch_size,
                           "eval_dialogues": len(records), "finetune_config": args.finetune_config,
                           "finetune_overrides": args.finetune_overrides, "pretrain_dir": str(pre),
                           "pretrain": {k: pre_metrics[k] for k in ("objectives", "train", "data")}},
              "pretrain_eval": _short_eval(pre_metrics.get("eval", {})), "runs": {}}
    result["runs"]["scratch"] = curve(out / "scratch", scratch_init(Path(args.finetune_config), pre / "checkpoint",
                                                                    ft.train.seed), world, records, n_tok)
    result["runs"]["pretrained"] = curve(out / "pretrained", pre / "checkpoint", world, records, n_tok)
    final = result["runs"]["scratch"][-1]["gold_history"]["overall"]
    result["pretrained_reaches_scratch_final_at"] = steps_to_reach(result["runs"]["pretrained"], final)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "pretrain_helps.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (out / "pretrain_helps.md").write_text(md)
    plot(result, out / "pretrain_helps.png")
    print(md)
    print(f"wrote {out}/pretrain_helps.json, pretrain_helps.md, pretrain_helps.png ({result['wall_seconds']:.0f}s)")


def _short_eval(ev: dict) -> str:
    from mmdialog.pretrain.evaluate import summary_line

    return summary_line(ev) if ev else "not evaluated"


if __name__ == "__main__":
    main()
