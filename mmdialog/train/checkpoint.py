"""Checkpoints: a directory with model.safetensors, config.yaml, the tokenizer and meta.json.

Written atomically: everything goes into a temporary sibling directory that replaces the old
checkpoint by renames only, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

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


def save_checkpoint(directory: str | Path, model: MultimodalLM, tokenizer: ChatTokenizer, cfg: Config, meta: dict) -> Path:
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
    _check_shapes(model, d / "model.safetensors")
    missing_keys, unexpected = load_model(model, str(d / "model.safetensors"), strict=False)
    if missing_keys or unexpected:
        raise MMDialogError(
            f"{d}/model.safetensors is from another model: missing {sorted(missing_keys)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
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
