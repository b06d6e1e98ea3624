"""The registry of formats, steps and runtimes, filled by discovering the format families (see the package doc)."""


from __future__ import annotations

import importlib
import os
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from buildsys.formats.precision import format_name


if TYPE_CHECKING:
    from buildsys.formats.base import Format, OpTable, Step
    from buildsys.formats.runtime import Runtime

_STEPS: dict[str, "type[Step]"] = {}
_FORMATS: dict[str, "Format"] = {}
_RUNTIMES: dict[str, type["Runtime"]] = {}
_OP_TABLES: dict[str, "OpTable"] = {}
_loaded = False

T = TypeVar("T")
S = TypeVar("S", bound="type[Step]")
R = TypeVar("R", bound="type[Runtime]")

#: Modules of this package that are infrastructure, not a format family.
_PACKAGE = "buildsys.formats"
_SHARED = {f"{_PACKAGE}.{m}" for m in ("base", "runtime", "registry", "reproducible")}


def _add(table: dict[str, Any], kind: str, name: str, item: T) -> T:
    """Put `item` into `table` under `name`: again is harmless (a module imported twice), another item under a
    name already taken is an error."""
    if name in table and table[name] != item:
        raise ValueError(f"two {kind} are named {name!r}")
    table[name] = item
    return item


def register(cls: S) -> S:
    """Class decorator: make a Step subclass known by its `name`."""
    return _add(_STEPS, "steps", cls.name, cls)


def register_variants(consumes: dict[str, str | tuple[str, ...]]) -> Callable[[S], S]:
    """Class decorator: register one step per precision from a class whose code is the same for all.

    `consumes` maps each precision to the format(s) that precision's step reads, e.g.
    `{"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8"}` for a step that lays out an ONNX
    model of any precision. The class sets `produces` to its family's name; each registered step is
    a subclass with `precision`, `produces` (`format_name(family, precision)`), `consumes` and
    `name` ("<produces>-from-<first consumed>", dashed) filled in, and reads `self.precision` where it differs.
    The decorated class itself stays unregistered (it is the shared body) and is returned.
    """
    def deco(cls: S) -> S:
        family = cls.produces
        for precision, consumed in consumes.items():
            inputs = (consumed,) if isinstance(consumed, str) else tuple(consumed)
            produced = format_name(family, precision)
            variant = type(f"{cls.__name__}[{precision}]", (cls,), {
                "__doc__": cls.__doc__, "__module__": cls.__module__, "precision": precision,
                "produces": produced, "consumes": inputs, "name": f"{produced}-from-{inputs[0].replace('_', '-')}"})
            register(variant)
        return cls
    return deco


def register_format(fmt: "Format") -> "Format":
    """Make a Format known by its name (called at import of the module that produces it)."""
    return _add(_FORMATS, "formats", fmt.name, fmt)


def register_formats(variants: dict[str, "Format"]) -> dict[str, "Format"]:
    """Register every member of a family made by `Format.variants`; returns them by precision."""
    for fmt in variants.values():
        register_format(fmt)
    return variants


def register_runtime(cls: R) -> R:
    """Class decorator: make a Runtime subclass known by its `name`."""
    _RUNTIMES[cls.name] = cls
    return cls


def register_op_table(table: "OpTable") -> "OpTable":
    """Make a converter's op registry known by its name (planning.coverage reads it through the op analysis)."""
    return _add(_OP_TABLES, "op tables", table.name, table)


def op_tables() -> dict[str, "OpTable"]:
    """All declared op tables by name."""
    _load_all()
    return _OP_TABLES


def _load_all() -> None:
    """Import every module of every family package, then the plugins named in MODELBUILD_PLUGINS.

    The registry counts as loaded only once every import succeeded: a failed plugin import raises a
    ConfigError naming the plugin, and the next call tries again rather than using half a registry.
    """
    global _loaded
    if _loaded:
        return
    import buildsys.nodes

    for package in (_PACKAGE, buildsys.nodes.__name__):
        root = importlib.import_module(package)
        for info in sorted(pkgutil.walk_packages(root.__path__, prefix=f"{package}."), key=lambda i: i.name):
            if info.name not in _SHARED:
                importlib.import_module(info.name)
    for module in plugin_modules():
        _import_plugin(module)
    _loaded = True


def plugin_modules() -> list[str]:
    """The extra modules named in MODELBUILD_PLUGINS (comma-separated): a team's own formats, steps and
    runtimes, registered at import with the same decorators as the built-in families (docs/adding-a-format.md)."""
    return [m.strip() for m in os.environ.get("MODELBUILD_PLUGINS", "").split(",") if m.strip()]


def _import_plugin(module: str) -> None:
    """Import one plugin module; any failure is the plugin's, and the error names it."""
    from buildsys.errors import ConfigError, describe

    try:
        importlib.import_module(module)
    except Exception as exc:
        raise ConfigError(f"plugin module {module!r} failed to import: {describe(exc)}", field="MODELBUILD_PLUGINS",
                          hint="fix the plugin, or remove it from the MODELBUILD_PLUGINS environment variable") from exc


def _unknown(kind: str, name: str, known: Iterable[str]) -> Exception:
    """The error for a name no family or plugin registered: what exists, and the closest match."""
    from buildsys.errors import PlanError, did_you_mean

    hint = did_you_mean(name, known) or f"— known {kind}s: {', '.join(sorted(known))}"
    plugins = f" (plugins loaded: {', '.join(plugin_modules())})" if plugin_modules() else ""
    return PlanError(f"no {kind} named {name!r} is registered{plugins}", hint=hint)


def steps() -> dict[str, "type[Step]"]:
    """All registered steps by name."""
    _load_all()
    return _STEPS


def formats() -> dict[str, "Format"]:
    """All registered formats by name."""
    _load_all()
    return _FORMATS


def runtimes() -> dict[str, type["Runtime"]]:
    """All registered runtimes by name."""
    _load_all()
    return _RUNTIMES


def get_step(name: str) -> "type[Step]":
    """The step class registered under `name`; a PlanError listing the known steps otherwise."""
    if name not in steps():
        raise _unknown("step", name, steps())
    return steps()[name]


def get_format(name: str) -> "Format":
    """The format registered under `name`; a PlanError listing the known formats otherwise."""
    if name not in formats():
        raise _unknown("format", name, formats())
    return formats()[name]


def runtime_class(name: str) -> type["Runtime"]:
    """The runtime class registered under `name`; a PlanError listing the known runtimes otherwise."""
    if name not in runtimes():
        raise _unknown("runtime", name, runtimes())
    return runtimes()[name]


def get_runtime(name: str) -> "Runtime":
    """A new instance of the runtime registered under `name`."""
    return runtime_class(name)()
