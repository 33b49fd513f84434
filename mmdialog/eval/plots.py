"""Plots people look at after a run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmdialog.eval.multiturn import DISTANCE_BUCKETS  # noqa: E402


def plot_run(losses: list[tuple[int, float]], metrics: dict, path: str | Path) -> Path:
    """Training loss (left) and accuracy by dependency distance with question counts (right)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        steps, values = zip(*losses)
        ax1.plot(steps, values)
        ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (assistant tokens)")
    ax1.set_title("training loss")
    acc = metrics["accuracy"]["by_distance"]
    counts = metrics["counts"]["by_distance"]
    vals = [acc[k] or 0.0 for k in DISTANCE_BUCKETS]
    bars = ax2.bar(DISTANCE_BUCKETS, vals, color="#4878cf")
    for b, k in zip(bars, DISTANCE_BUCKETS):
        ax2.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, f"{vals[DISTANCE_BUCKETS.index(k)]:.2f}\nn={counts[k]}",
                 ha="center", va="bottom", fontsize=8)
    ax2.set_ylim(0, 1.15)
    ax2.set_xlabel("dependency distance (rounds of history needed)")
    ax2.set_ylabel("exact-match accuracy")
    ax2.set_title("accuracy by dependency distance")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the evaluation lab

from mmdialog.eval.multiturn import FINE_BUCKETS  # noqa: E402
from mmdialog.eval.summary import ABLATION_ORDER, get  # noqa: E402

COLORS = {"gold_history": "#4878cf", "own_history": "#d65f5f", "no_history": "#999999", "last_1": "#c4ad66",
          "last_2": "#b47cc7", "last_4": "#77bedb", "shuffled_history": "#6acc65", "no_media": "#8c613c"}


def _values(metrics, std, path, keys):
    vals = [get(metrics, *path, k) for k in keys]
    errs = [get(std, *path, k) if std is not None else None for k in keys]
    return [v if v is not None else float("nan") for v in vals], [e or 0.0 for e in errs]


def _bars(ax, groups: list[tuple[str, list, list]], labels: list[str], counts: list | None = None) -> None:
    import numpy as np

    n = len(groups)
    width = 0.8 / max(n, 1)
    x = np.arange(len(labels))
    for i, (name, vals, errs) in enumerate(groups):
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, yerr=errs if any(errs) else None, capsize=2,
               label=name, color=COLORS.get(name))
    if counts:
        for xi, c in zip(x, counts):
            if c is not None:
                ax.text(xi, 1.02, f"n={c:.0f}", ha="center", fontsize=7)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.12)


def plot_modes(metrics: dict, path: str | Path, std: dict | None = None) -> Path:
    """Accuracy by dependency distance (left) and by round (right): gold vs own history vs no history."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    modes = [("gold_history", ("accuracy",))]
    if get(metrics, "modes", "own_history"):
        modes.append(("own_history", ("modes", "own_history", "accuracy")))
    if get(metrics, "ablations", "no_history"):
        modes.append(("no_history", ("ablations", "no_history", "accuracy")))
    # each mode ran on its own share of the dialogues (own history and ablations may use the first ones only)
    groups = [(name, *_values(metrics, std, (*p, "by_distance_fine"), FINE_BUCKETS)) for name, p in modes]
    counts = [get(metrics, "counts", "by_distance_fine", b) for b in FINE_BUCKETS]
    _bars(ax1, groups, list(FINE_BUCKETS), counts)
    ax1.set_xlabel("dependency distance (rounds of history needed)")
    ax1.set_ylabel("exact-match accuracy")
    ax1.set_title("accuracy by dependency distance")
    ax1.legend(fontsize=8, loc="lower left")
    rounds = list(get(metrics, "accuracy", "by_round") or {})
    for name, p in modes:
        vals, errs = _values(metrics, std, (*p, "by_round"), rounds)
        ax2.errorbar([int(r) for r in rounds], vals, yerr=errs if any(errs) else None, marker="o", label=name,
                     color=COLORS.get(name), capsize=2)
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("round")
    ax2.set_ylabel("exact-match accuracy")
    ax2.set_title("accuracy by round")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ablations(metrics: dict, path: str | Path, std: dict | None = None) -> Path:
    """Accuracy by distance under each ablation (left) and the history gain by distance (right)."""
    abl = metrics.get("ablations") or {}
    names = [n for n in ABLATION_ORDER if n in abl] + [n for n in abl if n not in ABLATION_ORDER]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [2, 1]})
    g = ("modes", "gold_history_ablation_dialogues") if get(metrics, "modes", "gold_history_ablation_dialogues") else ()
    groups = [("gold_history", *_values(metrics, std, (*g, "accuracy", "by_distance_fine"), FINE_BUCKETS))]
    groups += [(n, *_values(metrics, std, ("ablations", n, "accuracy", "by_distance_fine"), FINE_BUCKETS)) for n in names]
    _bars(ax1, groups, list(FINE_BUCKETS))
    ax1.set_xlabel("dependency distance")
    ax1.set_ylabel("exact-match accuracy")
    ax1.set_title("ablations: what the context is worth")
    ax1.legend(fontsize=7, ncol=4, loc="upper right")
    vals, errs = _values(metrics, std, ("history_gain", "by_distance_fine"), FINE_BUCKETS)
    ax2.bar(FINE_BUCKETS, vals, yerr=errs if any(errs) else None, capsize=2, color="#4878cf")
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_xlabel("dependency distance")
    ax2.set_ylabel("gold history - no history")
    ax2.set_title("history gain (≈0 at distance 0)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_heldout(metrics: dict, path: str | Path, std: dict | None = None) -> Path:
    """Accuracy by distance on the main split and on each held-out split."""
    held = metrics.get("heldout") or {}
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = [("main split", *_values(metrics, std, ("accuracy", "by_distance_fine"), FINE_BUCKETS))]
    groups += [(n, *_values(metrics, std, ("heldout", n, "accuracy", "by_distance_fine"), FINE_BUCKETS)) for n in held]
    _bars(ax, groups, list(FINE_BUCKETS))
    ax.set_xlabel("dependency distance")
    ax.set_ylabel("exact-match accuracy (gold history)")
    ax.set_title("held-out splits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lab(metrics: dict, out_dir: str | Path, std: dict | None = None) -> list[Path]:
    """Every lab plot the metrics have data for, written into out_dir."""
    out = Path(out_dir)
    files = [plot_modes(metrics, out / "accuracy.png", std)]
    if metrics.get("ablations"):
        files.append(plot_ablations(metrics, out / "ablations.png", std))
    if metrics.get("heldout"):
        files.append(plot_heldout(metrics, out / "heldout.png", std))
    return files


def plot_losses(runs: dict[str, list[tuple[int, float]]], path: str | Path) -> Path:
    """Training loss of one or several runs against the step (log scale)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in runs.items():
        if losses:
            steps, values = zip(*losses)
            ax.plot(steps, values, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("training loss")
    if len(runs) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run_comparison(runs: dict[str, dict], path: str | Path) -> Path:
    """Several runs side by side: accuracy by distance (left); gold vs own history and no history (right)."""
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 2]})
    groups = []
    for name, m in runs.items():
        std = m.get("std") if isinstance(m.get("std"), dict) else None
        groups.append((name, *_values(m, std, ("accuracy", "by_distance_fine"), FINE_BUCKETS)))
    _bars(ax1, groups, list(FINE_BUCKETS))
    ax1.set_xlabel("dependency distance")
    ax1.set_ylabel("exact-match accuracy (gold history)")
    ax1.set_title("accuracy by distance, per run")
    ax1.legend(fontsize=7)
    kinds = [("gold_history", ("accuracy", "overall")), ("own_history", ("modes", "own_history", "accuracy", "overall")),
             ("no_history", ("ablations", "no_history", "accuracy", "overall"))]
    x = np.arange(len(runs))
    width = 0.8 / len(kinds)
    for i, (kind, p) in enumerate(kinds):
        vals = [get(m, *p) for m in runs.values()]
        errs = [get(m.get("std"), *p) if isinstance(m.get("std"), dict) else None for m in runs.values()]
        ax2.bar(x + (i - 1) * width, [v if v is not None else float("nan") for v in vals], width,
                yerr=[e or 0.0 for e in errs] if any(errs) else None, capsize=2, label=kind, color=COLORS[kind])
    ax2.set_xticks(x, list(runs), rotation=20, ha="right", fontsize=8)
    ax2.set_ylim(0, 1.05)
    ax2.set_title("overall: gold vs own vs no history")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- a dataset file's evaluation

def _cells(summary: dict | None, path: tuple, keys: list[str]) -> list[float]:
    node = get(summary, *path) or {}
    return [(node.get(k) or {}).get("accuracy") if isinstance(node.get(k), dict) else float("nan") for k in keys]


def plot_file(metrics: dict, out_dir: str | Path) -> list[Path]:
    """For `mmdialog eval --data`: accuracy by round (gold vs own vs no history), one bar chart per label,
    and the history gain per group when the ablations ran."""
    out = Path(out_dir)
    modes = [("gold_history", metrics.get("gold_history")), ("own_history", metrics.get("own_history")),
             ("no_history", get(metrics, "ablations", "no_history"))]
    modes = [(n, m) for n, m in modes if m]
    files = []
    gold = metrics["gold_history"]
    panels = [("round", ("by_round",))] + [(label, ("by", label)) for label in gold["by"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (name, path) in zip(axes[0], panels):
        keys = list(get(gold, *path) or {})
        groups = [(n, [v if v is not None else float("nan") for v in _cells(m, path, keys)], [0.0] * len(keys))
                  for n, m in modes]
        counts = [(get(gold, *path, k) or {}).get("count") for k in keys]
        _bars(ax, groups, keys, counts)
        ax.set_xlabel(name)
        ax.set_ylabel(f"accuracy ({metrics.get('match', 'exact')} match)")
        ax.set_title(f"accuracy by {name}")
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    files.append(out / "accuracy.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    gain = metrics.get("history_gain")
    if metrics.get("ablations"):
        abl = metrics["ablations"]
        names = [n for n in ABLATION_ORDER if n in abl] + [n for n in abl if n not in ABLATION_ORDER]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
        ref = get(metrics, "ablation_reference", "overall")
        vals = [ref] + [abl[n]["overall"] for n in names]
        ax1.bar(["gold_history"] + names, [v if v is not None else float("nan") for v in vals],
                color=[COLORS.get(n, "#888888") for n in ["gold_history"] + names])
        ax1.set_ylim(0, 1.05)
        ax1.tick_params(axis="x", rotation=20)
        ax1.set_ylabel("accuracy (greedy exact match)")
        ax1.set_title("ablations: what the context is worth")
        if gain:
            labels, values = ["overall"], [gain["overall"]]
            for label, g in gain["by"].items():
                labels += [f"{label} {k}" for k in g]
                values += list(g.values())
            if not gain["by"]:
                labels += [f"round {k}" for k in gain["by_round"]]
                values += list(gain["by_round"].values())
            ax2.bar(labels, [v if v is not None else float("nan") for v in values], color="#4878cf")
            ax2.axhline(0, color="black", linewidth=0.8)
            ax2.tick_params(axis="x", rotation=60, labelsize=7)
            ax2.set_ylabel("gold history - no history")
            ax2.set_title("history gain per group")
        fig.tight_layout()
        files.append(out / "ablations.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    return files


def plot_losses_with_validation(runs: dict[str, list[tuple[int, float]]], val: dict[str, list[tuple[int, float]]],
                                path: str | Path) -> Path:
    """plot_losses, with the validation accuracy of each run (train.eval_every) on a second axis."""
    path = plot_losses(runs, path)
    if not any(val.values()):
        return path
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in runs.items():
        if losses:
            steps, values = zip(*losses)
            ax.plot(steps, values, label=f"{name} loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax2 = ax.twinx()
    for name, points in val.items():
        if points:
            steps, values = zip(*points)
            ax2.plot(steps, values, marker="o", linestyle="--", label=f"{name} validation accuracy")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("validation accuracy (gold history)")
    ax.set_title("training loss and validation accuracy")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
