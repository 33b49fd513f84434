"""Typed configs: dataclasses loaded from YAML, with `a.b=c` overrides from the command line.

Unknown keys are errors that name the key and the keys that do exist.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmdialog.errors import MMDialogError


@dataclass
class ImageEncoderConfig:
    name: str = "vit"
    image_size: int = 64  # square input side, pixels
    patch_size: int = 16
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0


@dataclass
class FusionConfig:
    name: str = "concat"  # project media tokens into the decoder's embedding slots of their placeholders


@dataclass
class DecoderConfig:
    name: str = "causal"
    vocab_size: int = 0  # 0: taken from the tokenizer at build time
    dim: int = 128
    depth: int = 4
    heads: int = 4
    kv_heads: int = 0  # 0: same as heads (no grouped-query attention)
    mlp_hidden: int = 0  # 0: 8/3 * dim rounded up to a multiple of 32 (SwiGLU)
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_embeddings: bool = True


@dataclass
class ModelConfig:
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass
class WorldConfig:
    dir: str = ""  # an existing world directory; empty: generate one into <out>/world
    dialogues: int = 6000
    seed: int = 0
    image_size: int = 64


@dataclass
class DataConfig:
    """Training on a dataset file instead of the built-in world (see mmdialog/data/formats)."""

    train_file: str = ""  # LLaVA JSON, ShareGPT-style or OpenAI chat JSONL; empty: the built-in world
    format: str = "auto"  # auto | llava | sharegpt | openai
    media_root: str = ""  # media paths are relative to it and may not leave it; empty: the train file's directory
    tokenizer: str = ""  # a directory with tokenizer.json (a checkpoint or an export); empty: train one on the text


@dataclass
class TokenizerConfig:
    vocab_size: int = 512  # BPE vocabulary trained on the world's text


@dataclass
class TrainConfig:
    batch_size: int = 32
    lr: float = 2e-3
    encoder_lr_scale: float = 0.1  # media encoders train at lr * this (see train.trainer.make_optimizer)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    max_steps: int = 1000
    max_minutes: float = 0.0  # 0: no wall-clock budget; else stop (and finish the cosine early) at this time
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | bf16 | fp32; auto: bf16 autocast where the CPU has native bf16, else fp32
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    num_threads: int = 0  # 0: torch's default


@dataclass
class EvalConfig:
    split: str = "test"
    max_dialogues: int = 0  # 0: all
    max_new_tokens: int = 8


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/override value to the annotated type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MMDialogError(f"config key {key!r} must be a mapping, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise MMDialogError(f"config key {key!r} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, key) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise MMDialogError(f"config key {key!r} must be true or false, got {value!r}")
    if tp in (int, float):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise MMDialogError(f"config key {key!r} must be {tp.__name__}, got {value!r}") from None
    if tp is str:
        return "" if value is None else str(value)
    return value


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise MMDialogError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(names))}")
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    def conv(x):
        if isinstance(x, tuple):
            return list(x)
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x

    return conv(dataclasses.asdict(cfg))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise MMDialogError(f"override {text!r} must look like a.b=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for ov in overrides:
        path, value = parse_override(ov)
        node = data
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise MMDialogError(f"override {ov!r}: {p!r} is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=Config):
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MMDialogError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise MMDialogError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise MMDialogError(f"config file {p} must hold a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    return _from_dict(cls, data)


def config_from_dict(data: dict, cls=Config, where: str = "config"):
    """A config from a mapping (what to_dict gives), with the same checks as load_config."""
    if not isinstance(data, dict):
        raise MMDialogError(f"{where} must be a mapping, got {type(data).__name__}")
    return _from_dict(cls, data)


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
