"""Checkpoints: a directory with model.safetensors, config.yaml, the tokenizer and meta.json.

Written atomically (atomic_directory): everything goes into a temporary sibling directory that replaces the old
checkpoint by renames only, so a crash mid-save leaves the previous checkpoint intact. A checkpoint written
mid-way through LoRA training holds the adapters unmerged (meta "adapters": "lora"); they are merged on load.

The resumable training checkpoints (train/checkpoint.py) are these directories plus the trainer's state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from safetensors import safe_open
from safetensors.torch import load_model, save_model

from mmdialog import __version__
from mmdialog.config import Config, load_config, save_config
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.errors import MMDialogError
from mmdialog.model import MultimodalLM, build_model
from mmdialog.modelio.atomic import atomic_directory
from mmdialog.modules.lora import inject_lora, merge_lora

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
    with atomic_directory(target) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        save_config(cfg, tmp / "config.yaml")
        tokenizer.save(tmp)
        meta = {"format": FORMAT, "mmdialog_version": __version__, "vocab_size": tokenizer.vocab_size,
                "placeholder_ids": model.placeholder_ids, **meta}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if extra is not None:
            extra(tmp)
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


# ----------------------------------------------------------------------------- the world a checkpoint was trained on

def world_meta(world: str | Path) -> dict:
    """What a checkpoint's meta says of the world it was trained on: where, and which (world.json's digest)."""
    world = Path(world).resolve()
    return {"world": str(world), "world_sha256": hashlib.sha256((world / "world.json").read_bytes()).hexdigest()}


def locate_world(meta: dict, checkpoint: Path) -> None:
    """meta["world"] made a directory that holds the world. A relative path is taken from the checkpoint; where the
    path is gone (the run was moved or copied), the world of the same world.json (meta["world_sha256"]) in a
    `world/` directory beside the checkpoint or up to three levels above it is taken instead. Where none is,
    meta["world_missing"] holds the path the checkpoint names, so that commands can say so."""
    if not meta.get("world"):
        return
    named = Path(meta["world"])
    named = named if named.is_absolute() else checkpoint / named
    if (named / "world.json").is_file():
        meta["world"] = str(named)
        return
    digest = meta.get("world_sha256")
    for up in [checkpoint, *list(Path(checkpoint).resolve().parents)[:3]]:
        found = Path(up) / "world" / "world.json"
        if digest and found.is_file() and hashlib.sha256(found.read_bytes()).hexdigest() == digest:
            meta["world"] = str(found.parent)
            return
    meta["world_missing"] = str(named)


def world_of(ck: Loaded, world: str | None = None) -> Path:
    """The world directory `world` names, else the one the loaded checkpoint was trained on (as locate_world
    found it); where there is none, an error that asks for --world DIR."""
    if not world and ck.meta.get("world_missing"):
        raise MMDialogError(f"the checkpoint was trained on the world at {ck.meta['world_missing']}, which is not there "
                            "(was the run moved or copied without it?); pass --world DIR")
    w = Path(world or ck.meta.get("world", ""))
    if not (w / "world.json").is_file():
        raise MMDialogError(f"no world at {w!s}; pass --world DIR")
    return w
