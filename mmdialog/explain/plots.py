"""Heatmaps of where answers look: rounds x (image, earlier rounds, question, answer), and image patches."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, Rectangle  # noqa: E402


def round_heatmaps(matrices: list[np.ndarray], titles: list[str], rows: list[int], depends: list[int | None],
                   n_rounds: int, path: str | Path, suptitle: str = "") -> Path:
    """One panel per matrix (rows: answered rounds; columns: image, round 0 .. n_rounds-1, answer).

    A cell for round k > r is blank (the answer cannot see the future); the round an answer depends on
    is boxed in black, the current question (k = r) is marked by a dot.
    """
    cols = ["image"] + [f"r{k}" for k in range(n_rounds)] + ["answer"]
    n = len(matrices)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    width = max(4.0, 0.42 * len(cols) + 1.5)
    fig, axes = plt.subplots(nrow, ncol, figsize=(width * ncol, 0.38 * len(rows) * nrow + 1.6 * nrow), squeeze=False)
    vmax = max(float(np.nanmax(m)) for m in matrices) if matrices else 1.0
    for ax, m, title in zip(axes.flat, matrices, titles):
        shown = m[:, : len(cols)].copy()
        for i, r in enumerate(rows):
            shown[i, 2 + r: 1 + n_rounds] = np.nan  # rounds after r
        im = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=90)
        ax.set_yticks(range(len(rows)), [f"r{r}" for r in rows], fontsize=7)
        ax.set_title(title, fontsize=9)
        for i, (r, d) in enumerate(zip(rows, depends)):
            ax.plot(1 + r, i, "o", color="white", markersize=3)
            if d is not None:
                ax.add_patch(Rectangle((1 + d - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.8))
        ax.set_xlabel("attended segment", fontsize=8)
        ax.set_ylabel("answer of round", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="share of attention")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def patch_overlays(image: np.ndarray, grids: list[np.ndarray], titles: list[str], targets: list[tuple | None],
                   path: str | Path) -> Path:
    """The image with each answer's attention over its patches (g x g grid) laid over it; the object the
    question is about, where known, circled."""
    n = len(grids)
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 3.3 * nrow), squeeze=False)
    H, W = image.shape[:2]
    for ax, g, title, target in zip(axes.flat, grids, titles, targets):
        ax.imshow(image, extent=(0, W, H, 0))
        ax.imshow(g / max(float(g.max()), 1e-9), extent=(0, W, H, 0), cmap="magma", alpha=0.55, interpolation="bilinear")
        if target is not None:
            ax.add_patch(Circle(target, radius=W / 10, fill=False, edgecolor="white", linewidth=1.5, linestyle="--"))
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gate_plot(values: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """A fusion's gates or weights for one example: a bar per value (1-D) or a heatmap (2-D)."""
    n = len(values)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3), squeeze=False)
    for ax, (name, v) in zip(axes[0], values.items()):
        v = np.atleast_1d(np.asarray(v, dtype=float))
        if v.ndim == 1:
            ax.bar(range(len(v)), v, color="#4878cf")
            ax.set_xlabel("index")
        else:
            im = ax.imshow(v.reshape(v.shape[0], -1), aspect="auto", cmap="viridis")
            fig.colorbar(im, ax=ax)
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
