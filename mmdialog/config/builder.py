"""Building a registered part (an encoder, a fusion, ...) from a config mapping {name: ..., <keyword arguments>}."""

from __future__ import annotations

import typing
from typing import Any

from mmdialog.config.loader import convert_value
from mmdialog.errors import MMDialogError


def build_part(registry, spec: dict[str, Any], where: str, **given):
    """Build a registered part from a config mapping {name: ..., <keyword arguments>}.

    The keyword arguments are checked against the part's signature: unknown keys, missing ones and
    wrong types are errors naming `where.key`. `given` are arguments the builder supplies itself
    (sizes of other parts); they are passed only where the signature takes them.
    """
    import inspect

    spec = dict(spec)
    name = spec.pop("name", None)
    if not name:
        raise MMDialogError(f"config key {where}.name is missing; known {registry.kind}s: {', '.join(registry.names())}")
    cls = registry.get(str(name))
    params = inspect.signature(cls).parameters
    hints = typing.get_type_hints(cls.__init__) if inspect.isclass(cls) else typing.get_type_hints(cls)
    takes = {k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(spec) - takes)
    if unknown:
        raise MMDialogError(f"unknown config key {where}.{unknown[0]}; {registry.kind} {name!r} takes: "
                            f"{', '.join(sorted(takes - set(given))) or 'nothing'}")
    kwargs = {k: convert_value(v, hints.get(k, Any), f"{where}.{k}") for k, v in spec.items()}
    kwargs.update({k: v for k, v in given.items() if k in takes and k not in kwargs})
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs
               and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if missing:
        raise MMDialogError(f"config key {where}.{missing[0]} is required by {registry.kind} {name!r}")
    return cls(**kwargs)

