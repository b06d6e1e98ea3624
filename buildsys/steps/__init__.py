"""Registry of formats and steps. Every module in this package is a format module and is
discovered automatically: adding a format is adding a file, with no list to edit elsewhere."""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import TypeVar

from buildsys.steps.base import Format, Step, StepContext, StepOptions

__all__ = ["Format", "Step", "StepContext", "StepOptions", "register", "register_format", "steps", "formats", "get_format", "get_step"]

_STEPS: dict[str, type[Step]] = {}
_FORMATS: dict[str, Format] = {}
_loaded = False

S = TypeVar("S", bound=type[Step])


def register(cls: S) -> S:
    """Class decorator: make a Step subclass known by its `name`."""
    if cls.name in _STEPS and _STEPS[cls.name] is not cls:
        raise ValueError(f"two steps are named {cls.name!r}")
    _STEPS[cls.name] = cls
    return cls


def register_format(fmt: Format) -> Format:
    """Make a Format known by its name (called at import of the module that produces it)."""
    _FORMATS[fmt.name] = fmt
    return fmt


def _load_all() -> None:
    # Step modules import only pydantic and the standard library at top level, so loading them all
    # costs milliseconds; heavy toolchains are imported inside the steps' _run.
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    # Extra step modules (a team's own converters, test doubles): comma-separated module names.
    for module in filter(None, os.environ.get("MODELBUILD_PLUGINS", "").split(",")):
        importlib.import_module(module.strip())


def steps() -> dict[str, type[Step]]:
    """All registered steps by name."""
    _load_all()
    return _STEPS


def formats() -> dict[str, Format]:
    """All registered formats by name."""
    _load_all()
    return _FORMATS


def get_step(name: str) -> type[Step]:
    return steps()[name]


def get_format(name: str) -> Format:
    return formats()[name]
