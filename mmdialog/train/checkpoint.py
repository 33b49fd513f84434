"""Resumable training checkpoints: OUT/checkpoints/step-NNNNNNNN/ is a model checkpoint (modelio/checkpoint.py,
written atomically the same way) plus trainer.pt: optimizer, schedule, gradient scaler, data position, and the
RNG states (python, numpy, torch, CUDA) of every process. Each is loadable like any other checkpoint (one trained
with LoRA adapters has them merged on load). The last train.keep_last are kept.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from mmdialog.config import Config
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.errors import MMDialogError
from mmdialog.model import MultimodalLM
from mmdialog.modelio.checkpoint import save_checkpoint

STEP_DIR = re.compile(r"^step-(\d+)$")
TRAIN_STATE = "trainer.pt"


def rng_state() -> dict:
    """This process's RNG states, as tensors and plain values (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dirs(root: str | Path) -> list[tuple[int, Path]]:
    """Complete training checkpoints under root, oldest first. A save still in progress (or killed) lives in a
    hidden temporary directory, so every step-N directory here is whole."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / TRAIN_STATE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_training_checkpoint(root: str | Path) -> Path | None:
    dirs = step_dirs(root)
    return dirs[-1][1] if dirs else None


def save_training_checkpoint(root: str | Path, step: int, model: MultimodalLM, tokenizer: ChatTokenizer, cfg: Config,
                             meta: dict, state: dict, keep_last: int) -> Path:
    """OUT/checkpoints/step-N: the model checkpoint plus trainer.pt (state), atomically; then only the last
    keep_last are kept."""
    root = Path(root)
    target = save_checkpoint(root / f"step-{step:08d}", model, tokenizer, cfg, {**meta, "step": step},
                             extra=lambda tmp: torch.save(state, tmp / TRAIN_STATE))
    for _, old in step_dirs(root)[:-max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp-*"):  # left by a process killed mid-save
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    return target


def load_training_state(directory: str | Path) -> dict:
    path = Path(directory) / TRAIN_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise MMDialogError(f"cannot read the training state {path}: {e}") from None
