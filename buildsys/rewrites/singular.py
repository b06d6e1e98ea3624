"""The singular value decomposition with its vectors, for the linear-algebra family (buildsys/rewrites/linalg.py):
torch.linalg.svd and torch.svd / Tensor.svd of a real m × n matrix (min(m, n) ≤ rotations.MAX_SIZE, static).

One-sided Jacobi (Hestenes): the columns of X = A (Aᵀ when m < n, so X is tall) are rotated in pairs until they are
orthogonal, X ← XJ, V ← VJ, with the round-robin rounds and the rotation of linalg's symmetric Jacobi, each
rotation read from the Gram entries of the pair (‖x_p‖², ‖x_q‖², x_p·x_q). Rotating X itself, not its Gram
matrix, keeps the singular values' relative accuracy (svdvals' Gram route squares the condition number). Then
σ_i = ‖x_i‖, u_i = x_i / σ_i, ordered descending by a one-hot permutation.

Singular vectors are unique only up to a sign per pair (u_i, v_i) (and up to a rotation within a repeated σ):
these are a valid SVD, not LAPACK's choice of signs. PyTorch compares two implementations of the SVD the same
way (test_ops.py, test_compare_cpu: the sample's `output_process_fn_grad`, |U|, |V|, U Vᴴ). A zero singular
value has no vector to normalise (LAPACK completes the basis; here u_i is 0). `full_matrices=True` of a non-square
matrix needs that completion too and is refused; torch.svd's default (some=True) is the reduced form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import RewriteNotApplicable, refuse_out, returned
from buildsys.rewrites.rotations import MAX_SIZE, SWEEPS, ascending, eye, real_matrix, rotation, schedule

if TYPE_CHECKING:
    import torch

_FAMILY = "linalg"
#: The aten ops torch.linalg.svd and torch.svd lower to (svdvals' own are linalg.py's).
REMOVES = ("aten::linalg_svd", "aten::svd")


def _shape(A: torch.Tensor, op: str) -> tuple[int, int]:
    """(m, n) of A [..., m, n], static and real, min(m, n) within the family's size."""
    import torch

    m, n = real_matrix(A, op)
    if A.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: Low precision dtypes not supported. Got {A.dtype}")
    if min(m, n) > MAX_SIZE:
        raise RewriteNotApplicable(_FAMILY, op, f"min(m, n) = {min(m, n)} is above {MAX_SIZE} (the unrolled graph "
                                   "grows with n³)")
    if min(m, n) == 0:
        raise RewriteNotApplicable(_FAMILY, op, f"an empty {m} × {n} matrix")
    return m, n


def _orthogonalised(X: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(X J₁ J₂ …, J₁ J₂ …) after SWEEPS sweeps of one-sided Jacobi over X's k columns: each rotation is the one
    that zeroes the pair's entry of XᵀX (rotations.py), applied to X's columns."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    V = X.new_zeros(()) + constant(np.asarray(eye(k)), X.dtype)  # the batch's dtype and device
    steps = schedule(k, X.dtype)
    sides = [(constant(np.asarray([p for p, _ in r.pairs], dtype=np.int64)),
              constant(np.asarray([q for _, q in r.pairs], dtype=np.int64))) for r in steps]
    for _ in range(SWEEPS):
        for step, (left, right) in zip(steps, sides):
            xp, xq = X.index_select(-1, left), X.index_select(-1, right)
            J = rotation(step, (xp * xp).sum(-2), (xq * xq).sum(-2), (xp * xq).sum(-2), k)
            X, V = torch.matmul(X, J), torch.matmul(V, J)
    return X, V


def _svd(A: torch.Tensor, op: str, full_matrices: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U [..., m, k], S [..., k] descending, Vh [..., k, n]) with k = min(m, n)."""
    import torch

    m, n = _shape(A, op)
    if full_matrices and m != n:
        raise RewriteNotApplicable(_FAMILY, op, f"full_matrices=True of a {m} × {n} matrix: completing U or V to a "
                                   "square basis is not rewritten (full_matrices=False, or torch.svd's some=True, is)")
    tall = m >= n
    k = min(m, n)
    X, V = _orthogonalised(A if tall else A.transpose(-2, -1), k)
    S = torch.sqrt((X * X).sum(-2))
    U = X / torch.where(S == 0, torch.ones_like(S), S).unsqueeze(-2)
    order = ascending(-S, k)  # descending σ, ties in place
    S = torch.matmul(S.unsqueeze(-2), order).squeeze(-2)
    U, V = torch.matmul(U, order), torch.matmul(V, order)
    return (U, S, V.transpose(-2, -1)) if tall else (V, S, U.transpose(-2, -1))


def linalg_svd(A: torch.Tensor, full_matrices: bool = True, *, driver: str | None = None, out: object = None) -> Any:
    refuse_out(_FAMILY, "torch.linalg.svd", out)
    return returned("linalg_svd", _svd(A, "torch.linalg.svd", full_matrices))


def svd(A: torch.Tensor, some: bool = True, compute_uv: bool = True, *, out: object = None) -> Any:
    """torch.svd: V, not Vᴴ; with compute_uv=False, U [..., m, m] and V [..., n, n] zero-filled, as torch's."""

    refuse_out(_FAMILY, "torch.svd", out)
    U, S, Vh = _svd(A, "torch.svd", full_matrices=compute_uv and not some)
    if not compute_uv:
        m, n = A.shape[-2:]
        return returned("svd", (A.new_zeros((*A.shape[:-2], m, m)), S, A.new_zeros((*A.shape[:-2], n, n))))
    return returned("svd", (U, S, Vh.transpose(-2, -1)))


def handlers() -> dict[Any, Any]:
    import torch

    return {torch.linalg.svd: linalg_svd, torch.svd: svd, torch.Tensor.svd: svd}
