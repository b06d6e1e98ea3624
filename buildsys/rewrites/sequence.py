"""The `diff` and `roll` rewrites: torch.diff as slices and a subtraction, torch.roll as slices and a concatenation.

Both are index shuffles, and slices, sub and cat are in every converter. Measured here
(benchmarks/rewrite_matrix.py --ops): the legacy ONNX exporter ("Exporting the operator 'aten::diff' to
ONNX opset version 17 is not supported", and so onnx2tf after it) and coremltools' trace frontend
("PyTorch convert function for op 'diff' not implemented") refuse aten::diff; every converter here takes
aten::roll, which the rewrite removes for those that do not (older ones, other backends). Equivalence: tests/rewrites/test_rewrites.py (exact: no arithmetic beyond the subtraction itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch


def _along(dim: int, ndim: int, index: slice) -> tuple[slice, ...]:
    """An index that applies `index` on dimension `dim` of an `ndim`-D tensor."""
    dim = dim % ndim
    return (slice(None),) * dim + (index,)


def diff(input: torch.Tensor, n: int = 1, dim: int = -1, prepend: torch.Tensor | None = None,
         append: torch.Tensor | None = None, *, out: object = None) -> torch.Tensor:
    """torch.diff: the n-th forward difference along `dim` (logical xor for bool, as torch)."""
    import torch

    if out is not None:
        raise RewriteNotApplicable("diff", "torch.diff", "the out= argument")
    if n < 0:
        raise RuntimeError(f"order must be non-negative but got {n}")
    x = input
    pieces = [t for t in (prepend, x, append) if t is not None]
    if len(pieces) > 1:
        x = torch.cat(pieces, dim=dim)
    for _ in range(n):
        later, earlier = x[_along(dim, x.dim(), slice(1, None))], x[_along(dim, x.dim(), slice(None, -1))]
        x = torch.logical_xor(later, earlier) if x.dtype == torch.bool else later - earlier
    return x


def roll(input: torch.Tensor, shifts: int | Sequence[int], dims: int | Sequence[int] | None = None) -> torch.Tensor:
    """torch.roll: elements shifted along each dim and wrapped around; flattened when dims is None."""
    import torch

    shift_list = [shifts] if isinstance(shifts, int) else list(shifts)
    if dims is None:
        if len(shift_list) != 1:
            raise RuntimeError(f"roll: shifts must be a single int when dims is not given, got {shift_list}")
        return roll(input.flatten(), shift_list, [0]).view(input.shape)
    dim_list = [dims] if isinstance(dims, int) else list(dims)
    if len(shift_list) != len(dim_list):
        raise RuntimeError(f"shifts and dimensions must align. shifts: {len(shift_list)}, dims:{len(dim_list)}")
    x = input
    for shift, dim in zip(shift_list, dim_list):
        size = x.shape[dim]
        if not isinstance(size, torch.SymInt):  # an int, or a traced size under jit.trace: wrap |shift| ≥ size
            shift = shift % int(size) if int(size) else 0
        # a dynamic (torch.export) size: the slices are right for |shift| < size, as a shifted window is
        if shift == 0:
            continue
        tail, head = x[_along(dim, x.dim(), slice(-shift, None))], x[_along(dim, x.dim(), slice(None, -shift))]
        x = torch.cat([tail, head], dim=dim)
    return x


def _diff_handlers() -> HandlerTable:
    import torch

    return {torch.diff: diff, torch.Tensor.diff: diff}


def _roll_handlers() -> HandlerTable:
    import torch

    return {torch.roll: roll, torch.Tensor.roll: roll}


REWRITES = (
    Rewrite(name="diff", version=1, removes=("aten::diff",),
            description="torch.diff (any n, dim, prepend, append) as slices and a subtraction",
            handlers=_diff_handlers),
    Rewrite(name="roll", version=1, removes=("aten::roll",),
            description="torch.roll (shifts, dims, or flattened) as two slices and a concatenation per dim",
            handlers=_roll_handlers),
)
