"""The order-statistics family: sort, argsort, msort, kthvalue, median, nanmedian, searchsorted, bucketize and histc
by comparisons and sums, without a sort.

- sort / argsort / msort along a dim of static length n: every element's rank (below), then output position k
  takes the element of rank k (a one-hot mask summed): torch's order, NaN last (first when descending), equal
  values by position, as its stable sort.
- kthvalue / median / nanmedian along a dim of static length n: every element's rank among its row, counted
  pairwise ([..., n, n] comparisons: the elements below it, then the equal ones before it, NaN above every
  number as torch's sort puts it), then the value and index of the element whose rank is the k-th: a masked sum.
  median takes rank (n − 1) // 2 and is NaN where the row holds a NaN; nanmedian takes rank (c − 1) // 2 of the
  c numbers in the row (NaN where c = 0). Without a dim, over the flattened input (the value alone).
- quantile / nanquantile (q a number or a tensor, every dim, keepdim, the five interpolations): the ranks as
  above, then the elements of rank ⌊q·(c − 1)⌋ and ⌈q·(c − 1)⌉ interpolated as torch's kernel does; torch sorts
  inside its C++ kernel, so the family's sort never sees that call.
- searchsorted / bucketize: the count of boundaries below each value (`<`; `<=` with right=True or
  side='right'), per row for an N-d sorted sequence; a `sorter` gathers the sequence first.
- histc(bins, min, max): each element's bin, floor((x − min) / (max − min) · bins) with x = max in the last
  bin, counted against the constant bin numbers; min = max takes the data's range (± 1 when it is one value).
- histogram / histogramdd (bins counts or edges, range, weight, density): buildsys/rewrites/histograms.py.
- mode along a dim of static length n: each element's count of equals (n² comparisons), the smallest of the most
  frequent values, the index of its last occurrence (torch's kernel).
Cost: n² comparisons per row for the rank statistics, so they refuse n above MAX_LENGTH.

Why a rewrite and not a decomposition: PyTorch's tables have none for sort, argsort, kthvalue, median, nanmedian,
searchsorted, bucketize, histc or quantile (ExecuTorch's runtime has no sort kernel XNNPACK takes; litert-torch's sort
comparator refuses int64 indices); the legacy ONNX exporter refuses all but bucketize and histc at opset 18,
ExecuTorch all (not core ATen), coremltools all but searchsorted on one-row sequences, onnx2tf bucketize's
ONNX (measured: benchmarks/op_matrix.py). Equivalence: tests/rewrites/test_rewrite_families_order.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name, refuse_out
from buildsys.rewrites.histograms import histogram, histogramdd

if TYPE_CHECKING:
    import torch

#: The longest row the rank statistics rewrite (n² comparisons per row).
MAX_LENGTH = 1024



def _ranks(rows: torch.Tensor, descending: bool = False) -> torch.Tensor:
    """The rank of each element of the last dim [..., n] in torch's sort order (NaN last, ties by position;
    `descending`: NaN first, larger before smaller, ties still by position, as torch's stable sort)."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    n = rows.shape[-1]
    mine, other = rows.unsqueeze(-1), rows.unsqueeze(-2)  # [..., i, 1], [..., 1, j]
    mine_nan, other_nan = mine != mine, other != other  # x != x, not isnan: coremltools has no isnan
    # logical_or / logical_and, not | and &: coremltools' trace frontend has no aten::__or__
    if descending:  # j goes before i: larger, or a NaN before a number
        below = torch.logical_or(other > mine, torch.logical_and(other_nan, torch.logical_not(mine_nan)))
    else:
        below = torch.logical_or(other < mine, torch.logical_and(mine_nan, torch.logical_not(other_nan)))
    equal = torch.logical_or(other == mine, torch.logical_and(mine_nan, other_nan))
    before = constant(np.arange(n)[None, :] < np.arange(n)[:, None])  # j < i
    return torch.logical_or(below, torch.logical_and(equal, before)).to(torch.int64).sum(-1)


def _select(rows: torch.Tensor, rank: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, index) of the element of each row [..., n] whose rank is `rank` ([..., 1] or a scalar)."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    hit = _ranks(rows) == rank
    positions = constant(np.arange(rows.shape[-1], dtype=np.int64))
    value = torch.where(hit, rows, torch.zeros_like(rows)).sum(-1)
    return value, torch.where(hit, positions, torch.zeros_like(positions)).sum(-1)


def _rows(input: torch.Tensor, dim: int | None, op: str) -> tuple[torch.Tensor, int | None]:
    """The input with the reduced dim last (flattened when dim is None), and that dim (≥ 0, or None)."""
    from buildsys.rewrites.mechanism import static_size, to_last

    if dim is None:
        rows = input.reshape(-1)
    elif input.dim() == 0:
        raise RewriteNotApplicable("order", op, "a 0-d input with a dim")
    else:
        dim = dim % input.dim()
        rows = to_last(input, dim)
    if static_size(rows, -1, "order", op) > MAX_LENGTH:
        raise RewriteNotApplicable("order", op, f"a row of {rows.shape[-1]} elements (more than {MAX_LENGTH}: "
                                   "the rank needs its square)")
    return rows, dim


def _result(name: str, value: torch.Tensor, index: torch.Tensor, input: torch.Tensor, dim: int | None,
            keepdim: bool) -> Any:
    import torch

    from buildsys.rewrites.mechanism import from_last

    if dim is None:
        return value
    if keepdim:
        value, index = from_last(value.unsqueeze(-1), dim), from_last(index.unsqueeze(-1), dim)
    return getattr(torch.return_types, name)((value, index))


def kthvalue(input: torch.Tensor, k: int, dim: int = -1, keepdim: bool = False, *, out: object = None) -> Any:
    refuse_out("order", "torch.kthvalue", out)
    rows, at = _rows(input, dim, "torch.kthvalue")
    if not 1 <= k <= rows.shape[-1]:
        raise RuntimeError(f"kthvalue(): selected number k out of range for dimension {dim}")
    value, index = _select(rows, k - 1)
    return _result("kthvalue", value, index, input, at, keepdim)


def median(input: torch.Tensor, dim: int | None = None, keepdim: bool = False, *, out: object = None) -> Any:
    import torch

    refuse_out("order", "torch.median", out)
    rows, at = _rows(input, dim, "torch.median")
    value, index = _select(rows, (rows.shape[-1] - 1) // 2)
    value = torch.where((rows != rows).any(-1), torch.full_like(value, float("nan")), value)
    return _result("median", value, index, input, at, keepdim)


def nanmedian(input: torch.Tensor, dim: int | None = None, keepdim: bool = False, *, out: object = None) -> Any:
    import torch

    refuse_out("order", "torch.nanmedian", out)
    rows, at = _rows(input, dim, "torch.nanmedian")
    numbers = (rows == rows).to(torch.int64).sum(-1, keepdim=True)
    value, index = _select(rows, torch.div(torch.clamp(numbers - 1, min=0), 2, rounding_mode="floor"))
    value = torch.where(numbers.squeeze(-1) == 0, torch.full_like(value, float("nan")), value)
    return _result("nanmedian", value, index, input, at, keepdim)


def mode(input: torch.Tensor, dim: int = -1, keepdim: bool = False, *, out: object = None) -> Any:
    """torch.mode: the most frequent value along dim (the smallest of equally frequent ones) and the index of its
    last occurrence, as torch's kernel returns them, from pairwise equalities of the row."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    refuse_out("order", "torch.mode", out)
    rows, at = _rows(input, dim, "torch.mode")
    counts = (rows.unsqueeze(-1) == rows.unsqueeze(-2)).to(torch.int64).sum(-1)
    frequent = counts == counts.amax(-1, keepdim=True)
    top = torch.finfo(rows.dtype).max if rows.is_floating_point() else torch.iinfo(rows.dtype).max
    value = torch.where(frequent, rows, torch.full_like(rows, top)).amin(-1)
    positions = constant(np.arange(int(rows.shape[-1]), dtype=np.int64))
    index = torch.where(rows == value.unsqueeze(-1), positions, torch.full_like(positions, -1)).amax(-1)
    return _result("mode", value, index, input, at, keepdim)


def _sorted(input: torch.Tensor, dim: int, descending: bool, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of `input` sorted along `dim`: each element's rank, then every output position k takes
    the element whose rank is k (a one-hot [..., n, n] mask summed; where, not a product, so a NaN stays put)."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant, from_last

    if input.dim() == 0:
        return input.clone(), torch.zeros_like(input, dtype=torch.int64)
    rows, at = _rows(input, dim, op)
    n = rows.shape[-1]
    hit = _ranks(rows, descending).unsqueeze(-1) == constant(np.arange(n, dtype=np.int64))  # [..., i, k]
    values = torch.where(hit, rows.unsqueeze(-1), torch.zeros_like(rows).unsqueeze(-1)).sum(-2)
    positions = constant(np.arange(n, dtype=np.int64)[:, None])  # i, down the rows of the mask
    indices = torch.where(hit, positions, torch.zeros_like(positions)).sum(-2)
    return from_last(values, at), from_last(indices, at)  # type: ignore[arg-type]


def sort(input: torch.Tensor, dim: int = -1, descending: bool = False, *, stable: bool | None = False,
         out: object = None) -> Any:
    """torch.sort: stable whatever `stable` says, which torch's unstable sort may be too (equal values keep their
    order; an unstable sort may give their indices in another)."""
    import torch

    refuse_out("order", "torch.sort", out)
    values, indices = _sorted(input, dim, bool(descending), "torch.sort")
    return torch.return_types.sort((values, indices))


def argsort(input: torch.Tensor, dim: int = -1, descending: bool = False, *, stable: bool = False) -> torch.Tensor:
    return _sorted(input, dim, descending, "torch.argsort")[1]


def msort(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    refuse_out("order", "torch.msort", out)
    return _sorted(input, 0, False, "torch.msort")[0]


def _quantile(input: torch.Tensor, q: Any, dim: int | None, keepdim: bool, interpolation: str, ignore_nan: bool,
              op: str) -> torch.Tensor:
    """torch.quantile / nanquantile: each row's ranks once, then for every q the values of rank ⌊q·(c − 1)⌋ and
    ⌈q·(c − 1)⌉ (c: the row's length, or its count of numbers when NaN is ignored) interpolated as torch's kernel
    does (lerp's two forms), NaN where the row holds one (quantile) or holds no number (nanquantile). The q
    values lead the result's dims when q is a tensor with a dim, as torch returns them."""
    import torch

    if interpolation not in ("linear", "lower", "higher", "midpoint", "nearest"):
        raise RuntimeError(f"{op}() interpolation must be one of linear, lower, higher, midpoint or nearest. "
                           f"Got {interpolation}")
    rows, at = _rows(input, dim, op)  # [..., n]
    levels = torch.as_tensor(q, dtype=rows.dtype)
    one_level = levels.dim() == 0
    levels = levels.reshape(-1)  # [Q]
    ranks = _ranks(rows).unsqueeze(-2)  # [..., 1, n]: NaN ranked last, as torch's sort puts it
    numbers = (rows == rows).to(rows.dtype).sum(-1, keepdim=True) if ignore_nan else None  # [..., 1]
    last = torch.clamp(numbers - 1, min=0) if numbers is not None else rows.shape[-1] - 1
    position = levels * last  # [..., Q]
    lower, upper = torch.floor(position), torch.ceil(position)
    if interpolation == "nearest":
        lower = upper = torch.round(position)  # half to even, as torch's round
    elif interpolation == "lower":
        upper = lower
    elif interpolation == "higher":
        lower = upper

    def value_of(rank: torch.Tensor) -> torch.Tensor:  # [..., Q]: the element of that rank in each row
        hit = ranks == rank.to(torch.int64).unsqueeze(-1)
        return torch.where(hit, rows.unsqueeze(-2), torch.zeros_like(rows).unsqueeze(-2)).sum(-1)

    low, high = value_of(lower), value_of(upper)
    weight = position - lower if interpolation == "linear" else torch.full_like(position, 0.5)
    value = low if interpolation in ("lower", "higher", "nearest") else \
        torch.where(weight < 0.5, low + weight * (high - low), high - (high - low) * (1 - weight))
    empty = (numbers == 0) if numbers is not None else (rows != rows).any(-1, keepdim=True)
    value = torch.where(empty, torch.full_like(value, float("nan")), value)
    if keepdim:
        value = value.reshape([1] * input.dim() + [-1]) if at is None else value.unsqueeze(at)
    value = value.movedim(-1, 0)
    return value.squeeze(0) if one_level else value


def quantile(input: torch.Tensor, q: Any, dim: int | None = None, keepdim: bool = False, *,
             interpolation: str = "linear", out: object = None) -> torch.Tensor:
    refuse_out("order", "torch.quantile", out)
    return _quantile(input, q, dim, keepdim, interpolation, False, "torch.quantile")


def nanquantile(input: torch.Tensor, q: Any, dim: int | None = None, keepdim: bool = False, *,
                interpolation: str = "linear", out: object = None) -> torch.Tensor:
    refuse_out("order", "torch.nanquantile", out)
    return _quantile(input, q, dim, keepdim, interpolation, True, "torch.nanquantile")


def searchsorted(sorted_sequence: torch.Tensor, input: Any, *, out_int32: bool = False, right: bool = False,
                 side: str | None = None, sorter: torch.Tensor | None = None, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("order", "torch.searchsorted", out)
    values = torch.as_tensor(input, dtype=sorted_sequence.dtype)
    upper = right or side == "right"
    sequence = sorted_sequence if sorter is None else sorted_sequence.gather(-1, sorter)
    if sequence.dim() == 1:
        below = sequence <= values.unsqueeze(-1) if upper else sequence < values.unsqueeze(-1)
    else:
        below = (sequence.unsqueeze(-2) <= values.unsqueeze(-1) if upper
                 else sequence.unsqueeze(-2) < values.unsqueeze(-1))
    return below.to(torch.int64).sum(-1).to(torch.int32 if out_int32 else torch.int64)


def bucketize(input: Any, boundaries: torch.Tensor, *, out_int32: bool = False, right: bool = False,
              out: object = None) -> torch.Tensor:
    refuse_out("order", "torch.bucketize", out)
    return searchsorted(boundaries, input, out_int32=out_int32, right=right)


def histc(input: torch.Tensor, bins: int = 100, min: float = 0, max: float = 0, *, out: object = None) -> torch.Tensor:
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    refuse_out("order", "torch.histc", out)
    x = input.reshape(-1)
    # low and high [1], not 0-d: the legacy ONNX exporter casts a 0-d float64 tensor meeting a Python number to
    # float32 (a float64 minimum fell out of its own first bin)
    if min == max:  # the data's range; one value spans ±1, as torch's kernel does
        low, high = x.amin(0, keepdim=True), x.amax(0, keepdim=True)
        same = low == high
        low, high = torch.where(same, low - 1, low), torch.where(same, high + 1, high)
    else:
        low, high = torch.full((1,), float(min), dtype=x.dtype), torch.full((1,), float(max), dtype=x.dtype)
    inside = (x >= low) & (x <= high)
    position = torch.floor((x - low) / (high - low) * bins).to(torch.int64)
    position = torch.clamp(position, max=bins - 1)  # x = max counts in the last bin
    numbers = constant(np.arange(bins, dtype=np.int64))
    hits = (position.unsqueeze(-1) == numbers) & inside.unsqueeze(-1)
    return hits.to(x.dtype).sum(0)


def _handlers() -> HandlerTable:
    import torch

    return by_name({"kthvalue": kthvalue, "median": median, "nanmedian": nanmedian, "histc": histc,
                    "searchsorted": searchsorted, "bucketize": bucketize, "sort": sort, "argsort": argsort,
                    "msort": msort, "quantile": quantile, "nanquantile": nanquantile, "histogram": histogram,
                    "mode": mode},
                   (torch, torch.Tensor)) | {torch.histogramdd: histogramdd}


REWRITES = (
    Rewrite(
        name="order",
        version=6,  # 3: sort, argsort, msort; 4: quantile, nanquantile; 5: histogram, histogramdd (histograms.py),
        # histc's range [1] (float64 through the legacy ONNX exporter); 6: mode
        removes=("aten::kthvalue", "aten::median", "aten::nanmedian", "aten::searchsorted", "aten::bucketize",
                 "aten::histc", "aten::sort", "aten::argsort", "aten::msort", "aten::quantile", "aten::nanquantile",
                 "aten::histogram", "aten::histogramdd", "aten::_histogramdd_bin_edges",
                 "aten::_histogramdd_from_bin_cts", "aten::_histogramdd_from_bin_tensors", "aten::mode"),
        description="sort / argsort / msort, kthvalue / median / nanmedian / quantile / nanquantile by pairwise "
                    "ranks, searchsorted / "
                    "bucketize by counts of the boundaries below, histc by counts against constant bin numbers, "
                    "histogram / histogramdd by edge comparisons and a one-hot outer product, mode by pairwise "
                    "equalities",
        handlers=_handlers,
    ),
)
