"""torch.histogram and torch.histogramdd as comparisons and a one-hot outer product, for the order family.

Edges: given tensors are used as they are (sorted, as torch requires); `bins` counts take the outer edges from
`range`, else from each dimension's minimum and maximum of the data (inside the graph: amin / amax), an empty range
widened by ±0.5 as torch's select_outer_bin_edges, then torch's linspace (`precise.spaced`, its scalar path:
start + i·step below the middle, end − (n − 1 − i)·step from it; its vectorised path can round an inner edge one
ulp apart). A point's bin in each dimension is the count of edges ≤ its value, less one (std::upper_bound, which
torch's local search ends in), the rightmost bin closed; a point outside [first, last] edge in any dimension, or NaN, is not counted. The histogram sums
one-hot rows [N, bins_d] combined as an outer product over the dimensions ([N, b₁, …, b_D], each point's weight or
1); density divides by the total, then by each dimension's bin lengths, as torch does.

Why a rewrite: histogramdd is _histogramdd_bin_edges and _histogramdd_from_bin_cts (or _tensors), histogram one ATen
op, none in core ATen and none with an exporter (measured on the third op sample: six targets refused it).
Cost: N·Π bins_d values, so it refuses more than MAX_CELLS of them.
"""

from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING, Any, Sequence

from buildsys.rewrites.base import RewriteNotApplicable, refuse_out, returned
from buildsys.rewrites.precise import spaced

if TYPE_CHECKING:
    import torch

#: The most points × histogram cells the one-hot outer product may hold.
MAX_CELLS = 1 << 22


def _edges(points: torch.Tensor, bins: Any, bounds: Sequence[float] | None, op: str) -> list[torch.Tensor]:
    """Each dimension's bin edges, as torch's _histogramdd_bin_edges (or the given edge tensors)."""
    import torch

    dims = int(points.shape[-1])
    if isinstance(bins, torch.Tensor):
        bins = [bins]
    if isinstance(bins, int):
        bins = [bins] * dims
    if len(bins) != dims:
        raise RuntimeError(f"{op}: expected {dims} sequences of bin edges for each dimension, but got {len(bins)}")
    if all(isinstance(b, torch.Tensor) for b in bins):
        return [b.to(points.dtype) for b in bins]
    if not all(isinstance(b, int) for b in bins):
        raise RewriteNotApplicable("order", op, "bins mixing counts and edge tensors")
    if any(b <= 0 for b in bins):
        raise RuntimeError(f"{op}: number of bins must be positive, but got {list(bins)}")
    edges = []
    for d, count in enumerate(bins):
        # [1], not 0-d: the legacy ONNX exporter casts a 0-d float64 tensor meeting a Python number to float32
        if bounds is not None:
            low = torch.full((1,), float(bounds[2 * d]), dtype=points.dtype)
            high = torch.full((1,), float(bounds[2 * d + 1]), dtype=points.dtype)
        else:
            column = points[:, d]
            low, high = column.amin(0, keepdim=True), column.amax(0, keepdim=True)
        empty = low == high  # numpy's and torch's widening of an empty range
        low, high = torch.where(empty, low - 0.5, low), torch.where(empty, high + 0.5, high)
        edges.append(spaced(low, high, count + 1, points.dtype))
    return edges


def _histogram(points: torch.Tensor, bins: Any, bounds: Sequence[float] | None, weight: torch.Tensor | None,
               density: bool, op: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(hist [b₁, …, b_D], edges) of points [N, D]."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    if not points.is_floating_point():
        raise RuntimeError(f"{op}: torch.histogramdd: input tensor and bins tensors should have the same dtype")
    edges = _edges(points, bins, bounds, op)
    counts = [int(e.shape[0]) - 1 for e in edges]
    if int(points.shape[0]) * prod(counts) > MAX_CELLS:
        raise RewriteNotApplicable("order", op, f"{int(points.shape[0])} points × {prod(counts)} cells is above "
                                                f"{MAX_CELLS} (the one-hot product grows with both)")
    mass = points.new_ones(points.shape[:1]) if weight is None else weight.reshape(-1).to(points.dtype)
    hist = None  # [N, b₁, …, b_d]: 1 where the point falls in that cell (0 outside, in any dimension)
    for d, (e, count) in enumerate(zip(edges, counts)):
        x = points[:, d:d + 1]  # [N, 1]
        inside = torch.logical_and(x >= e[:1], x <= e[-1:])  # NaN compares false: not counted
        position = torch.clamp((x >= e).to(torch.int64).sum(-1, keepdim=True) - 1, max=count - 1)
        numbers = constant(np.asarray(list(range(count)), dtype=np.int64))
        hits = torch.logical_and(position == numbers, inside).to(points.dtype)  # [N, count]
        hist = hits if hist is None else (hist.unsqueeze(-1) * hits.reshape(hits.shape[0], *[1] * d, count))
    assert hist is not None
    result = (hist * mass.reshape(-1, *[1] * len(counts))).sum(0)
    if density:
        result = result / result.sum()
        for d, e in enumerate(edges):
            shape = [1] * len(counts)
            shape[d] = counts[d]
            result = result / (e[1:] - e[:-1]).reshape(shape)
    return result, edges


def histogramdd(input: torch.Tensor, bins: Any = 10, *, range: Sequence[float] | None = None,
                weight: torch.Tensor | None = None, density: bool = False, out: object = None) -> Any:
    """torch.histogramdd: points [..., D] (the leading dims flattened), bins an int, one per dimension, or edges."""
    op = "torch.histogramdd"
    refuse_out("order", op, out)
    points = input.reshape(-1, int(input.shape[-1]))
    hist, edges = _histogram(points, bins, range, weight, density, op)
    return returned("histogramdd", (hist, edges))


def histogram(input: torch.Tensor, bins: Any = 100, *, range: Sequence[float] | None = None,
              weight: torch.Tensor | None = None, density: bool = False, out: object = None) -> Any:
    """torch.histogram / Tensor.histogram: histogramdd of the flattened input as one dimension."""
    op = "torch.histogram"
    refuse_out("order", op, out)
    hist, edges = _histogram(input.reshape(-1, 1), bins, range, weight, density, op)
    return returned("histogram", (hist, edges[0]))
