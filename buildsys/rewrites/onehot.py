"""Scatters at static sizes as one-hot masks: the machinery of the `scatter` family (buildsys/rewrites/scatter.py).

A scatter along `dim` writes src[p] into out[p with p[dim] := index[p]]. With N = out.size(dim) static,
the one-hot mask `hit[..., k, n] = index[..., k] == n` says which source element k lands on which
output slot n; a reduction over k then gives every slot at once:

- sum: Σ_k where(hit, src, 0) (a matmul with the mask when the index is one vector and src floating);
- prod: Π_k where(hit, src, 1); amax / amin: the max / min of where(hit, src, ∓largest);
- mean: the sum divided by the count of hits (plus the slot's own value when include_self);
- replace (scatter, index_copy, index_put without accumulate): the value of the last k that hits the
  slot, as torch's CPU kernels leave it, picked by a mask (no gather).

Slots no index hits keep the input; with include_self=False a hit slot forgets it. Cost: index.numel()·N
elements, nothing for the sizes models scatter into (graph nodes, a few hundred bins), heavy for a
scatter into a large grid. Indices outside [0, N) write nothing (torch raises; a graph cannot check
values). The float one-vector sum is a matmul: a non-finite source value then spreads NaN over its row
(0·inf), where torch keeps it in its slot.
"""

from __future__ import annotations

import numpy as np
import torch

from buildsys.rewrites.base import RewriteNotApplicable
from buildsys.rewrites.mechanism import constant, from_last, static_size, to_last

REWRITE = "scatter"
REDUCTIONS = ("sum", "prod", "mean", "amax", "amin", "replace")


def _extreme(dtype: torch.dtype, largest: bool) -> float | int:
    """What amax / amin fill slots no value hits with: ±inf, or the integer dtype's bounds."""
    if dtype.is_floating_point:
        return float("inf") if largest else float("-inf")
    info = torch.iinfo(dtype)
    return info.max if largest else info.min


def _pad_to(x: torch.Tensor, shape: tuple[int, ...], value: float) -> torch.Tensor:
    """x padded at the end of every dim but the last (the slots) up to `shape`: the index may address only
    part of the other dims, whose slots keep the input."""
    pads: list[int] = []
    for d in reversed(range(x.dim() - 1)):
        pads += [0, int(shape[d]) - int(x.shape[d])]
    return torch.nn.functional.pad(x, [0, 0] + pads, value=value) if any(pads) else x


def scatter_reduce(input: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor | float, reduce: str,
                   include_self: bool, op: str) -> torch.Tensor:
    """torch.scatter_reduce's semantics for every reduction of REDUCTIONS, at static sizes, without a scatter."""
    if input.dim() == 0:  # torch treats a 0-D input (and its 0-D index and source) as one element along dim 0
        one = src.reshape(1) if isinstance(src, torch.Tensor) else src
        return scatter_reduce(input.reshape(1), 0, index.reshape(1), one, reduce, include_self, op).reshape(())
    if reduce not in REDUCTIONS:
        raise RuntimeError(f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce}")
    if input.dtype == torch.bool and reduce != "replace":
        raise RewriteNotApplicable(REWRITE, op, f"reduce={reduce!r} on a bool tensor")
    dim = dim % input.dim()
    slots = static_size(input, dim, REWRITE, op)
    if not isinstance(src, torch.Tensor):
        src = torch.full(index.shape, src, dtype=input.dtype)
    if index.dim() != input.dim() or src.dim() != input.dim():
        raise RuntimeError(f"{op}: Index tensor must have the same number of dimensions as self tensor")
    if tuple(src.shape) != tuple(index.shape):  # the part the index addresses (a no-op slice traces as an alias,
        src = src[tuple(slice(0, int(n)) for n in index.shape)]  # which coremltools' export frontend refuses)
    src = src.to(input.dtype)
    lead, taken = tuple(int(n) for n in to_last(index, dim).shape[:-1]), int(index.shape[dim])
    rows = int(np.prod(lead)) if lead else 1
    # the one-hot of every (row, k) against the slots as a 2-D [rows·K, N] (converters that guess layouts for
    # higher ranks, onnx2tf, mis-broadcast a 4-D comparison), reduced over k once grouped as [rows, K, N]
    flat_index = to_last(index, dim).reshape(rows * taken, 1)
    values = to_last(src, dim).reshape(rows * taken, 1)
    hit2 = flat_index == constant(np.arange(slots), index.dtype)                         # [rows·K, N]

    def grouped(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(rows, taken, slots)

    hit = grouped(hit2)
    count = hit.to(torch.float32).sum(dim=1)                                             # [rows, N]
    if reduce == "replace":  # the last k that hits the slot (float positions: exact below 2^24)
        position = constant(np.arange(taken, dtype=np.float32)[:, None], torch.float32)   # [K, 1]
        writer = torch.where(hit, position, torch.full_like(position, -1.0)).amax(dim=1, keepdim=True)
        result = torch.where(hit & (position == writer), grouped(values.expand(-1, slots)),
                             torch.zeros_like(hit, dtype=input.dtype)).sum(dim=1)
    elif reduce in ("sum", "mean"):
        result = grouped(torch.where(hit2, values, torch.zeros_like(values))).sum(dim=1)
    elif reduce == "prod":
        result = grouped(torch.where(hit2, values, torch.ones_like(values))).prod(dim=1)
    else:
        fill = torch.full_like(values, _extreme(input.dtype, largest=reduce == "amin"))
        picked = grouped(torch.where(hit2, values, fill))
        result = picked.amax(dim=1) if reduce == "amax" else picked.amin(dim=1)
    result, count = result.reshape(*lead, slots), count.reshape(*lead, slots)
    own = to_last(input, dim)
    shape = tuple(int(n) for n in own.shape)  # ints: a traced size in a reshape trips coremltools (aten::Int)
    result, count = _pad_to(result.to(input.dtype), shape, 0), _pad_to(count, shape, 0)
    combined = _combine(own.reshape(-1, slots), result.reshape(-1, slots), count.reshape(-1, slots), reduce,
                        include_self)  # 2-D, as above
    return from_last(combined.reshape(shape), dim)


def _combine(own: torch.Tensor, result: torch.Tensor, count: torch.Tensor, reduce: str,
             include_self: bool) -> torch.Tensor:
    """The input's own value and the scattered result, slot by slot, as the reduction combines them
    (`count`: how many source values hit each slot, as floats)."""
    written = count > 0
    if reduce == "mean":
        total, hits = (own + result, count + 1) if include_self else (result, count.clamp(min=1))
        return torch.where(written, _divide(total, hits), own)
    if reduce == "sum" and include_self:
        return own + result  # 0 where nothing landed
    if reduce == "replace" or not include_self:
        return torch.where(written, result, own)
    combined = own * result if reduce == "prod" else \
        torch.maximum(own, result) if reduce == "amax" else torch.minimum(own, result)
    return torch.where(written, combined, own)  # slots of dims the index does not reach hold padding


def _divide(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count as scatter_reduce's mean does: true division for floats, floor division for integers."""
    if total.dtype.is_floating_point:
        return total / count.to(total.dtype)
    return torch.div(total, count.to(total.dtype), rounding_mode="floor")


def index_reduce(input: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor, reduce: str,
                 include_self: bool, op: str) -> torch.Tensor:
    """An index_* op (one index vector along `dim`, source of input's shape but K there) as a scatter; a
    floating sum is a matmul with the [K, N] one-hot matrix."""
    if index.dim() > 1:
        raise RuntimeError(f"{op}(): Index is supposed to be a vector")
    if input.dim() == 0:  # one element along dim 0, as torch treats it
        return index_reduce(input.reshape(1), 0, index, source.reshape(1), reduce, include_self, op).reshape(())
    dim = dim % input.dim()
    index = index.reshape(-1)
    index = torch.where(index < 0, index + static_size(input, dim, REWRITE, op), index)
    if reduce == "sum" and include_self and input.dtype.is_floating_point:
        slots = static_size(input, dim, REWRITE, op)
        onehot = (index.unsqueeze(-1) == constant(np.arange(slots), torch.int64).to(index.dtype)).to(input.dtype)
        moved = to_last(source.to(input.dtype), dim)                             # [..., K]
        return input + from_last(torch.matmul(moved, onehot), dim)                 # [..., N] → input's layout
    shape = [1] * source.dim()
    shape[dim] = -1
    full = index.reshape(shape).expand(tuple(int(n) for n in source.shape))  # ints, as above
    return scatter_reduce(input, dim, full, source, reduce, include_self, op)
