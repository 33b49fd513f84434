"""One small registry per extension point (encoders, fusions, decoders, ...)."""

from __future__ import annotations

from typing import Any, Callable

from mmdialog.errors import MMDialogError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str):
        def deco(fn):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            raise MMDialogError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)


ENCODERS = Registry("encoder")
FUSIONS = Registry("fusion")
DECODERS = Registry("decoder")
