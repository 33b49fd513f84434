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
