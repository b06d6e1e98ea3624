"""The linear-algebra family: inverse, determinant, solve, Cholesky, symmetric eigendecomposition, singular values
of small square matrices [..., n, n] (n ≤ MAX_SIZE, static) and QR, unrolled into matmuls, where, argmax, sqrt.

- inv / inverse / inv_ex, det, slogdet / logdet, solve / solve_ex: Gauss-Jordan elimination on [A | B] with
  partial pivoting over the n columns. The pivot row is the argmax of |column| at or below the diagonal (the
  first of equals, as LAPACK's idamax), swapped in by the one-hot d = e_k − e_pivot (X ← X − d (dᵀX): the
  permutation I − ddᵀ as matmuls, no data-dependent indexing). inv solves against the identity; det is the
  product of the pivots (getrf's), negated per swap, 0 at a zero pivot as LAPACK; slogdet its sign and
  Σ log|pivot|; solve takes B a matrix or (a batch of) vectors, broadcast with A, and left=False as Aᵀ Xᵀ = Bᵀ.
  The _ex forms' info is getrf's (the first zero pivot, 1-based).
- cholesky / cholesky_ex / torch.cholesky (upper or not): the Cholesky recurrence one column per step,
  L[j:, j] = (A[j:, j] − L[j:, :j] L[j, :j]ᵀ) / L[j, j], reading the lower triangle (the upper one with
  upper=True, as potrf); info: the first column whose square is not positive.
- eigh / eigvalsh (UPLO 'L' or 'U'): cyclic Jacobi on the symmetric matrix of that triangle in round-robin
  order: per round ⌊n/2⌋ disjoint rotations at once as one orthogonal J (A ← JᵀAJ, V ← VJ), 6 to 10 sweeps
  by n; the eigenvalues put in ascending order by their pairwise ranks (a one-hot permutation matmul, no sort or
  topk). A V = V diag(w) with orthonormal V; the eigenvectors' signs need not be LAPACK's.
- svd / linalg.svd, svdvals (one-sided Jacobi on A itself, any m × n), and what torch computes from an SVD inside
  one ATen op the table would not see: matrix_rank, pinv / pinverse, matrix_norm / norm of ord 2, −2 and 'nuc',
  cond, lstsq (every driver): buildsys/rewrites/singular.py.
- geqrf, householder_product / orgqr, ormqr, qr (every mode) of any m × n: buildsys/rewrites/householder.py.
- lu_factor / lu_factor_ex / linalg.lu / torch.lu, lu_unpack, lu_solve (getrf's partial pivoting):
  buildsys/rewrites/lu.py.
- triangular_solve, linalg.solve_triangular (left or right, unitriangular), cholesky_solve, cholesky_inverse: forward
  / back substitution one row per step, reading only the triangle torch reads: buildsys/rewrites/triangular_solve.py.
- linalg.tensorinv, linalg.tensorsolve, matrix_power (composites of inv / solve inside C++, which the mode would not
  see): buildsys/rewrites/composites.py.

inv, solve and cholesky raise on a singular (not positive-definite) input; a graph cannot, so the rewrite returns
inf / NaN there (_ex's info is right). Refused: n > MAX_SIZE, a dynamic n, complex, out=, a vector B with left=False.

Why a rewrite and not a decomposition: PyTorch's tables lower these only to LAPACK calls (linalg_inv_ex,
_linalg_det, _linalg_slogdet, _linalg_solve_ex, linalg_cholesky_ex, _linalg_eigh, _linalg_svd), none in core ATen
(ExecuTorch refuses them); the legacy ONNX exporter refuses all but det at opset 18 (measured). Equivalence:
tests/rewrites/test_rewrite_families_linalg.py.
"""

from __future__ import annotations

from functools import reduce
from operator import mul
from typing import TYPE_CHECKING, Any

from buildsys.rewrites import composites, exponential, householder, ldl, lu, singular, triangular_solve
from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name, refuse_out, returned
from buildsys.rewrites.matrices import eliminate, invert, lapack_info, square_size, symmetric_eigen

if TYPE_CHECKING:
    import torch

_FAMILY = "linalg"


def inv(A: torch.Tensor, *, out: object = None) -> torch.Tensor:
    return invert(A, "torch.linalg.inv", out)[0]


def inv_ex(A: torch.Tensor, *, check_errors: bool = False, out: object = None) -> Any:
    return returned("linalg_inv_ex", invert(A, "torch.linalg.inv_ex", out))


def _sign_and_pivots(A: torch.Tensor, op: str, out: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the sign of the row permutation, the pivots) of A's elimination."""
    refuse_out(_FAMILY, op, out)
    n = square_size(A, op)
    _, pivots, kept = eliminate(A, None, n, safe=True)
    return reduce(mul, [2.0 * k - 1.0 for k in kept]), pivots


def det(A: torch.Tensor, *, out: object = None) -> torch.Tensor:
    sign, pivots = _sign_and_pivots(A, "torch.linalg.det", out)
    return sign * reduce(mul, pivots)


def _slogdet(A: torch.Tensor, op: str, out: object = None) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    sign, pivots = _sign_and_pivots(A, op, out)
    logabs = sum((torch.log(p.abs()) for p in pivots[1:]), torch.log(pivots[0].abs()))
    return sign * reduce(mul, [torch.sign(p) for p in pivots]), logabs


def linalg_slogdet(A: torch.Tensor, *, out: object = None) -> Any:
    return returned("linalg_slogdet", _slogdet(A, "torch.linalg.slogdet", out))


def slogdet(A: torch.Tensor, *, out: object = None) -> Any:
    return returned("slogdet", _slogdet(A, "torch.slogdet", out))


def logdet(A: torch.Tensor) -> torch.Tensor:
    import torch

    sign, logabs = _slogdet(A, "torch.logdet")
    return torch.where(sign < 0, torch.full_like(logabs, float("nan")), logabs)  # sign 0: logabs is −inf already


def _solve(A: torch.Tensor, B: torch.Tensor, left: bool, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    n = square_size(A, op)
    if not isinstance(B, torch.Tensor) or B.is_complex():
        raise RewriteNotApplicable(_FAMILY, op, "a complex (or non-tensor) B: only real matrices are rewritten")
    vector = B.dim() == 1 or (B.dim() == A.dim() - 1 and tuple(B.shape) == tuple(A.shape[:-1]))
    if vector and not left:
        raise RewriteNotApplicable(_FAMILY, op, "a vector B with left=False")
    if B.dtype != A.dtype:
        raise RuntimeError(f"{op}: Expected A and B to have the same dtype, but found A of type {A.dtype} "
                           f"and B of type {B.dtype} instead")
    rhs = B.unsqueeze(-1) if vector else (B if left else B.transpose(-2, -1))
    if rhs.shape[-2] != n:
        raise RuntimeError(f"{op}: Incompatible shapes of A and B for the equation "
                           f"{'AX = B' if left else 'XA = B'} ({n}x{n} and {'x'.join(map(str, B.shape[-2:]))})")
    X, pivots, _ = eliminate(A if left else A.transpose(-2, -1), rhs, n, safe=False)
    assert X is not None
    X = X.squeeze(-1) if vector else (X if left else X.transpose(-2, -1))
    return X, lapack_info([p == 0 for p in pivots])


def solve(A: torch.Tensor, B: torch.Tensor, *, left: bool = True, out: object = None) -> torch.Tensor:
    refuse_out(_FAMILY, "torch.linalg.solve", out)
    return _solve(A, B, left, "torch.linalg.solve")[0]


def solve_ex(A: torch.Tensor, B: torch.Tensor, *, left: bool = True, check_errors: bool = False,
             out: object = None) -> Any:
    refuse_out(_FAMILY, "torch.linalg.solve_ex", out)
    return returned("linalg_solve_ex", _solve(A, B, left, "torch.linalg.solve_ex"))


def _cholesky(A: torch.Tensor, upper: bool, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, or U = Lᵀ with upper; info) reading A's lower (upper) triangle."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    n = square_size(A, op)
    S = A.transpose(-2, -1) if upper else A
    columns: list[torch.Tensor] = []  # each [..., n, 1]
    bad = []
    for j in range(n):
        c = S[..., :, j:j + 1]
        if columns:
            done = torch.cat(columns, dim=-1)  # [..., n, j]
            c = c - torch.matmul(done, done[..., j:j + 1, :].transpose(-2, -1))
        square = c[..., j, 0]
        bad.append(torch.logical_not(square > 0))
        root = torch.sqrt(square)[..., None, None]
        at, after = constant(np.asarray([[i == j] for i in range(n)])), constant(np.asarray([[i > j] for i in range(n)]))
        columns.append(torch.where(at, root, torch.where(after, c / root, torch.zeros_like(c))))
    L = torch.cat(columns, dim=-1)
    return (L.transpose(-2, -1) if upper else L), lapack_info(bad)


def cholesky(A: torch.Tensor, upper: bool = False, *, out: object = None) -> torch.Tensor:
    refuse_out(_FAMILY, "torch.linalg.cholesky", out)
    return _cholesky(A, upper, "torch.linalg.cholesky")[0]


def cholesky_ex(A: torch.Tensor, *, upper: bool = False, check_errors: bool = False, out: object = None) -> Any:
    refuse_out(_FAMILY, "torch.linalg.cholesky_ex", out)
    return returned("linalg_cholesky_ex", _cholesky(A, upper, "torch.linalg.cholesky_ex"))


def eigh(A: torch.Tensor, UPLO: str = "L", *, out: object = None) -> Any:
    refuse_out(_FAMILY, "torch.linalg.eigh", out)
    return returned("linalg_eigh", symmetric_eigen(A, UPLO, True, "torch.linalg.eigh"))


def eigvalsh(A: torch.Tensor, UPLO: str = "L", *, out: object = None) -> torch.Tensor:
    refuse_out(_FAMILY, "torch.linalg.eigvalsh", out)
    return symmetric_eigen(A, UPLO, False, "torch.linalg.eigvalsh")[0]


def _handlers() -> HandlerTable:
    import torch

    table = by_name({"inv": inv, "inverse": inv, "inv_ex": inv_ex, "det": det, "logdet": logdet,
                     "solve": solve, "solve_ex": solve_ex, "cholesky": cholesky, "cholesky_ex": cholesky_ex,
                     "eigh": eigh, "eigvalsh": eigvalsh},
                    (torch.linalg, torch, torch.Tensor))
    table.update({torch.linalg.slogdet: linalg_slogdet, torch.slogdet: slogdet, torch.Tensor.slogdet: slogdet})
    table.update(householder.handlers())
    table.update(singular.handlers())
    table.update(lu.handlers())
    table.update(triangular_solve.handlers())
    table.update(composites.handlers())
    table.update(ldl.handlers())
    table.update(exponential.handlers())
    return table


REWRITES = (
    Rewrite(
        name="linalg",
        version=8,  # 2: the Householder QR functions; 3: svd with its vectors (one-sided Jacobi); 4: QR's graph of
        # constants (no diag_embed / alias / iota), svdvals by one-sided Jacobi, matrix_rank / pinv / spectral norms /
        # cond / lstsq, the LU functions; 5: triangular_solve / solve_triangular / cholesky_solve / cholesky_inverse;
        # 6: tensorinv, tensorsolve, matrix_power (composites.py); 7: ldl_factor(_ex), ldl_solve (ldl.py); 8: matrix_exp
        removes=("aten::linalg_inv", "aten::linalg_inv_ex", "aten::inverse", "aten::linalg_det", "aten::_linalg_det",
                 "aten::det", "aten::linalg_slogdet", "aten::_linalg_slogdet", "aten::slogdet", "aten::logdet",
                 "aten::linalg_solve", "aten::linalg_solve_ex", "aten::_linalg_solve_ex", "aten::linalg_cholesky",
                 "aten::linalg_cholesky_ex", "aten::cholesky", "aten::linalg_eigh", "aten::linalg_eigvalsh",
                 "aten::_linalg_eigh", "aten::linalg_svdvals", "aten::_linalg_svd") + householder.REMOVES
        + singular.REMOVES + lu.REMOVES + triangular_solve.REMOVES + composites.REMOVES + ldl.REMOVES + exponential.REMOVES,
        description="inv / det / slogdet / logdet / solve (Gauss-Jordan, one-hot pivoting), cholesky, eigh / eigvalsh "
                    "(parallel Jacobi), svd / svdvals (one-sided Jacobi) and matrix_rank / pinv / spectral norms / "
                    "cond / lstsq from it, LU (getrf's pivoting) / lu_unpack / lu_solve of n ≤ 16 matrices; QR "
                    "(Householder, as LAPACK); tensorinv / tensorsolve / matrix_power from them; LDLᵀ (Bunch-Kaufman, "
                    "as sytrf) and its solve; matrix_exp (scaling and squaring); unrolled",
        handlers=_handlers,
    ),
)
