"""`mmdialog experiment fusion`: the fusions trained on the same world, with the same budget, compared.

For each fusion (and seed) the config's model gets model.fusion.name = that fusion, keeping the fusion
settings of the config that this fusion takes (heads, every, layers, num_queries, levels, gate_init; the
others are left out, so one config serves all six). Every run trains on the same world's train split
for the same wall-clock minutes (train.max_steps still caps it; --budget-minutes 0: the same
train.max_steps each) and is evaluated the same way on the same test dialogues: the gold history,
teacher forced (accuracy overall and by dependency distance 0, 1, 2, 3+), and no_history (the history
gain: what the earlier rounds are worth). Measured besides:

    parameters            every parameter of the model (encoders, fusion, decoder)
    image tokens in seq   what one image costs in the decoder's sequence (concat: the encoder's tokens;
                          cross_attention / interactive: 1 placeholder; resampler: num_queries)
    encoder tokens/image  what the fusion reads per image (the image encoder's tokens)
    tokens/s              training throughput in sequence tokens (media slots included, as the trainer counts)
    conversations/s       training throughput in dialogues: comparable across fusions whatever an image costs

DIR/fusion.md holds the table (mean ± std over seeds; with two seeds or more, each fusion's effect on
accuracy against the first one, z = difference / standard error), DIR/fusion.json every number,
DIR/fusion.png the plot, DIR/report.html the report over all runs, DIR/<fusion>/seed<S>/ each run
(train_log.jsonl, checkpoint/, metrics.json).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from mmdialog.config import Config, FusionConfig
from mmdialog.data.worlds.shapes import load_split
from mmdialog.errors import MMDialogError
from mmdialog.eval.lab import aggregate, run_lab
from mmdialog.eval.summary import get
from mmdialog.eval.validation import Validator
from mmdialog.modelio import world_meta
from mmdialog.recipes.experiment import effect, mean_std
from mmdialog.recipes.world import ensure_world

FUSIONS = ("concat", "cross_attention", "interactive", "hierarchical", "dynamic", "resampler")
DISTANCES = ("0", "1", "2", "3+")
# column -> path in a run's metrics.json
COLUMNS = {
    "parameters": ("model", "parameters"),
    "image tokens in seq": ("model", "image_tokens_in_sequence"),
    "encoder tokens/image": ("model", "encoder_tokens_per_image"),
    "steps": ("train", "steps"),
    "tokens/s": ("train", "tokens_per_second"),
    "conversations/s": ("train", "conversations_per_second"),
    "final loss": ("train", "final_loss"),
    "accuracy": ("accuracy", "overall"),
    **{f"d{d}": ("accuracy", "by_distance", d) for d in DISTANCES},
    "d>=1": ("accuracy", "needs_history"),
    "history gain": ("history_gain", "overall"),
}


def fusion_config(base: FusionConfig, name: str) -> FusionConfig:
    """FusionConfig for `name`: the fields of `base` this fusion takes, defaults for the rest."""
    import mmdialog.model  # noqa: F401  (imports the fusions, which registers them)
    from mmdialog.registry import FUSIONS as registry

    takes = set(inspect.signature(registry.get(name)).parameters)
    kept = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name != "name" and f.name in takes}
    return FusionConfig(name=name, **kept)


def run_config(cfg: Config, fusion: str, seed: int, minutes: float) -> Config:
    model = replace(cfg.model, fusion=fusion_config(cfg.model.fusion, fusion))
    return replace(cfg, model=model, train=replace(cfg.train, seed=seed, max_minutes=minutes))


def check_fusions(cfg: Config, fusions) -> None:
    """Build every fusion's model (random weights, a stand-in vocabulary) and run one image through it before
    any training, so a setting that does not fit one of them fails at once, naming it."""
    from mmdialog.model import build_model

    for f in fusions:
        if f not in FUSIONS:
            raise MMDialogError(f"unknown fusion {f!r}; choose from {', '.join(FUSIONS)}")
        try:
            model = build_model(run_config(cfg, f, 0, 0.0).model, vocab_size=max(cfg.tokenizer.vocab_size, 8),
                                placeholder_ids={"image": 1, "audio": 2, "video": 3})
            size = model.encoders["image"].image_size
            ids = torch.tensor([[4] + [1] * model.num_media_tokens("image") + [5]])  # (1, T): text, image, text
            with torch.no_grad():
                model(ids, images=torch.zeros(1, 3, size, size))
        except MMDialogError as e:
            raise MMDialogError(f"fusion {f}: {e}") from None


def model_figures(model) -> dict:
    from mmdialog.model import count_parameters

    return {"parameters": count_parameters(model), "image_tokens_in_sequence": model.num_media_tokens("image"),
            "encoder_tokens_per_image": model.encoders["image"].num_tokens}


def run_fusion_experiment(cfg: Config, out: str | Path, *, budget_minutes: float = 30.0, seeds=(0,),
                          fusions=FUSIONS, eval_dialogues: int = 300, progress: bool = True, log=print) -> dict:
    from mmdialog.eval.report import build_report
    from mmdialog.train.trainer import prepare, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fusions, seeds = tuple(fusions), tuple(seeds)
    if not fusions or not seeds:
        raise MMDialogError("give at least one fusion and one seed")
    t0 = time.perf_counter()
    check_fusions(cfg, fusions)
    if cfg.data.train_file:
        raise MMDialogError("the fusion experiment trains and evaluates on the built-in world; unset data.train_file")
    world = ensure_world(cfg, out, progress, log)
    test = load_split(world, cfg.eval.split)[:eval_dialogues]
    n_runs = len(fusions) * len(seeds)
    # a quarter of the budget is kept for evaluation; the rest is split evenly between the runs
    minutes = max(0.05, 0.75 * budget_minutes / n_runs) if budget_minutes > 0 else 0.0
    log(f"fusion experiment: {len(fusions)} fusions x {len(seeds)} seed(s), "
        + (f"{minutes:.1f} min of training each" if minutes else f"{cfg.train.max_steps} steps each")
        + f"; evaluation on {len(test)} {cfg.eval.split} dialogues")
    results: dict[str, list[dict]] = {f: [] for f in fusions}
    run_dirs = []
    for seed in seeds:
        for fusion in fusions:
            run_cfg = run_config(cfg, fusion, seed, minutes)
            run_dir = out / fusion / f"seed{seed}"
            tokenizer, model, processor, data = prepare(run_cfg, world, progress)
            res = train(run_cfg, model, tokenizer, data, run_dir, progress=progress, log=log,
                        meta={**world_meta(world), "fusion": fusion}, validator=Validator.build)
            t_eval = time.perf_counter()
            with torch.no_grad():
                lab = run_lab(model, processor, test, world, max_new_tokens=cfg.eval.max_new_tokens,
                              ablations=("no_history",), own_history=0, ranking=0, progress=progress)
            m = lab.metrics
            m["model"] = model_figures(model)
            m["train"] = {"steps": res.steps, "wall_seconds": res.wall_seconds, "tokens": res.tokens,
                          "tokens_per_second": res.tokens_per_second, "final_loss": res.final_loss,
                          "conversations_per_second": res.steps * cfg.train.batch_size / max(res.wall_seconds, 1e-9)}
            m["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
            m["fusion"], m["seed"] = fusion, seed
            (run_dir / "metrics.json").write_text(json.dumps(m, indent=2))
            results[fusion].append(m)
            run_dirs.append(run_dir)
            log(f"{fusion} seed {seed}: {res.steps} steps, {m['model']['parameters']:,} parameters, "
                f"{res.tokens_per_second:.0f} tokens/s, accuracy {m['accuracy']['overall']:.3f}")
    summary = summarise_fusions(results, fusions)
    summary["settings"] = {"budget_minutes": budget_minutes, "train_minutes_per_run": minutes,
                           "max_steps": cfg.train.max_steps, "seeds": list(seeds), "fusions": list(fusions),
                           "eval_dialogues": len(test), "split": cfg.eval.split, "world": str(world),
                           "batch_size": cfg.train.batch_size}
    plot_fusions(summary, out / "fusion.png")
    (out / "fusion.md").write_text(fusion_markdown(summary))
    build_report(run_dirs, out / "report.html", title="mmdialog experiment: fusions")
    summary["settings"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "fusion.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarise_fusions(results: dict[str, list[dict]], fusions) -> dict:
    base = results[fusions[0]]
    table = {}
    for f in fusions:
        agg = aggregate(results[f])
        row = {c: {"mean": get(agg["mean"], *p), "std": get(agg["std"], *p)} for c, p in COLUMNS.items()}
        row["effects"] = {} if f == fusions[0] else \
            {c: effect(base, results[f], COLUMNS[c]) for c in ("accuracy", "d>=1")}
        row["seeds"] = [m["seed"] for m in results[f]]
        table[f] = row
    return {"fusions": table, "baseline": fusions[0]}


def _cell(cell, kind: str) -> str:
    if cell is None or cell.get("mean") is None:
        return "-"
    if kind == "int":
        return f"{cell['mean']:,.0f}"
    if kind == "rate":
        return f"{cell['mean']:,.0f}" + (f" ± {cell['std']:,.0f}" if cell.get("std") else "")
    return mean_std(cell)


KINDS = {"parameters": "int", "image tokens in seq": "int", "encoder tokens/image": "int", "steps": "int",
         "tokens/s": "rate", "conversations/s": "float", "final loss": "float"}


def fusion_markdown(summary: dict) -> str:
    st = summary.get("settings", {})
    budget = (f"{st.get('train_minutes_per_run', 0):.1f} min of training per run" if st.get("train_minutes_per_run")
              else f"{st.get('max_steps')} training steps per run")
    lines = ["# Experiment: fusions on the same world, same budget", "",
             f"{len(st.get('fusions', []))} fusions, seeds {st.get('seeds')}, {budget} (batch {st.get('batch_size')}), "
             f"evaluated on {st.get('eval_dialogues')} {st.get('split')} dialogues with the gold history "
             "(teacher forced). Accuracy by dependency distance; history gain = gold history - no history. "
             "Mean ± std over seeds.", ""]
    cols = list(COLUMNS)
    lines += ["| fusion | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for f, row in summary["fusions"].items():
        lines.append(f"| {f} | " + " | ".join(_cell(row[c], KINDS.get(c, "float")) for c in cols) + " |")
    effects = [(f, row["effects"]) for f, row in summary["fusions"].items() if row["effects"]]
    if effects and len(st.get("seeds", [])) > 1:
        lines += ["", f"Against {summary['baseline']} (difference of means; z = difference / standard error over "
                      "seeds; |z| >= 2: effect, else noise):", "", "| fusion | accuracy | d>=1 |", "|---|---|---|"]
        for f, eff in effects:
            cells = ["-" if e["diff"] is None else f"{e['diff']:+.3f} (z {e['z']:+.1f}, {e['verdict']})"
                     for e in (eff["accuracy"], eff["d>=1"])]
            lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines += ["", "![fusions](fusion.png)", "",
              "tokens/s counts the sequence tokens the trainer sees, media slots included (concat spends "
              "`image tokens in seq` per image, cross-attention 1); conversations/s compares throughput "
              "whatever an image costs. Every run: `report.html`, `<fusion>/seed<S>/metrics.json`.", ""]
    return "\n".join(lines)


def plot_fusions(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fusions = list(summary["fusions"])
    rows = [summary["fusions"][f] for f in fusions]

    def means(col):
        return [np.nan if r[col]["mean"] is None else r[col]["mean"] for r in rows]

    def stds(col):
        return [r[col]["std"] or 0 for r in rows]

    fig, axes = plt.subplots(1, 4, figsize=(17, 4), gridspec_kw={"width_ratios": [2.2, 1, 1, 1]})
    ax = axes[0]
    x = np.arange(len(DISTANCES))
    w = 0.8 / len(fusions)
    for i, (f, r) in enumerate(zip(fusions, rows)):
        cells = [r[f"d{d}"] for d in DISTANCES]
        ax.bar(x + (i - (len(fusions) - 1) / 2) * w, [np.nan if c["mean"] is None else c["mean"] for c in cells], w,
               yerr=[c["std"] or 0 for c in cells], capsize=2, label=f)
    ax.set_xticks(x, [f"distance {d}" for d in DISTANCES])
    ax.set_ylim(0, 1)
    ax.set_title("accuracy by dependency distance (gold history)")
    ax.legend(fontsize=7, ncol=2)
    xs = np.arange(len(fusions))
    for ax, col, title in ((axes[1], "parameters", "parameters"), (axes[2], "tokens/s", "training tokens/s"),
                           (axes[3], "image tokens in seq", "image tokens in the sequence")):
        ax.bar(xs, means(col), yerr=stds(col), capsize=2, color=[f"C{i}" for i in range(len(fusions))])
        ax.set_xticks(xs, fusions, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(cfg: Config, out: str | Path, *, budget_minutes: float = 30.0, seeds=(0,), fusions=FUSIONS,
         eval_dialogues: int = 300) -> int:
    """`mmdialog experiment fusion`: run_fusion_experiment, then the files it wrote."""
    s = run_fusion_experiment(cfg, Path(out), budget_minutes=budget_minutes, seeds=seeds, fusions=fusions,
                              eval_dialogues=eval_dialogues)
    print(f"wrote {Path(out) / 'fusion.md'}, fusion.json, fusion.png, report.html "
          f"({s['settings']['wall_seconds']:.0f}s)")
    return 0
