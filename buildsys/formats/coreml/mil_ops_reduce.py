"""Reference implementations of MIL's reductions and orderings in NumPy: reduce_*, arg max/min, topk, argsort, cumsum, non_zero."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from buildsys.formats.coreml.mil_registry import Args, op

if TYPE_CHECKING:
    import numpy as np

    Array = np.ndarray


@op("cumsum")
def cumsum(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    axis = a.integer("axis", 0)
    if a.flag("reverse"):
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if a.flag("exclusive"):
        out = out - x
    return np.flip(out, axis) if a.flag("reverse") else out


@op("topk")
def topk(a: Args) -> tuple["Array", "Array"]:
    """The k largest (or smallest with ascending) along axis, sorted; ties keep the lower index."""
    import numpy as np

    x = a.tensor("x")
    axis, k = a.integer("axis", -1), a.integer("k", 1)
    order = np.argsort(x if a.flag("ascending") else -x, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k if k >= 0 else x.shape[axis]), axis=axis)
    return np.take_along_axis(x, indices, axis=axis), indices.astype(np.int32)


@op("argsort")
def argsort(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    return np.argsort(x if a.flag("ascending") else -x, axis=a.integer("axis", -1), kind="stable").astype(np.int32)


@op("non_zero")
def non_zero(a: Args) -> "Array":
    import numpy as np

    return np.argwhere(a.tensor("x")).astype(np.int32)


def _reduction(fn: Callable[["Array", tuple[int, ...] | None, bool], "Array"]) -> Callable[[Args], "Array"]:
    def run(a: Args) -> "Array":
        x = a.tensor("x")
        axes = tuple(ax % x.ndim for ax in a.integers("axes")) if a.has("axes") else None
        return fn(x, axes, a.flag("keep_dims"))

    return run


def _l2(x: "Array", axes: tuple[int, ...] | None, keep: bool) -> "Array":
    import numpy as np

    return np.sqrt(np.sum(np.square(x), axis=axes, keepdims=keep))


def _log(x: "Array") -> "Array":
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _log_sum_exp(x: "Array", axes: tuple[int, ...] | None, keep: bool) -> "Array":
    import numpy as np

    peak = np.max(x, axis=axes, keepdims=True)
    out = np.log(np.sum(np.exp(x - peak), axis=axes, keepdims=True)) + peak
    return out if keep else np.squeeze(out, axis=axes)


_REDUCTIONS: dict[str, Callable[["Array", tuple[int, ...] | None, bool], "Array"]] = {
    "reduce_sum": lambda x, ax, k: x.sum(axis=ax, keepdims=k, dtype=x.dtype),
    "reduce_mean": lambda x, ax, k: x.mean(axis=ax, keepdims=k, dtype=x.dtype if x.dtype.kind == "f" else None),
    "reduce_max": lambda x, ax, k: x.max(axis=ax, keepdims=k),
    "reduce_min": lambda x, ax, k: x.min(axis=ax, keepdims=k),
    "reduce_prod": lambda x, ax, k: x.prod(axis=ax, keepdims=k, dtype=x.dtype),
    "reduce_sum_square": lambda x, ax, k: (x * x).sum(axis=ax, keepdims=k),
    "reduce_l1_norm": lambda x, ax, k: abs(x).sum(axis=ax, keepdims=k),
    "reduce_l2_norm": _l2,
    "reduce_log_sum": lambda x, ax, k: _log(x.sum(axis=ax, keepdims=k)),
    "reduce_log_sum_exp": _log_sum_exp,
}
for _name, _fn in _REDUCTIONS.items():
    op(_name)(_reduction(_fn))


@op("reduce_argmax", "reduce_argmin")
def reduce_arg(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    axis = a.integer("axis", -1)
    fn = np.argmax if a.op.op_type == "reduce_argmax" else np.argmin
    return fn(x, axis=axis, keepdims=a.flag("keep_dims")).astype(np.int32)
