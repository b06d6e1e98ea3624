"""Triangular solves for the linear-algebra family (buildsys/rewrites/linalg.py): torch.triangular_solve /
Tensor.triangular_solve, linalg.solve_triangular, cholesky_solve / Tensor.cholesky_solve and cholesky_inverse /
Tensor.cholesky_inverse of real triangles [..., n, n] with n ≤ rotations.MAX_SIZE (static).

Each is forward or back substitution unrolled over n, one row of X per step (lu.py's `_substitute`): the row is divided
by the diagonal entry (not with unitriangular: the diagonal is never read) and eliminated from the rows after it by a
rank-1 update with the triangle's column, masked to the strict triangle by a constant. Only the triangle torch reads
is read; the other may hold anything. A transposed triangle (transpose=True, left=False as Aᵀ Xᵀ = Bᵀ, the second
half of cholesky_solve) is substituted as the opposite triangle of Aᵀ. Batch dimensions broadcast as torch's.
cholesky_solve(B, L) is L⁻ᵀ(L⁻¹B) (U⁻¹(U⁻ᵀB) with upper); cholesky_inverse(L) is MᵀM with M = L⁻¹ (M Mᵀ with
M = U⁻¹), L⁻¹ by substitution against a constant identity. triangular_solve returns (X, A): its cloned_coefficient
is A itself (both triangles, as torch's), broadcast to the batch.

A zero on the diagonal divides by zero: inf / NaN where LAPACK's trtrs would report singularity. Refused: n > MAX_SIZE,
a dynamic n, complex, out=. Why a rewrite: triangular_solve, linalg_solve_triangular, cholesky_solve and
cholesky_inverse are LAPACK calls (not core ATen); the legacy ONNX exporter refuses all four at opset 18 (measured),
Core ML has no conversion for them. Equivalence: tests/rewrites/test_rewrite_families_linalg.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, by_name, refuse_out, returned
from buildsys.rewrites.householder import _identity
from buildsys.rewrites.lu import _substitute
from buildsys.rewrites.matrices import square_size

if TYPE_CHECKING:
    import torch

#: The ops these functions remove (the linalg family's `removes` holds them).
REMOVES = ("aten::triangular_solve", "aten::linalg_solve_triangular", "aten::cholesky_solve",
           "aten::cholesky_inverse")


def _triangle(A: torch.Tensor, op: str, name: str) -> int:
    """n of the triangle A [..., n, n] (static, real float32 / float64, within the family's size)."""
    return square_size(A, op, name)


def _right_side(B: torch.Tensor, A: torch.Tensor, n: int, rows: int, op: str, name: str, equation: str) -> None:
    """Rejects, as torch would, a B [..., rows, p] that is not a real matrix of A's dtype with n rows (columns)."""
    from buildsys.rewrites.rotations import real_matrix

    real_matrix(B, op, name)
    if B.dtype != A.dtype:
        raise RuntimeError(f"{op}: Expected {name} and A to have the same dtype, but found {name} of type {B.dtype} "
                           f"and A of type {A.dtype} instead.")
    if int(B.shape[rows]) != n:
        raise RuntimeError(f"{op}: Incompatible shapes of A and {name} for the equation {equation} ({n}x{n} and "
                           f"{'x'.join(map(str, B.shape[-2:]))})")


def _solve(A: torch.Tensor, B: torch.Tensor, n: int, upper: bool, transpose: bool, unit: bool) -> torch.Tensor:
    """X with op(A) X = B, op(A) = Aᵀ with `transpose`: A's upper (lower) triangle read, its diagonal not with `unit`."""
    if transpose:  # Aᵀ of an upper triangle is a lower one, its entries read from A's upper triangle
        return _substitute(A.transpose(-2, -1), B, n, lower=upper, unit=unit)
    return _substitute(A, B, n, lower=not upper, unit=unit)


def triangular_solve(b: torch.Tensor, A: torch.Tensor, upper: bool = True, transpose: bool = False,
                     unitriangular: bool = False, *, out: object = None) -> Any:
    """torch.triangular_solve / Tensor.triangular_solve: (X with op(A) X = b, A broadcast to X's batch)."""
    import torch

    op = "torch.triangular_solve"
    refuse_out("linalg", op, out)
    n = _triangle(A, op, "A")
    _right_side(b, A, n, -2, op, "b", "AX = b")
    X = _solve(A, b, n, upper, transpose, unitriangular)
    batch = tuple(X.shape[:-2])
    coefficient = A if tuple(A.shape[:-2]) == batch else A.expand(*batch, n, n)
    return returned("triangular_solve", (X, torch.clone(coefficient)))


def solve_triangular(A: torch.Tensor, B: torch.Tensor, *, upper: bool, left: bool = True,
                     unitriangular: bool = False, out: object = None) -> torch.Tensor:
    """torch.linalg.solve_triangular: X with A X = B, or X A = B with left=False (Aᵀ Xᵀ = Bᵀ)."""
    op = "torch.linalg.solve_triangular"
    refuse_out("linalg", op, out)
    n = _triangle(A, op, "A")
    _right_side(B, A, n, -2 if left else -1, op, "B", "AX = B" if left else "XA = B")
    if left:
        return _solve(A, B, n, upper, False, unitriangular)
    return _solve(A, B.transpose(-2, -1), n, upper, True, unitriangular).transpose(-2, -1)


def cholesky_solve(B: torch.Tensor, L: torch.Tensor, upper: bool = False, *, out: object = None) -> torch.Tensor:
    """torch.cholesky_solve / Tensor.cholesky_solve: X with L Lᵀ X = B (Uᵀ U X = B with upper)."""
    op = "torch.cholesky_solve"
    refuse_out("linalg", op, out)
    n = _triangle(L, op, "L")
    _right_side(B, L, n, -2, op, "B", "AX = B")
    Y = _solve(L, B, n, upper, transpose=upper, unit=False)  # L⁻¹B, or U⁻ᵀB
    return _solve(L, Y, n, upper, transpose=not upper, unit=False)  # L⁻ᵀY, or U⁻¹Y


def cholesky_inverse(L: torch.Tensor, upper: bool = False, *, out: object = None) -> torch.Tensor:
    """torch.cholesky_inverse / Tensor.cholesky_inverse: (L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹ ((Uᵀ U)⁻¹ = U⁻¹ U⁻ᵀ with upper)."""
    import torch

    op = "torch.cholesky_inverse"
    refuse_out("linalg", op, out)
    n = _triangle(L, op, "L")
    M = _solve(L, _identity(n, n, L.dtype), n, upper, transpose=False, unit=False)  # L⁻¹, or U⁻¹
    return torch.matmul(M, M.transpose(-2, -1)) if upper else torch.matmul(M.transpose(-2, -1), M)


def handlers() -> HandlerTable:
    """The functions this module replaces, for the linalg family's table."""
    import torch

    table = by_name({"triangular_solve": triangular_solve, "cholesky_solve": cholesky_solve,
                     "cholesky_inverse": cholesky_inverse}, (torch, torch.Tensor))
    table[torch.linalg.solve_triangular] = solve_triangular
    return table
