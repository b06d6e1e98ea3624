"""How rewrites run: the model's forward under a TorchFunctionMode that swaps the removed functions for their rewrites.

`apply` returns a module of a subclass of the model's own class whose `forward` runs the original
forward under `RewriteMode`. The mode sees every torch function the forward calls, at the Python
level, before any tracer records anything: torch.jit.trace (TorchScript, the legacy ONNX exporter,
Core ML's trace route) records the ATen ops the rewrite's replacement runs, and torch.export
(strict=False as this project uses, and strict=True) traces the same Python, so every route gets
the same rewritten graph. torch.jit.script does not run Python and sees none of it.

Dispatch order for one call: a call with a real-pair complex value among its arguments goes to that
value's own `__torch_function__` (buildsys.rewrites.pair); then a rewrite's handler for the function,
which runs with the other rewrites in force (`composed`: rewrites compose, as decompositions do); then the
function itself. With the `complex` rewrite active, a function that still returns a complex tensor raises
RewriteNotApplicable: the rewrite promises a graph without a complex dtype.

This module and the rewrite implementations import torch; buildsys.rewrites' registry does not.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from buildsys.rewrites.base import Handler, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import numpy as np

class _Local(threading.local):
    def __init__(self) -> None:
        self.stack: list[ActiveRewrites] = []


#: The rewrites in force in this thread, innermost last (not a ContextVar: TorchDynamo, which
#: torch.export strict=True runs, cannot trace ContextVar.set).
_ACTIVE = _Local()


@dataclass(frozen=True)
class ActiveRewrites:
    """The rewrites in force during one forward: their names, the merged handler table and which rewrite each
    function's handler belongs to."""

    names: tuple[str, ...]
    table: Mapping[Callable[..., object], Handler]
    no_complex: bool
    owner: Mapping[Callable[..., object], str]


def constant(values: "np.ndarray", dtype: torch.dtype | None = None) -> torch.Tensor:
    """A constant for the graph from NumPy values (a DFT basis, a gather index, a mask).

    torch.from_numpy, not torch.tensor: traced, it is one lifted constant (export: lift_fresh_copy,
    a clone once decomposed), where torch.tensor adds detach/alias/to ops that coremltools' export
    frontend refuses ("Unsupported fx node alias")."""
    import numpy as np

    numpy_dtype = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64,
                   torch.int64: np.int64, torch.int32: np.int32, torch.bool: np.bool_}
    if dtype is None:
        return torch.from_numpy(_standard(values))
    if dtype in numpy_dtype:
        return torch.from_numpy(_standard(values, numpy_dtype[dtype]))
    return torch.from_numpy(_standard(values, np.float32)).to(dtype)  # bfloat16: no NumPy type


def _standard(values: "np.ndarray", dtype: object = None) -> "np.ndarray":
    """C order with standard strides: NumPy counts `arange(n)[:, None]` contiguous with a stride of 0 on its size-1
    dim, which a lifted constant keeps and ExecuTorch's emitter refuses."""
    import numpy as np

    array = np.ascontiguousarray(values, dtype=dtype)  # type: ignore[call-overload]
    # a reshape of a contiguous array is a view with standard strides; reading .strides would stop TorchDynamo
    return array.reshape(-1).reshape(array.shape)


def static_size(x: torch.Tensor, dim: int, rewrite: str, op: str) -> int:
    """x.shape[dim] as a Python int for a constant that depends on it (gather indices, a kernel's channels).

    Under torch.jit.trace a size is a traced 0-d tensor: int() makes the trace specialise to it, as the
    constant does anyway. Under torch.export a dynamic dimension is a SymInt: specialising would break
    the program's dynamic shapes, so the rewrite does not apply."""
    size = x.shape[dim]
    if isinstance(size, torch.SymInt):
        raise RewriteNotApplicable(rewrite, op, f"dimension {dim} is dynamic (its constants depend on its size)")
    return int(size)


def to_last(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x with `dim` moved last: a permute with non-negative dims, not a movedim (coremltools' trace frontend
    has no movedim; the TorchScript ONNX exporter writes one from a negative dim as an invalid Transpose)."""
    dim = dim % x.dim()
    order = [d for d in range(x.dim()) if d != dim] + [dim]
    return x if dim == x.dim() - 1 else x.permute(order)


def from_last(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of to_last: the last dim moved back to `dim`."""
    dim = dim % x.dim()
    order = list(range(dim)) + [x.dim() - 1] + list(range(dim, x.dim() - 1))
    return x if dim == x.dim() - 1 else x.permute(order)


def function_name(func: Callable[..., object]) -> str:
    """'torch.stft', 'Tensor.unfold', 'torch.nn.functional.embedding_bag': how messages name a function."""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None) or ""
    if qualname.startswith(("Tensor.", "TensorBase.")):
        return "Tensor." + qualname.split(".", 1)[1]
    name = qualname.rsplit(".", 1)[-1]
    public = {"torch._C._nn": "torch.nn.functional", "torch._C._fft": "torch.fft", "torch._C._linalg": "torch.linalg",
              "torch._C._special": "torch.special"}
    if module in public:  # torch._C._fft.fft_rfft is torch.fft.rfft
        return f"{public[module]}.{name.removeprefix(public[module].rsplit('.', 1)[-1] + '_')}"
    if module.startswith("torch._C") or module in ("", "torch.functional", "torch._tensor") \
            or qualname.startswith("_VariableFunctionsClass."):
        return f"torch.{name}"
    return f"{module}.{qualname}"


def _pair_type(args: Sequence[object], kwargs: Mapping[str, object]) -> type | None:
    """The type of the first real-pair value among the arguments (one level into lists and tuples)."""
    for value in (*args, *kwargs.values()):
        for leaf in (value if isinstance(value, (list, tuple)) else (value,)):
            if not isinstance(leaf, torch.Tensor) and hasattr(type(leaf), "__torch_function__") \
                    and not isinstance(leaf, type):
                return type(leaf)
    return None


def _complex_tensor(out: object) -> bool:
    if isinstance(out, torch.Tensor):
        return out.is_complex()
    return isinstance(out, (list, tuple)) and any(isinstance(o, torch.Tensor) and o.is_complex() for o in out)


def dispatch(active: ActiveRewrites, func: Callable[..., object], args: Sequence[object],
             kwargs: Mapping[str, object]) -> object:
    """Run one torch function call under `active`: pair values first, then a rewrite, then the function."""
    pair = _pair_type(args, kwargs)
    if pair is not None:
        return pair.__torch_function__(func, (pair,), tuple(args), dict(kwargs))  # type: ignore[attr-defined]
    handler = active.table.get(func)
    if handler is not None:
        return composed(active, func, handler, args, kwargs)
    out = func(*args, **kwargs)
    if active.no_complex and _complex_tensor(out):
        raise RewriteNotApplicable("complex", function_name(func), "it makes a complex tensor and no rewrite "
                                   "represents this function on real pairs")
    return out


def composed(active: ActiveRewrites, func: Callable[..., object], handler: Handler, args: Sequence[object],
             kwargs: Mapping[str, object]) -> object:
    """Run `handler` in place of `func` with the other rewrites in force inside it: what one rewrite writes is
    rewritten by the others (fold's conv_transpose2d by conv-transpose, where a converter takes neither), as it
    would be had the model called it. The functions of `func`'s own rewrite, and of every rewrite whose handler
    is running further out, are the plain functions in there: a family calls its own replacements directly, a
    handler may fall back on the function it replaces, and none re-enters itself. Where no other rewrite is in
    force the handler runs with no mode at all (TorchDynamo, under torch.export strict=True, cannot trace a
    mode's call of a Tensor method written in Python, such as unflatten)."""
    own = active.owner[func]
    inner = {f: h for f, h in active.table.items() if active.owner[f] != own}
    if not inner:
        return handler(*args, **kwargs)
    nested = ActiveRewrites(names=active.names, table=inner, no_complex=False,  # complex: checked at the model
                            owner={f: active.owner[f] for f in inner})
    _ACTIVE.stack.append(nested)
    try:
        with RewriteMode(nested):
            return handler(*args, **kwargs)
    finally:
        _ACTIVE.stack.pop()


def call(func: Callable[..., object], *args: object, **kwargs: object) -> object:
    """`func(*args, **kwargs)` through the rewrites in force (so a pair's parts are rewritten too), or plainly."""
    stack = _ACTIVE.stack
    return dispatch(stack[-1], func, args, kwargs) if stack else func(*args, **kwargs)


class RewriteMode(TorchFunctionMode):
    """Every torch function called inside goes through `dispatch`; a handler runs under a mode of the other
    rewrites (`composed`)."""

    def __init__(self, active: ActiveRewrites) -> None:
        super().__init__()
        self.active = active

    def __torch_function__(self, func: Callable[..., object], types: object, args: Sequence[object] = (),
                           kwargs: Mapping[str, object] | None = None) -> object:
        return dispatch(self.active, func, args, kwargs or {})


@contextlib.contextmanager
def rewriting(active: ActiveRewrites) -> Iterator[None]:
    """Run the block with `active` in force (the mode, and `call`'s view of it)."""
    _ACTIVE.stack.append(active)
    try:
        with RewriteMode(active):
            yield
    finally:
        _ACTIVE.stack.pop()


def active_rewrites(rewrites: Sequence[Rewrite]) -> ActiveRewrites:
    """Merge the rewrites' handler tables; two rewrites may claim the same function only with the same
    handler (a family and its member do)."""
    table: dict[Callable[..., object], Handler] = {}
    owner: dict[Callable[..., object], str] = {}
    for rewrite in rewrites:
        for func, handler in rewrite.handlers().items():
            if func in table and owner[func] != rewrite.name and table[func] is not handler:
                raise ValueError(f"rewrites {owner[func]!r} and {rewrite.name!r} both replace {function_name(func)}")
            table[func], owner[func] = handler, rewrite.name
    names = tuple(r.name for r in rewrites)
    return ActiveRewrites(names=names, table=table, no_complex="complex" in names, owner=owner)


def _check_outputs(out: object, names: tuple[str, ...]) -> object:
    from torch.utils._pytree import tree_leaves

    for leaf in tree_leaves(out):
        if not isinstance(leaf, torch.Tensor) and hasattr(type(leaf), "__torch_function__"):
            raise RewriteNotApplicable(
                ",".join(names), "the model's output",
                "the model returns a complex value, which a graph without complex dtypes cannot return "
                "(return torch.view_as_real(z), its magnitude or its parts)")
    return out


def rewritten_class(cls: type[nn.Module], rewrites: Sequence[Rewrite]) -> type[nn.Module]:
    """A subclass of `cls` whose forward runs cls.forward under the rewrites (same signature, same state)."""
    forward = cls.forward
    active = active_rewrites(rewrites)

    @functools.wraps(forward)
    def rewritten_forward(self: nn.Module, *args: object, **kwargs: object) -> object:
        with rewriting(active):
            out = forward(self, *args, **kwargs)
        return _check_outputs(out, active.names)

    return type(cls.__name__, (cls,), {
        "forward": rewritten_forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__, "__rewrites__": active.names, "__rewrite_base__": cls})


def apply(module: nn.Module, rewrites: Sequence[Rewrite]) -> nn.Module:
    """`module` with `rewrites` in force in its forward: a shallow copy (parameters, buffers and submodules
    shared, so `state_dict()` is the same) of a subclass of its class. Applying to a module that
    already carries rewrites adds the new ones (in order, without repeats)."""
    if isinstance(module, torch.jit.ScriptModule) or not isinstance(module, nn.Module):
        raise TypeError(f"rewrites apply to an eager torch.nn.Module, not {type(module).__name__}")
    if "forward" in vars(module):
        raise TypeError("this module's forward was replaced on the instance; rewrites wrap the class's forward")
    base: type[nn.Module] = getattr(type(module), "__rewrite_base__", type(module))
    before: list[Rewrite] = list(getattr(type(module), "__carried__", ()))
    wanted = before + [r for r in dict.fromkeys(rewrites) if r.name not in {c.name for c in before}]
    if not wanted or wanted == before:
        return module
    new = copy.copy(module)
    for key, value in list(vars(new).items()):  # its own containers: adding to one leaves the other as it was
        if isinstance(value, (dict, set)):
            new.__dict__[key] = copy.copy(value)
    cls = rewritten_class(base, wanted)
    cls.__carried__ = tuple(wanted)  # type: ignore[attr-defined]
    new.__class__ = cls
    return new


def carried(module: nn.Module) -> tuple[str, ...]:
    """The names of the rewrites a module from `apply` runs with (() for any other module)."""
    return tuple(getattr(type(module), "__rewrites__", ()))
