"""Runtimes that execute artifacts for checks and references, one module per runtime.

Like steps, runtime modules import their toolchain lazily (inside `load`), and are discovered
automatically from this package.
"""

from __future__ import annotations

import importlib
import pkgutil

from buildsys.runtimes.base import Runtime, Session

__all__ = ["Runtime", "Session", "register", "get_runtime", "runtimes"]

_RUNTIMES: dict[str, type[Runtime]] = {}
_loaded = False


def register(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: make a Runtime known by its `name`."""
    _RUNTIMES[cls.name] = cls
    return cls


def runtimes() -> dict[str, type[Runtime]]:
    global _loaded
    if not _loaded:
        _loaded = True
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
    return _RUNTIMES


def get_runtime(name: str) -> Runtime:
    return runtimes()[name]()
