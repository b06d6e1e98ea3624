"""The kernels the linear-algebra modules share (linalg.py, lu.py, singular.py, triangular_solve.py): the square
real matrix check, Gauss-Jordan elimination with partial pivoting, LAPACK's info, and the symmetric
eigendecomposition by parallel Jacobi. A leaf: linalg.py collects the family's table from its sibling modules, so
what they share lives here, below all of them (tests/meta/test_imports.py: no import cycle)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.rewrites.base import RewriteNotApplicable, refuse_out
from buildsys.rewrites.rotations import MAX_SIZE, ascending, eye, real_matrix, rotation, schedule, sweeps

if TYPE_CHECKING:
    import torch


def square_size(A: torch.Tensor, op: str, name: str = "A") -> int:
    """n for A [..., n, n] with n static, float32 / float64; refused or rejected as torch would."""
    import torch

    rows, cols = real_matrix(A, op, name)
    if rows != cols:
        raise RuntimeError(f"{op}: {name} must be batches of square matrices, but they are {rows} by {cols} matrices")
    if A.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: Low precision dtypes not supported. Got {A.dtype}")
    if rows > MAX_SIZE:
        raise RewriteNotApplicable("linalg", op, f"n = {rows} is above {MAX_SIZE} (the unrolled graph grows with n³)")
    if rows == 0:
        raise RewriteNotApplicable("linalg", op, "an empty 0 × 0 matrix")
    return rows


def eliminate(A: torch.Tensor, B: torch.Tensor | None, n: int, safe: bool
              ) -> tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor]]:
    """Gauss-Jordan with partial pivoting: (A⁻¹B or None, the pivots [...], per step 1.0 where no rows swapped).

    With `safe`, a zero pivot divides by one (its column is zero at and below the diagonal: nothing to eliminate),
    as getrf skips it; else by zero, so the result is inf / NaN where torch would raise."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    positions = constant(np.asarray(list(range(n)), dtype=np.int64))  # not np.arange: TorchDynamo traces it
    pivots, kept = [], []
    for k in range(n):
        below = A[..., k:, k].abs()
        chosen = (below.argmax(dim=-1, keepdim=True) + k == positions).to(A.dtype)  # [..., n], one-hot
        unit = constant(np.asarray([float(i == k) for i in range(n)]), A.dtype)
        d = (unit - chosen).unsqueeze(-1)  # [..., n, 1]: e_k − e_pivot, zero where the pivot is row k
        A = A - torch.matmul(d, torch.matmul(d.transpose(-2, -1), A))
        if B is not None:
            B = B - torch.matmul(d, torch.matmul(d.transpose(-2, -1), B))
        kept.append(chosen[..., k])
        pivot = A[..., k, k]
        pivots.append(pivot)
        divisor = (torch.where(pivot == 0, torch.ones_like(pivot), pivot) if safe else pivot)[..., None, None]
        factors = A[..., :, k:k + 1]  # [..., n, 1]
        is_k = constant(np.asarray([[i == k] for i in range(n)]))  # [n, 1]
        row = A[..., k:k + 1, :] / divisor
        A = torch.where(is_k, row, A - factors * row)
        if B is not None:
            row_b = B[..., k:k + 1, :] / divisor
            B = torch.where(is_k, row_b, B - factors * row_b)
    return B, pivots, kept


def lapack_info(bad: list[torch.Tensor]) -> torch.Tensor:
    """LAPACK's info: the first step (1-based) that is bad, 0 where none is; int32."""
    import torch

    info = torch.zeros_like(bad[0], dtype=torch.int32)
    for k, b in enumerate(bad):
        info = torch.where(torch.logical_and(info == 0, b), torch.full_like(info, k + 1), info)
    return info


def invert(A: torch.Tensor, op: str, out: object) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    from buildsys.rewrites.mechanism import constant

    refuse_out("linalg", op, out)
    n = square_size(A, op)
    result, pivots, _ = eliminate(A, constant(np.asarray(eye(n)), A.dtype), n, safe=False)
    assert result is not None
    return result, lapack_info([p == 0 for p in pivots])


def jacobi(A: torch.Tensor, n: int, vectors: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the diagonal after rotations.sweeps(n) parallel Jacobi sweeps [..., n], the accumulated rotations V) of
    symmetric A (rotations.py: each rotation zeroes A's (p, q))."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    diagonal = constant(np.asarray([i * n + i for i in range(n)], dtype=np.int64))
    if n == 1:
        return A.flatten(-2), (A * 0 + 1) if vectors else None
    steps = schedule(n, A.dtype)
    picks = [constant(np.asarray([p * n + p for p, _ in r.pairs] + [q * n + q for _, q in r.pairs]
                                 + [p * n + q for p, q in r.pairs], dtype=np.int64)) for r in steps]
    V = None
    for _ in range(sweeps(n)):
        for step, picked in zip(steps, picks):
            m = len(step.pairs)
            entries = A.flatten(-2).index_select(-1, picked)  # (p, p), (q, q), (p, q) of each pair
            J = rotation(step, entries[..., :m], entries[..., m:2 * m], entries[..., 2 * m:], n)
            A = torch.matmul(J.transpose(-2, -1), torch.matmul(A, J))
            if vectors:
                V = J if V is None else torch.matmul(V, J)
        A = 0.5 * (A + A.transpose(-2, -1))
    return A.flatten(-2).index_select(-1, diagonal), V


def symmetric(A: torch.Tensor, UPLO: str, n: int, op: str) -> torch.Tensor:
    """The symmetric matrix of A's lower ('L') or upper ('U') triangle, as torch.linalg.eigh reads it."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    if UPLO not in ("L", "U", "l", "u"):
        raise RuntimeError(f"{op}: Expected UPLO argument to be 'L' or 'U', but got {UPLO}")
    S = A if UPLO.upper() == "L" else A.transpose(-2, -1)
    low = torch.where(constant(np.asarray([[i >= j for j in range(n)] for i in range(n)])), S, torch.zeros_like(S))
    strict = torch.where(constant(np.asarray([[i > j for j in range(n)] for i in range(n)])), S, torch.zeros_like(S))
    return low + strict.transpose(-2, -1)


def symmetric_eigen(A: torch.Tensor, UPLO: str, vectors: bool, op: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    import torch

    n = square_size(A, op)
    w, V = jacobi(symmetric(A, UPLO, n, op), n, vectors)
    order = ascending(w, n)
    w = torch.matmul(w.unsqueeze(-2), order).squeeze(-2)
    return w, (torch.matmul(V, order) if V is not None else None)
