"""Max pooling over windows named by their positions, with torch's indices: the pooling family's shared step for
the pools whose windows differ in size or depend on the input (adaptive max with return_indices, fractional max).

A window of a d-D pool is the product of its axes' positions: along axis a, output o reads the input positions
`positions[a][..., o, k]` for k < K_a (a window shorter than K_a repeats its first position: the max is unchanged
and the argmax, the first maximal value, never lands on the repeat). The flat index of a position into the pooled
plane (∏ spatial sizes, row-major) is what torch's max pools return as indices. The values are gathered at those
flat indices (`index_select` of a constant when the windows are static, `gather` per plane when they depend on the
input), reduced by max over the window, and the argmax mapped back to its flat index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


def static_positions(bins: Sequence[tuple[int, int]]) -> list[list[int]]:
    """[O][K] input positions of windows [start, end) along one axis, K the widest (shorter ones repeat their start)."""
    widest = max(end - start for start, end in bins)
    return [list(range(start, end)) + [start] * (widest - (end - start)) for start, end in bins]


def window_max(x: torch.Tensor, positions: Sequence[torch.Tensor], dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max of `x` [..., *spatial] over the windows whose per-axis input positions are `positions[a]`
    ([*planes, O_a, K_a] int64, planes empty or x's leading dims), and the flat index of each max into the
    spatial plane, as torch's max pools return it. Outputs [..., O_1, …, O_d]."""
    import torch

    spatial = [int(n) for n in x.shape[x.dim() - dims:]]
    outs = [int(p.shape[-2]) for p in positions]
    widths = [int(p.shape[-1]) for p in positions]
    flat: torch.Tensor | None = None
    for a, p in enumerate(positions):
        stride = 1
        for n in spatial[a + 1:]:
            stride *= n
        # place axis a's O at slot a of d output slots and its K at slot a of d window slots
        shape = list(p.shape[:-2]) + [1] * (2 * dims)
        shape[len(shape) - 2 * dims + a] = outs[a]
        shape[len(shape) - dims + a] = widths[a]
        term = (p * stride).reshape(shape)
        flat = term if flat is None else flat + term
    assert flat is not None
    count, width = _product(outs), _product(widths)
    index = flat.reshape(*flat.shape[:flat.dim() - 2 * dims], count * width)        # [*planes, O·K]
    values = x.reshape(*x.shape[:x.dim() - dims], _product(spatial))                # [..., S]
    if index.dim() == 1:  # static windows: one constant index for every plane
        picked = values.index_select(-1, index)
    else:
        picked = torch.gather(values, -1, index.expand(*values.shape[:-1], count * width))
    picked = picked.reshape(*picked.shape[:-1], count, width)
    best, arg = picked.max(dim=-1)
    windows = index.reshape(*index.shape[:-1], count, width).expand(*picked.shape)
    where = torch.gather(windows, -1, arg.unsqueeze(-1)).squeeze(-1)
    lead = list(x.shape[:x.dim() - dims])
    return best.reshape(*lead, *outs), where.reshape(*lead, *outs)


def fractional_starts(samples: torch.Tensor, length: int, out: int, pool: int) -> torch.Tensor:
    """The window starts [*planes, out] along an axis of `length` pooled by `pool` to `out`, from one uniform sample
    u per plane ([*planes]), as ATen's generate_intervals: ⌊(i + u)·α⌋ − ⌊u·α⌋ with α = (length − pool)/(out − 1)
    in the sample's dtype, the last window at length − pool."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    last = torch.full((*samples.shape, 1), length - pool, dtype=torch.int64)
    if out == 1:
        return last
    dtype = np.float64 if samples.dtype == torch.float64 else np.float32
    alpha = constant(np.asarray(dtype(length - pool) / dtype(out - 1)), samples.dtype)
    steps = constant(np.arange(out - 1, dtype=dtype), samples.dtype)
    u = samples.unsqueeze(-1)
    starts = torch.floor((steps + u) * alpha) - torch.floor(u * alpha)
    return torch.cat([starts.to(torch.int64), last.expand(*samples.shape, 1)], dim=-1)


def _product(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
