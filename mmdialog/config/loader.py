"""Loading configs: YAML files and mappings into the schema's dataclasses, with `a.b=c` overrides from the
command line, and back to plain mappings and YAML.

Unknown keys are errors that name the key and the keys that do exist.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mmdialog.config.schema import Config
from mmdialog.errors import MMDialogError


def convert_value(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/override value to the annotated type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MMDialogError(f"config key {key!r} must be a mapping, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise MMDialogError(f"config key {key!r} must be a mapping, got {value!r}")
        val_tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        return {str(k): convert_value(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple and typing.get_args(tp)[1:] == (Ellipsis,):
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(convert_value(v, item_tp, key) for v in value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise MMDialogError(f"config key {key!r} must be a list of {len(args)} values, got {value!r}")
        return tuple(convert_value(v, a, key) for v, a in zip(value, args))
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
        kwargs[k] = convert_value(v, hints[k], key)
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
