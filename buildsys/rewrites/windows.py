"""Max pooling over windows named by their positions, with torch's indices: the pooling family's shared step for
the pools whose windows differ in size or depend on the input (adaptive max with return_indices, fractional max)
and max_pool with return_indices (strided, padded, dilated windows, cut at the input's edges).

A window of a d-D pool is the product of its axes' positions: along axis a, output o reads the input positions
`positions[a][..., o, k]` for k < K_a (a window shorter than K_a repeats its first position: the max is unchanged
and the argmax, the first maximal value, never lands on the repeat). The flat index of a position into the pooled
plane (∏ spatial sizes, row-major) is what torch's max pools return as indices. The values are gathered at those
flat indices (`index_select` of a constant when the windows are static, `gather` per plane when they depend on the
input), reduced by max over the window, and the argmax mapped back to its flat index. A window holding NaN gives
NaN (max propagates it) and, as torch's kernels, the flat index of its last NaN (scan order: row-major).
"""

from __future__ import annotations

from math import prod
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
    spatial plane, as torch's max pools return it. Outputs [..., O_1, …, O_d]. Every intermediate has rank ≤ 5
    (Core ML's limit): the planes are one axis, the axes' windows are combined two at a time."""
    import torch

    lead = [int(n) for n in x.shape[:x.dim() - dims]]
    spatial = [int(n) for n in x.shape[x.dim() - dims:]]
    planes = [int(n) for n in positions[0].shape[:-2]]
    index: torch.Tensor | None = None                                       # [(P,) O_0…O_a, K_0…K_a]
    for a, p in enumerate(positions):
        stride = prod(spatial[a + 1:])
        term = (p * stride).reshape(-1, *p.shape[-2:]) if planes else p * stride
        if index is None:
            index = term
            continue
        combined = index.unsqueeze(-1).unsqueeze(-3) + term.unsqueeze(-2).unsqueeze(-4)   # [(P,) O, O_a, K, K_a]
        index = combined.reshape(*index.shape[:-2], index.shape[-2] * term.shape[-2],
                                 index.shape[-1] * term.shape[-1])
    assert index is not None
    count, width = int(index.shape[-2]), int(index.shape[-1])
    if planes:  # windows per plane: x's leading dims are the planes
        values = x.reshape(-1, prod(spatial))                                    # [P, S]
        picked = torch.gather(values, -1, index.reshape(-1, count * width))
    else:  # static windows: one constant index for every plane
        picked = x.reshape(*lead, prod(spatial)).index_select(-1, index.reshape(count * width))
    picked = picked.reshape(*picked.shape[:-1], count, width)
    best, arg = picked.max(dim=-1)
    windows = index if planes else index.expand(*picked.shape)  # no Expand where the shapes agree: onnx2tf
    where = torch.gather(windows, -1, arg.unsqueeze(-1)).squeeze(-1)  # refuses a no-op one on a computed index
    # torch's kernels take a NaN over any value and a later NaN over an earlier one: the window's last NaN, the
    # one with the largest flat index (positions grow along each axis); -1 where the window has none
    last_nan = torch.where(torch.isnan(picked), windows, torch.full_like(windows, -1)).amax(-1)
    where = torch.where(last_nan >= 0, last_nan, where)
    sizes = [int(p.shape[-2]) for p in positions]
    return best.reshape(*lead, *sizes), where.reshape(*lead, *sizes)


def fractional_starts(samples: torch.Tensor, length: int, out: int, pool: int) -> torch.Tensor:
    """The window starts [*planes, out] along an axis of `length` pooled by `pool` to `out`, from one sample u per
    plane ([*planes], uniform in [0, 1) when torch draws it), as ATen's generate_intervals: int((i + u)·α) −
    int(u·α) with α = (length − pool)/(out − 1) in the sample's dtype, the last window at length − pool."""
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
    starts = _truncated((steps + u) * alpha) - _truncated(u * alpha)
    return torch.cat([starts.to(torch.int64), last], dim=-1)


def _truncated(x: torch.Tensor) -> torch.Tensor:
    """x rounded toward zero (C++'s static_cast<int>, which ATen uses: a sample outside [0, 1) makes it differ
    from floor), in floor / ceil / where, which every converter has."""
    import torch

    return torch.where(x >= 0, torch.floor(x), torch.ceil(x))
