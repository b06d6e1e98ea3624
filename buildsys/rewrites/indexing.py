"""index_put and `x[indices] = v` for the `scatter` family: advanced-index writes as one-hot scatters.

Integer index tensors (broadcast together) address a block of adjacent dims, which is flattened into one
dim of static size P so the write is an index_copy (or, with accumulate, an index_add) along it with the
linear index Σ idx_j · stride_j (buildsys.rewrites.onehot); non-adjacent index tensors put their dims
first, as torch does, so the input is permuted to make them adjacent. A boolean mask over the leading
dims with one value (or one per trailing element) is a `where`. A mask with a value per masked element
(a data-dependent count) and keys mixing index tensors with integers or partial slices raise
RewriteNotApplicable. Negative indices count from the end, as torch's.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from buildsys.rewrites.base import RewriteNotApplicable
from buildsys.rewrites.mechanism import static_size
from buildsys.rewrites.onehot import index_reduce

_OP = "torch.index_put"


def _masked(input: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, accumulate: bool) -> torch.Tensor:
    if tuple(mask.shape) != tuple(input.shape[:mask.dim()]):
        raise IndexError(f"The shape of the mask {list(mask.shape)} does not match the shape of the indexed tensor "
                         f"{list(input.shape)}")
    trailing = tuple(input.shape[mask.dim():])
    if values.dim() > len(trailing) and values.numel() != 1:
        raise refuse(_OP, "a boolean mask with a value per masked element (how many there are depends on the "
                          "data); one value, or one per trailing element, is rewritten")
    values = values.reshape(()) if values.numel() == 1 else values
    keep = mask.reshape(tuple(mask.shape) + (1,) * len(trailing))
    if accumulate:
        return input + torch.where(keep, values, torch.zeros_like(values))
    return torch.where(keep, values.expand(input.shape), input)


def index_put(input: torch.Tensor, indices: Sequence[torch.Tensor | None], values: Any,
              accumulate: bool = False) -> torch.Tensor:
    """torch.index_put's arguments and result, without an index_put op."""
    indices = list(indices)
    values = values if isinstance(values, torch.Tensor) else torch.tensor(values)
    values = values.to(input.dtype)
    if len(indices) > input.dim():
        raise IndexError(f"too many indices for tensor of dimension {input.dim()} (got {len(indices)})")
    masks = [i for i in indices if i is not None and i.dtype in (torch.bool, torch.uint8)]
    if masks:
        if len(indices) != 1:
            raise refuse(_OP, "a boolean mask beside other indices")
        return _masked(input, masks[0].to(torch.bool), values, accumulate)
    positions = [d for d, i in enumerate(indices) if i is not None]
    if not positions:
        raise refuse(_OP, "no index tensor")
    if positions != list(range(positions[0], positions[-1] + 1)):  # torch puts the index dims first
        order = positions + [d for d in range(input.dim()) if d not in positions]
        moved = index_put(input.permute(order), [indices[d] for d in positions], values, accumulate)
        return moved.permute([order.index(d) for d in range(input.dim())])
    first, count = positions[0], len(positions)
    tensors = torch.broadcast_tensors(*[indices[d] for d in positions])
    sizes = [static_size(input, d, "scatter", _OP) for d in positions]
    linear: torch.Tensor | None = None
    for index, size, stride in zip(tensors, sizes, _strides(sizes)):
        index = torch.where(index < 0, index + size, index)
        linear = index * stride if linear is None else linear + index * stride
    assert linear is not None
    # sizes as ints: a traced size in a reshape or expand trips coremltools' trace frontend (aten::Int)
    shape = tuple(int(n) for n in input.shape)
    pre, post = shape[:first], shape[first + count:]
    flat = input.reshape(*pre, _product(sizes), *post)
    spread = values.expand(pre + tuple(int(n) for n in tensors[0].shape) + post).reshape(*pre, -1, *post)
    out = index_reduce(flat, first, linear.reshape(-1), spread, "sum" if accumulate else "replace", True, _OP)
    return out.reshape(shape)


def _strides(sizes: Sequence[int]) -> list[int]:
    return [_product(sizes[i + 1:]) for i in range(len(sizes))]


def _product(sizes: Sequence[int]) -> int:
    out = 1
    for size in sizes:
        out *= int(size)
    return out


def setitem(self: torch.Tensor, key: Any, value: Any) -> None:
    """Tensor.__setitem__: a key with index tensors is an index_put, a static region (ints, unit-step slices)
    a pad and a where (buildsys.rewrites.placement.placed: no slice_scatter or ScatterND), each written back
    into the tensor; any other key is the assignment itself."""
    from buildsys.rewrites.placement import placed

    keys = key if isinstance(key, tuple) else (key,)
    if not any(isinstance(k, torch.Tensor) for k in keys):
        region = placed(self, key, value) if isinstance(value, (torch.Tensor, int, float)) else None
        if region is None:
            torch.Tensor.__setitem__(self, key, value)
        else:
            self.copy_(region)
        return
    consumed = sum(1 if not isinstance(k, torch.Tensor) or k.dtype != torch.bool else k.dim()
                   for k in keys if k is not Ellipsis)
    indices: list[torch.Tensor | None] = []
    for k in keys:
        if k is Ellipsis:
            indices += [None] * (self.dim() - consumed)
        elif isinstance(k, slice) and k == slice(None):
            indices.append(None)
        elif isinstance(k, torch.Tensor) and (k.dtype != torch.bool or not indices):
            indices.append(k)
        else:
            raise refuse("Tensor.__setitem__", f"an index {k!r} beside index tensors (only ':', '...' and index "
                                               "tensors are rewritten)")
    while indices and indices[-1] is None:
        indices.pop()  # trailing full slices are what index_put leaves alone anyway
    self.copy_(index_put(self, indices, value))


def refuse(op: str, reason: str) -> RewriteNotApplicable:
    """Why the scatter family cannot rewrite this call of `op` (the family's own refusal, as scatter.py words it)."""
    return RewriteNotApplicable("scatter", op, reason)
