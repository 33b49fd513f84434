"""Checkpoints: a directory with model.safetensors, config.yaml, the tokenizer and meta.json.

Written atomically: everything goes into a temporary sibling directory that replaces the old
checkpoint by renames only, so a crash mid-save leaves the previous checkpoint intact.

Resumable training checkpoints (OUT/checkpoints/step-NNNNNNNN/) are the same directories plus
trainer.pt: optimizer, schedule, gradient scaler, data position, and the RNG states (python, numpy,
torch, CUDA) of every process. Each is loadable like any other checkpoint (one trained with LoRA
adapters has them merged on load). The last train.keep_last are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from safetensors import safe_open
from safetensors.torch import load_model, save_model

from mmdialog import __version__
from mmdialog.config import Config, load_config, save_config
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.errors import MMDialogError
from mmdialog.model import MultimodalLM, build_model

FORMAT = "mmdialog-checkpoint/1"
FILES = ("model.safetensors", "config.yaml", "tokenizer.json", "meta.json")


@dataclass
class Loaded:
    model: MultimodalLM
    processor: Processor
    tokenizer: ChatTokenizer
    config: Config
    meta: dict


def save_checkpoint(directory: str | Path, model: MultimodalLM, tokenizer: ChatTokenizer, cfg: Config, meta: dict,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """extra(tmp_dir) writes more files into the checkpoint before it is made visible."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    save_config(cfg, tmp / "config.yaml")
    tokenizer.save(tmp)
    meta = {"format": FORMAT, "mmdialog_version": __version__, "vocab_size": tokenizer.vocab_size,
            "placeholder_ids": model.placeholder_ids, **meta}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if extra is not None:
        extra(tmp)
    for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _resolve(directory: Path) -> Path:
    """The checkpoint directory, or the previous one if a save crashed between its two renames."""
    if directory.is_dir():
        return directory
    olds = sorted(directory.parent.glob(f".{directory.name}.old-*")) if directory.parent.is_dir() else []
    if olds:
        return olds[-1]
    raise MMDialogError(f"checkpoint directory not found: {directory}")


def load_checkpoint(directory: str | Path, device: str = "cpu") -> Loaded:
    d = _resolve(Path(directory))
    missing = [f for f in FILES if not (d / f).is_file()]
    if missing:
        raise MMDialogError(f"{d} is not an mmdialog checkpoint: missing {', '.join(missing)}")
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise MMDialogError(f"{d}/meta.json has format {meta.get('format')!r}, expected {FORMAT!r}")
    cfg = load_config(d / "config.yaml")
    tokenizer = ChatTokenizer.load(d)
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise MMDialogError(f"{d}: tokenizer has {tokenizer.vocab_size} tokens but meta.json says {meta['vocab_size']}")
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    adapters = meta.get("adapters")
    if adapters == "lora":  # a checkpoint written mid-way through LoRA training: adapters merged on load
        from mmdialog.train.strategies import inject_lora

        inject_lora(model, cfg.train.lora)
    elif adapters:
        raise MMDialogError(f"{d}/meta.json names adapters {adapters!r}; this version knows 'lora'")
    _check_shapes(model, d / "model.safetensors")
    missing_keys, unexpected = load_model(model, str(d / "model.safetensors"), strict=False)
    if missing_keys or unexpected:
        raise MMDialogError(
            f"{d}/model.safetensors is from another model: missing {sorted(missing_keys)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    if adapters == "lora":
        from mmdialog.train.strategies import merge_lora

        merge_lora(model)
        meta = {**meta, "adapters": None}
    model.to(device).eval()
    processor = Processor.for_model(tokenizer, model, max_length=cfg.model.decoder.max_seq_len)
    return Loaded(model, processor, tokenizer, cfg, meta)


def _check_shapes(model: MultimodalLM, path: Path) -> None:
    expected = model.state_dict()
    try:
        with safe_open(str(path), "pt") as f:
            for k in f.keys():
                got = tuple(f.get_slice(k).get_shape())
                if k in expected and tuple(expected[k].shape) != got:
                    raise MMDialogError(
                        f"{path} is from another model: {k} has shape {got}, this config builds {tuple(expected[k].shape)}"
                    )
    except MMDialogError:
        raise
    except Exception as e:
        raise MMDialogError(f"cannot read weights {path}: {e}") from None


# ----------------------------------------------------------------------------- resumable training checkpoints

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
