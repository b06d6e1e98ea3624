"""The registry of rewrites, filled by discovering the modules of buildsys.rewrites (no torch needed).

Every module of this package except the shared ones below declares `REWRITES: tuple[Rewrite, ...]`
at module level and imports torch only inside functions, so the planner can list rewrites, the ops
they remove and their versions without importing torch. Adding a rewrite is one module (or one entry
in its family's module) plus its test; nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from buildsys.rewrites.base import Rewrite, UnknownRewrite, op_base

if TYPE_CHECKING:
    from torch import nn

_PACKAGE = "buildsys.rewrites"
#: Modules of the package that are machinery, not a family of rewrites.
SHARED = frozenset({"base", "registry", "refusal", "mechanism", "pair", "pair_ops", "dft", "spectral", "onehot",
                    "indexing", "placement", "segment", "householder", "bessel_tables", "orthogonal", "lu",
                    "triangular_solve", "matrices", "polynomial", "composites",
                    "histograms", "ldl", "exponential"})


class _Registry(Mapping[str, Rewrite]):
    """Name → Rewrite, in discovery order (module name, then declaration order); loaded on first use."""

    def __init__(self) -> None:
        self._rewrites: dict[str, Rewrite] | None = None

    def _load(self) -> dict[str, Rewrite]:
        if self._rewrites is None:
            package = importlib.import_module(_PACKAGE)
            found: dict[str, Rewrite] = {}
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if info.name in SHARED or info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"{_PACKAGE}.{info.name}")
                for rewrite in getattr(module, "REWRITES", ()):
                    if rewrite.name in found:
                        raise ValueError(f"two rewrites are named {rewrite.name!r}")
                    found[rewrite.name] = rewrite
            self._rewrites = found
        return self._rewrites

    def __getitem__(self, name: str) -> Rewrite:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


REGISTRY: Mapping[str, Rewrite] = _Registry()


def get(name: str) -> Rewrite:
    """The rewrite called `name`; UnknownRewrite (with a did-you-mean) when there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownRewrite(name, sorted(REGISTRY)) from None


def removing(op: str) -> list[Rewrite]:
    """The rewrites that remove `op` (any spelling: aten::stft, aten.stft.default, stft): families and
    rewrites of their own first, members after, each in registry order."""
    base = op_base(op)
    found = [r for r in REGISTRY.values() if base in {op_base(o) for o in r.removes}]
    return sorted(found, key=lambda r: r.family is not None)


def precise_for(ops: Sequence[str]) -> list[Rewrite]:
    """The rewrites that compute one of `ops` (any spelling) more precisely than converters write it
    (`Rewrite.precise`): what answers a float check that missed its tolerance on a program holding them."""
    held = {op_base(o) for o in ops}
    return [r for r in REGISTRY.values() if held & {op_base(o) for o in r.precise}]


def quantizable_for(ops: Sequence[str]) -> list[Rewrite]:
    """The rewrites that write one of `ops` (any spelling), whose weights quantizers leave float, as linear layers
    they quantize (`Rewrite.quantizable`): what answers an int8 artifact refused for its share of int8 weights."""
    held = {op_base(o) for o in ops}
    return [r for r in REGISTRY.values() if held & {op_base(o) for o in r.quantizable}]


def apply(module: nn.Module, names: Sequence[str]) -> nn.Module:
    """An equivalent module that runs with the named rewrites in force (in this order).

    It is a shallow copy of `module` whose class is a subclass of module's own, with the same
    parameters, buffers and submodules (so the same `state_dict()`) and the same forward signature;
    torch.jit.trace and torch.export (strict or not) record the rewritten ops. Raises UnknownRewrite for
    an unknown name; a rewrite that meets a use it does not implement raises RewriteNotApplicable when
    the module runs (or is traced), never computes something else.
    """
    rewrites = [get(name) for name in names]
    from buildsys.rewrites import pair_ops  # noqa: F401 - the ops it registers on complex pairs, before any trace
    from buildsys.rewrites.mechanism import apply as apply_rewrites

    return apply_rewrites(module, rewrites)


def carried(module: object) -> tuple[str, ...]:
    """The rewrites a module from `apply` carries, in order; () for any other module (torch-free)."""
    return tuple(getattr(type(module), "__rewrites__", ()))


def check_names(names: Sequence[str]) -> Sequence[str]:
    """`names` when each names a rewrite once; else a ValueError saying which does not, with a did-you-mean
    (what option validators raise, so the config error names the file, line and field)."""
    from buildsys.errors import did_you_mean

    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"no rewrite is named '{name}' {did_you_mean(name, REGISTRY) or ''}".rstrip()
                             + f" (known: {', '.join(REGISTRY)})")
    if len(set(names)) != len(names):
        raise ValueError(f"a rewrite is named twice in {list(names)}")
    return names


#: How rewrites run together (mechanism.py); 2: a handler runs with the other rewrites in force (`composed`).
MECHANISM = 2


def versions(names: Sequence[str]) -> dict[str, int]:
    """name → version of the named rewrites: what a cache key records of them (and `MECHANISM`: planning/kinds.py)."""
    return {name: get(name).version for name in names}
