"""What a rewrite is (`Rewrite`, torch-free metadata the planner reads) and the errors rewrites raise."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from buildsys.errors import ModelbuildError, StepError, did_you_mean

#: A replacement for one torch function: called with that function's own arguments.
Handler = Callable[..., object]
#: The torch functions a rewrite intercepts (torch.stft, torch.Tensor.unfold, ...) → their replacements.
HandlerTable = Mapping[Callable[..., object], Handler]


@dataclass(frozen=True)
class Rewrite:
    """A semantics-preserving rewrite of a model, keyed by the ops it removes (never by a model).

    `removes` are the ops it takes out of a traced or exported graph, in TorchScript spelling
    (`aten::stft`): the ops it intercepts, then what those decompose into after
    `run_decompositions` (a converter that decomposes first names those). `signs` are regular
    expressions for refusal texts that point at it without naming one of its ops (a complex dtype, an
    ONNX `Loop`). `version` enters cache keys: bump it whenever the rewritten graph changes.
    `handlers` returns the torch functions it replaces (torch is imported only when it is called).
    `family`, on a member, names the family rewrite that holds it: a member replaces a subset of its
    family's functions with the same handlers (the name a target could set before the family existed),
    so a refusal that points at both is answered by the family alone.
    `precise` are ops it computes closer to torch than converters write them (log1p as log(1 + x)): nothing
    refuses those, so a float check that missed its tolerance on a route whose program holds one is answered by
    it (buildsys/planning/failures.py).
    `quantizable` are ops whose weights quantizers leave float and that it writes as linear layers they quantize
    (an LSTM's gates): an int8 artifact refused for its share of int8 weights (min_quantized_share) on a
    program holding one is answered by it (buildsys/planning/failures.py).
    """

    name: str
    version: int
    removes: tuple[str, ...]
    description: str
    handlers: Callable[[], HandlerTable] = field(repr=False, compare=False)
    signs: tuple[str, ...] = ()
    family: str | None = None
    precise: tuple[str, ...] = ()
    quantizable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", self.name):
            raise ValueError(f"rewrite name {self.name!r}: lower-case words joined by '-'")
        if not self.removes:
            raise ValueError(f"rewrite {self.name!r} removes no op: a rewrite is keyed by the ops it removes")
        for op in (*self.removes, *self.precise, *self.quantizable):
            if not re.fullmatch(r"[a-z_]+::[A-Za-z0-9_]+", op):
                raise ValueError(f"rewrite {self.name!r}: op {op!r} is not spelled 'namespace::name' (aten::stft)")

    def as_dict(self) -> dict[str, object]:
        """The metadata, JSON-ready (what `plan --json` and the lock can show)."""
        out: dict[str, object] = {"name": self.name, "version": self.version, "removes": list(self.removes),
                                  "description": self.description}
        if self.family:
            out["family"] = self.family
        if self.precise:
            out["precise"] = list(self.precise)
        if self.quantizable:
            out["quantizable"] = list(self.quantizable)
        return out


def refuse_out(rewrite: str, op: str, out: object) -> None:
    """A replacement computes a new tensor; writing it into a caller's `out=` tensor is not implemented: refused."""
    if out is not None:
        raise RewriteNotApplicable(rewrite, op, "the out= argument")


def returned(name: str, values: tuple[Any, ...]) -> Any:
    """torch's named tuple `torch.return_types.<name>` (qr, slogdet, linalg_inv_ex, …) holding `values`."""
    import torch

    return getattr(torch.return_types, name)(values)


def in_place(func: Handler) -> Handler:
    """The in-place form (Tensor.x_) of an out-of-place replacement: its result written back with `copy_`. One
    wrapper per replacement, so a table built twice holds the same handler (a family and its member compare them)."""
    wrapper = _IN_PLACE.get(func)
    if wrapper is None:
        def write_back(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self.copy_(func(self, *args, **kwargs))
        wrapper = _IN_PLACE[func] = write_back
    return wrapper


_IN_PLACE: dict[Handler, Handler] = {}


def by_name(replacements: Mapping[str, Handler], namespaces: Sequence[object],
            in_place_on: object | None = None) -> dict[Callable[..., object], Handler]:
    """A handler table from function names: each name's function in every namespace that has one (torch,
    torch.Tensor, torch.special, torch.nn.functional) → its replacement; with `in_place_on` (torch.Tensor), also
    its in-place form `name_` where there is one, written back (`in_place`)."""
    table: dict[Callable[..., object], Handler] = {}
    for name, replacement in replacements.items():
        for namespace in namespaces:
            if hasattr(namespace, name):
                table[getattr(namespace, name)] = replacement
        if in_place_on is not None and hasattr(in_place_on, f"{name}_"):
            table[getattr(in_place_on, f"{name}_")] = in_place(replacement)
    return table


_NAMESPACES = ("aten", "prims", "torch", "quantized", "quantized_decomposed", "executorch_prim")


def op_base(op: str) -> str:
    """The bare op name: 'aten::stft', 'aten.stft.default', 'torch.ops.aten.stft.default', 'stft' → 'stft'."""
    name = op.strip().removeprefix("torch.ops.")
    if "::" in name:
        name = name.split("::", 1)[1]
    elif "." in name and name.split(".", 1)[0] in _NAMESPACES:
        name = name.split(".", 1)[1]
    return name.split(".", 1)[0]


class UnknownRewrite(ModelbuildError):
    """A rewrite name that no module of buildsys.rewrites declares."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f"no rewrite is named {name!r} (known: {', '.join(known)})", hint=did_you_mean(name, known))


class RewriteNotApplicable(StepError):
    """A rewrite met a use of its op that it does not implement, so it refuses rather than compute
    something else: the model keeps the op (or the complex value) and the route needs another way."""

    def __init__(self, rewrite: str, op: str, reason: str):
        self.rewrite, self.op, self.reason = rewrite, op, reason
        super().__init__(f"rewrite '{rewrite}' does not apply to {op}: {reason}")
