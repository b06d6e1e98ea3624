"""segment_reduce (a scatter-family function, buildsys/rewrites/scatter.py): reductions over consecutive segments
of one axis, the segments given by their lengths or offsets, as a membership mask at static sizes and a masked
reduction.

torch.segment_reduce(data, reduce, lengths= | offsets=, axis, unsafe, initial): `lengths` has the shape
data.shape[:axis] + (S,), `offsets` data.shape[:axis] + (S + 1,); the result has S in place of data's axis. The
mask [..., S, N] holds start_s ≤ n < end_s (starts and ends from a cumulative sum of the lengths, or the offsets
themselves), so the segments may be a constant or an input of the model. Reductions as torch's kernel computes
them (measured): sum = initial + Σ, prod = initial · Π, max / min also over initial, mean = (initial + Σ) / count;
an empty segment is initial, or else 0 (sum), 1 (prod), ∓inf (max / min), NaN (mean); NaN propagates.
Refused: `indices` (torch itself does not support it), integer data (the empty-segment fills are float).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import RewriteNotApplicable

if TYPE_CHECKING:
    import torch

_OP = "torch.segment_reduce"
_EMPTY = {"sum": 0.0, "prod": 1.0, "max": float("-inf"), "min": float("inf"), "mean": float("nan")}


def segment_reduce(data: torch.Tensor, reduce: str, *, lengths: torch.Tensor | None = None,
                   indices: torch.Tensor | None = None, offsets: torch.Tensor | None = None, axis: int = 0,
                   unsafe: bool = False, initial: Any = None) -> torch.Tensor:
    """torch.segment_reduce over static sizes (see the module docstring)."""
    import torch

    if indices is not None:
        raise RewriteNotApplicable("scatter", _OP, "indices= (torch.segment_reduce does not support it either)")
    if not data.is_floating_point():
        raise RewriteNotApplicable("scatter", _OP, f"{data.dtype} data (empty segments are filled with floats)")
    if reduce not in _EMPTY:
        raise RuntimeError(f"segment_reduce: unsupported reduction {reduce!r}")
    axis = axis % data.dim()
    if offsets is not None:
        starts, ends = offsets[..., :-1], offsets[..., 1:]
    elif lengths is not None:
        ends = torch.cumsum(lengths, dim=-1)
        starts = ends - lengths
    else:
        raise RuntimeError("segment_reduce: lengths or offsets must be given")
    positions = torch.arange(data.shape[axis], dtype=starts.dtype)
    mask = (positions >= starts[..., None]) & (positions < ends[..., None])           # [*pre, S, N]
    tail = data.dim() - axis - 1
    mask = mask.reshape(*mask.shape, *([1] * tail))                                      # [*pre, S, N, *1]
    values = data.unsqueeze(axis)                                                       # [*pre, 1, N, *post]
    over = axis + 1
    if reduce in ("sum", "mean"):
        out = torch.where(mask, values, torch.zeros((), dtype=data.dtype)).sum(dim=over)
    elif reduce == "prod":
        out = torch.where(mask, values, torch.ones((), dtype=data.dtype)).prod(dim=over)
    else:
        fill = torch.full((), _EMPTY[reduce], dtype=data.dtype)
        out = torch.where(mask, values, fill)
        out = out.amax(dim=over) if reduce == "max" else out.amin(dim=over)
    if reduce == "mean":
        count = (ends - starts).to(data.dtype).reshape(*ends.shape, *([1] * tail))
        total = out if initial is None else out + initial
        empty = torch.full((), _EMPTY["mean"] if initial is None else float(initial), dtype=data.dtype)
        return torch.where(count > 0, total / torch.clamp(count, min=1.0), empty)
    if initial is None:
        return out
    if reduce == "sum":
        return out + initial
    if reduce == "prod":
        return out * initial
    bound = torch.full((), float(initial), dtype=data.dtype)
    return torch.maximum(out, bound) if reduce == "max" else torch.minimum(out, bound)
