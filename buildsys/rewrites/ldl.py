"""LDLᵀ with Bunch-Kaufman pivoting for the linear-algebra family (buildsys/rewrites/linalg.py): linalg.ldl_factor,
linalg.ldl_factor_ex and linalg.ldl_solve of real symmetric matrices [..., n, n], n ≤ rotations.MAX_SIZE (static),
unrolled one column per step as LAPACK's dsytf2 (lower) and dsytrs compute them, so LD, the 1-based int32 pivots
(negative for a 2 × 2 block) and info are LAPACK's.

Step k of the factorisation: α = (1 + √17)/8; the column's largest |a_ik| below the diagonal (the first, as idamax)
at row r, the largest off-diagonal |a_rj| of row r in the trailing block; a 1 × 1 pivot at k where |a_kk| ≥ α·colmax
or |a_kk|·rowmax ≥ α·colmax², a 1 × 1 pivot at r where |a_rr| ≥ α·rowmax, else a 2 × 2 pivot (k, r) with r moved to
k + 1. The pivot's rows and columns are exchanged in the trailing block only (the columns of L already made keep
their rows, as dsytf2's swaps do), by a 0/1 permutation matrix (exact); then the trailing block takes dsytf2's rank-1
or rank-2 update, entry by entry in LAPACK's order of operations, and the columns of L are written. Which step is a
block's second column depends on the data: a mask carried from step to step skips it. A zero column (info) is left
as it is. Every mask and index vector is a constant built from the static size.

ldl_solve runs dsytrs: the pivots given (data) decide the exchanges (one-hot row selections) and which steps are
2 × 2 blocks, forward through L·D, then back through Lᵀ. Refused: n > MAX_SIZE, a dynamic n, complex (hermitian is
then the same as symmetric), out=. Why a rewrite: PyTorch keeps linalg_ldl_factor_ex and linalg_ldl_solve as LAPACK
calls (not core ATen; no exporter or converter takes them), and no table decomposes them. Equivalence:
tests/rewrites/test_rewrite_families_ldl.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, RewriteNotApplicable, refuse_out, returned
from buildsys.rewrites.householder import _constant
from buildsys.rewrites.matrices import lapack_info, square_size

if TYPE_CHECKING:
    import torch

#: The ops these functions remove (the linalg family's `removes` holds them).
REMOVES = ("aten::linalg_ldl_factor", "aten::linalg_ldl_factor_ex", "aten::linalg_ldl_solve")
_FAMILY = "linalg"
_ALPHA = (1.0 + math.sqrt(17.0)) / 8.0


def _size(A: torch.Tensor, op: str) -> int:
    if A.is_complex():
        raise RewriteNotApplicable(_FAMILY, op, "a complex matrix")
    return square_size(A, op)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a where the batch mask [...] holds, else b (matrices [..., n, n] or vectors [..., n])."""
    import torch

    extra = a.dim() - mask.dim()
    return torch.where(mask.reshape(*mask.shape, *([1] * extra)), a, b)


def _swap(n: int, first: torch.Tensor, second: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The permutation matrix [..., n, n] exchanging rows first and second ([...] int64; I where they agree)."""
    import torch

    rows = _constant(list(range(n)), torch.int64)
    d = (first.unsqueeze(-1) == rows).to(dtype) - (second.unsqueeze(-1) == rows).to(dtype)
    return _constant([[float(i == j) for j in range(n)] for i in range(n)], dtype) - d.unsqueeze(-1) * d.unsqueeze(-2)


def factor(A: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dsytf2 (lower) of the symmetric A read from its lower triangle: (LD, pivots int32, info int32)."""
    import torch

    dtype = A.dtype
    rows = _constant(list(range(n)), torch.int64)
    lower = _constant([[i >= j for j in range(n)] for i in range(n)])
    A = torch.where(lower, A, torch.zeros_like(A))
    active = torch.ones(A.shape[:-2], dtype=torch.bool)
    carried = torch.zeros(A.shape[:-2], dtype=torch.int64)  # a 2 × 2 block's pivot, for its second column
    pivots, bad = [], []
    for k in range(n):
        S = torch.where(lower, A, A.transpose(-1, -2))  # the symmetric matrix the lower triangle stands for
        column = A.select(-1, k)
        absakk = column.select(-1, k).abs()
        below = _constant([i > k for i in range(n)])
        candidates = torch.where(below, column.abs(), _constant([-1.0] * n, dtype))
        r = candidates.argmax(dim=-1)  # the first of equal maxima, as idamax
        colmax = torch.clamp(candidates.amax(dim=-1), min=0.0)
        at_r = r.unsqueeze(-1) == rows
        row_r = torch.matmul(at_r.to(dtype).unsqueeze(-2), S).squeeze(-2)  # row r of S, exactly
        off = torch.logical_and(_constant([j >= k for j in range(n)]), torch.logical_not(at_r))
        rowmax = torch.where(off, row_r.abs(), _constant([-1.0] * n, dtype)).amax(dim=-1)
        arr = (row_r * at_r.to(dtype)).sum(-1).abs()
        zero = torch.logical_or(torch.maximum(absakk, colmax) == 0, torch.isnan(absakk))
        safe = torch.where(rowmax > 0, rowmax, torch.ones_like(rowmax))
        keep = zero | (absakk >= _ALPHA * colmax) | (absakk >= _ALPHA * colmax * (colmax / safe))
        two = active & ~keep & ~(arr >= _ALPHA * rowmax)
        kp = torch.where(active & ~keep, r, torch.full_like(r, k))
        kk = torch.where(two, torch.full_like(r, k + 1), torch.full_like(r, k))
        P = _swap(n, kk, kp, dtype)
        trailing = _constant([[i >= k and j >= k for j in range(n)] for i in range(n)])
        A = torch.where(trailing & lower, torch.matmul(torch.matmul(P, S), P), A)
        A = torch.where(lower, A, torch.zeros_like(A))
        one = active & ~zero & ~two
        if k < n - 1:
            A = _where(one, _rank_one(A, k, n), A)
        if k < n - 2:
            A = _where(two, _rank_two(A, k, n), A)
        own = torch.where(two, -(kp + 1), kp + 1)
        pivots.append(torch.where(active, own, carried))
        bad.append(active & zero)
        carried = -(kp + 1)
        active = ~two
    return A, torch.stack(pivots, dim=-1).to(torch.int32), lapack_info(bad)


def _rank_one(A: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """dsytf2's 1 × 1 step: A(i, j) += x_i·(−x_j/a_kk) for i ≥ j > k, then column k below the diagonal times 1/a_kk."""
    import torch

    d11 = 1.0 / A[..., k, k]
    below = _constant([float(i > k) for i in range(n)], A.dtype)
    x = A.select(-1, k) * below
    temp = -d11.unsqueeze(-1) * x
    region = _constant([[i >= j > k for j in range(n)] for i in range(n)])
    A = torch.where(region, A + x.unsqueeze(-1) * temp.unsqueeze(-2), A)
    column = _constant([[i > k and j == k for j in range(n)] for i in range(n)])
    return torch.where(column, A * d11.unsqueeze(-1).unsqueeze(-1), A)


def _rank_two(A: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """dsytf2's 2 × 2 step on columns k, k + 1, in LAPACK's order of operations."""
    import torch

    d21 = A[..., k + 1, k]
    d11 = A[..., k + 1, k + 1] / d21
    d22 = A[..., k, k] / d21
    t = 1.0 / (d11 * d22 - 1.0)
    d21 = (t / d21).unsqueeze(-1)
    below = _constant([float(i > k + 1) for i in range(n)], A.dtype)
    ak, ak1 = A.select(-1, k) * below, A.select(-1, k + 1) * below
    wk = d21 * (d11.unsqueeze(-1) * ak - ak1)
    wkp1 = d21 * (d22.unsqueeze(-1) * ak1 - ak)
    region = _constant([[i >= j > k + 1 for j in range(n)] for i in range(n)])
    updated = A - ak.unsqueeze(-1) * wk.unsqueeze(-2) - ak1.unsqueeze(-1) * wkp1.unsqueeze(-2)
    A = torch.where(region, updated, A)
    at_k = _constant([[i > k + 1 and j == k for j in range(n)] for i in range(n)])
    at_k1 = _constant([[i > k + 1 and j == k + 1 for j in range(n)] for i in range(n)])
    return torch.where(at_k, wk.unsqueeze(-1), torch.where(at_k1, wkp1.unsqueeze(-1), A))


def solve(LD: torch.Tensor, pivots: torch.Tensor, B: torch.Tensor, n: int) -> torch.Tensor:
    """dsytrs (lower): X with A X = B from dsytf2's LD and pivots (B [..., n, k])."""
    import torch

    dtype = B.dtype
    shape = torch.broadcast_shapes(LD.shape[:-2], pivots.shape[:-1], B.shape[:-2])
    LD = LD.expand(*shape, n, n)
    B = B.expand(*shape, *B.shape[-2:])
    piv = pivots.to(torch.int64).expand(*shape, n)
    starts, active = [], torch.ones(shape, dtype=torch.bool)
    for k in range(n):  # which steps begin a 2 × 2 block
        two = active & (piv[..., k] < 0)
        starts.append(two)
        active = ~two
    singles = [~starts[k] & ~(starts[k - 1] if k else torch.zeros_like(starts[k])) for k in range(n)]
    for k in range(n):  # L·D: exchanges, L's columns, D's blocks
        p = torch.where(piv[..., k] > 0, piv[..., k] - 1, -piv[..., k] - 1)
        one, two = singles[k], starts[k]
        single = torch.matmul(_swap(n, torch.full_like(p, k), p, dtype), B)
        single = _eliminate(single, LD, k, n)
        divided = single / LD[..., k, k].unsqueeze(-1).unsqueeze(-1)
        single = torch.where(_row(n, k), divided, single)
        B_next = _where(one, single, B)
        if k < n - 1:
            pair = torch.matmul(_swap(n, torch.full_like(p, k + 1), p, dtype), B)
            if k < n - 2:
                pair = _eliminate(_eliminate(pair, LD, k, n, start=k + 2), LD, k + 1, n)
            pair = _block(pair, LD, k)
            B_next = _where(two, pair, B_next)
        B = B_next
    for k in reversed(range(n)):  # Lᵀ: L's columns transposed, then the exchanges undone
        p = torch.where(piv[..., k] > 0, piv[..., k] - 1, -piv[..., k] - 1)
        single = _transposed(B, LD, k, k, n)
        B_next = _where(singles[k], torch.matmul(_swap(n, torch.full_like(p, k), p, dtype), single), B)
        if k > 0:
            pair = _transposed(_transposed(B, LD, k, k, n), LD, k - 1, k, n)
            B_next = _where(starts[k - 1], torch.matmul(_swap(n, torch.full_like(p, k), p, dtype), pair), B_next)
        B = B_next
    return B


def _row(n: int, k: int) -> torch.Tensor:
    return _constant([[i == k] for i in range(n)])


def _eliminate(B: torch.Tensor, LD: torch.Tensor, k: int, n: int, start: int | None = None) -> torch.Tensor:
    """dger: B(i, :) −= LD(i, k)·B(k, :) for i ≥ start (k + 1 by default)."""

    first = k + 1 if start is None else start
    column = LD.select(-1, k) * _constant([float(i >= first) for i in range(n)], LD.dtype)
    return B - column.unsqueeze(-1) * B[..., k:k + 1, :]


def _block(B: torch.Tensor, LD: torch.Tensor, k: int) -> torch.Tensor:
    """Rows k, k + 1 of B times the inverse of the 2 × 2 block of D at k, as dsytrs writes it."""
    import torch

    n = int(LD.shape[-1])
    akm1k = LD[..., k + 1, k].unsqueeze(-1)
    akm1 = LD[..., k, k].unsqueeze(-1) / akm1k
    ak = LD[..., k + 1, k + 1].unsqueeze(-1) / akm1k
    denom = akm1 * ak - 1.0
    bkm1, bk = B[..., k, :] / akm1k, B[..., k + 1, :] / akm1k
    first, second = (ak * bkm1 - bk) / denom, (akm1 * bk - bkm1) / denom
    return torch.where(_row(n, k), first.unsqueeze(-2), torch.where(_row(n, k + 1), second.unsqueeze(-2), B))


def _transposed(B: torch.Tensor, LD: torch.Tensor, column: int, after: int, n: int) -> torch.Tensor:
    """dgemv: B(column, :) −= Σ_{i > after} LD(i, column)·B(i, :)."""
    import torch

    weights = LD.select(-1, column) * _constant([float(i > after) for i in range(n)], LD.dtype)
    total = torch.matmul(weights.unsqueeze(-2), B)  # [..., 1, k]
    return torch.where(_row(n, column), B - total, B)


def ldl_factor_ex(A: torch.Tensor, *, hermitian: bool = False, check_errors: bool = False, out: Any = None) -> Any:
    refuse_out(_FAMILY, "torch.linalg.ldl_factor_ex", out)
    n = _size(A, "torch.linalg.ldl_factor_ex")
    return returned("linalg_ldl_factor_ex", factor(A, n))


def ldl_factor(A: torch.Tensor, *, hermitian: bool = False, out: Any = None) -> Any:
    refuse_out(_FAMILY, "torch.linalg.ldl_factor", out)
    n = _size(A, "torch.linalg.ldl_factor")
    LD, pivots, _ = factor(A, n)
    return returned("linalg_ldl_factor", (LD, pivots))


def ldl_solve(LD: torch.Tensor, pivots: torch.Tensor, B: torch.Tensor, *, hermitian: bool = False,
              out: Any = None) -> torch.Tensor:
    refuse_out(_FAMILY, "torch.linalg.ldl_solve", out)
    n = _size(LD, "torch.linalg.ldl_solve")
    return solve(LD, pivots, B, n)


def handlers() -> HandlerTable:
    import torch

    return {torch.linalg.ldl_factor: ldl_factor, torch.linalg.ldl_factor_ex: ldl_factor_ex,
            torch.linalg.ldl_solve: ldl_solve}
