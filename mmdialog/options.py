"""A command's options declared once: a dataclass whose fields are its flags. Each field carries its flag's help,
default and argparse details (`option(...)`); `add_options` turns the fields into a parser's flags, `read` reads
the parsed values back into the dataclass, and `kwargs_for` hands them to the function or config dataclass that
does the work under its own parameter names. Adding an option is one field.

    @dataclass(kw_only=True)
    class ServeOptions:
        port: int = option(8000, "port to listen on (default: %(default)s)")
        timeout: float = option(300, "seconds a request may take", to="timeout_s")

    add_options(parser, ServeOptions)        # --port (type=int), --timeout (type=float)
    serve(**kwargs_for(read(ServeOptions, args), serve))   # serve(port=..., timeout_s=...)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from typing import Any

_NONE = type(None)


def option(default: Any = MISSING, help: str | None = None, *, flag: str | None = None, positional: bool = False,
           to: str | None = None, convert: Callable[[Any], Any] | None = None, **argparse_kw) -> Any:
    """One field of an options dataclass. default: the flag's default (none: required or None, as argparse has it;
    a list is copied per instance); flag: its name when not --field-name; positional: a positional argument named
    by the field; to: the parameter the value goes to when not the field's name; convert: applied on the way
    there (e.g. -1 -> None); argparse_kw: nargs, choices, metavar, action, required, type, as add_argument takes
    them. type is the annotation's int or float unless given (str needs none; bool is a store_true flag)."""
    meta = {"help": help, "flag": flag, "positional": positional, "to": to, "convert": convert,
            "argparse": argparse_kw}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def _scalar(hint: Any) -> Any:
    """int | None -> int; list[int] -> int; str, bool and anything else -> None (argparse's own default)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not _NONE]
        hint = args[0] if len(args) == 1 else None
    if typing.get_origin(hint) in (list, tuple):
        hint = typing.get_args(hint)[0]
    return hint if hint in (int, float) else None


def argparse_args(cls: type) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """The (names, keywords) of add_argument for every field of cls, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        m, kw = f.metadata, dict(f.metadata["argparse"])
        if hints[f.name] is bool:
            kw.setdefault("action", "store_true")
        elif "type" not in kw and _scalar(hints[f.name]) is not None:
            kw["type"] = _scalar(hints[f.name])
        if _default(f) is not MISSING:
            kw["default"] = _default(f)
        if m["help"] is not None:
            kw["help"] = m["help"]
        if m["positional"]:
            out.append(((f.name,), kw))
        else:
            out.append(((m["flag"] or "--" + f.name.replace("_", "-"),), {"dest": f.name, **kw}))
    return out


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    for names, kw in argparse_args(cls):
        parser.add_argument(*names, **kw)


def read(cls: type, args: argparse.Namespace) -> Any:
    """The options dataclass of the parsed args."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def parameters(target: Callable | type) -> set[str]:
    """The keyword names a function or a dataclass takes."""
    if dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target) if f.init}
    return {p.name for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def kwargs(options: Any) -> dict[str, Any]:
    """Every option under the name of the parameter it goes to, converted."""
    out = {}
    for f in dataclasses.fields(options):
        value, m = getattr(options, f.name), f.metadata
        out[m["to"] or f.name] = m["convert"](value) if m["convert"] else value
    return out


def kwargs_for(options: Any, target: Callable | type, *, skip=()) -> dict[str, Any]:
    """The options a function or config dataclass takes, under its parameter names (the rest, and skip, left
    out)."""
    names = parameters(target) - set(skip)
    return {k: v for k, v in kwargs(options).items() if k in names}
