"""The matrix exponential for the linear-algebra family (buildsys/rewrites/linalg.py): linalg.matrix_exp,
torch.matrix_exp and Tensor.matrix_exp of real square matrices [..., n, n], by scaling and squaring.

Each matrix is scaled by 2^−s, s the smallest count that brings its 1-norm to 1/2 or below (computed from the data,
per matrix of the batch), its exponential summed as a Taylor polynomial by Horner's rule (degree 12 in float32, 18 in
float64: the remainder at norm 1/2 is below the dtype's epsilon), then squared s times: the squarings are unrolled to
MAX_SQUARINGS, each kept only where the matrix needs it (a where per batch element). The scaling is exact (a power
of two); what is left is the squarings' rounding, as in torch's own scaling and squaring (Bader, Blanes and Casas
2019 use degree-18 optimised evaluation). A 1-norm above 2^(MAX_SQUARINGS − 1) (an exponential far past float64's
range) is not scaled enough: such inputs overflow in torch too.

Why a rewrite: PyTorch keeps linalg_matrix_exp as one kernel (not core ATen; no table decomposes it; no exporter or
converter takes it). Equivalence: tests/rewrites/test_rewrite_families_linalg.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, RewriteNotApplicable, refuse_out
from buildsys.rewrites.matrices import square_size

if TYPE_CHECKING:
    import torch

#: The ops these functions remove (the linalg family's `removes` holds them).
REMOVES = ("aten::linalg_matrix_exp", "aten::matrix_exp")
MAX_SQUARINGS = 16


def matrix_exp(A: torch.Tensor, *, out: Any = None) -> torch.Tensor:
    import torch

    from buildsys.rewrites.householder import _constant

    refuse_out("linalg", "torch.linalg.matrix_exp", out)
    if A.is_complex():
        raise RewriteNotApplicable("linalg", "torch.linalg.matrix_exp", "a complex matrix")
    n = square_size(A, "torch.linalg.matrix_exp")
    eye = _constant([[float(i == j) for j in range(n)] for i in range(n)], A.dtype)
    norm = A.abs().sum(dim=-2).amax(dim=-1)  # the 1-norm, per matrix
    squarings = torch.clamp(torch.ceil(torch.log2(torch.clamp(norm, min=1e-30) * 2.0)), 0, MAX_SQUARINGS)
    X = A * torch.pow(2.0, -squarings).unsqueeze(-1).unsqueeze(-1)
    degree = 18 if A.dtype == torch.float64 else 12
    E = eye + X / degree
    for k in range(degree - 1, 0, -1):  # Horner: I + X(I + X/2(I + … (I + X/m)))
        E = eye + torch.matmul(X, E) / k
    for i in range(MAX_SQUARINGS):
        E = torch.where((squarings > i).unsqueeze(-1).unsqueeze(-1), torch.matmul(E, E), E)
    return E


def handlers() -> HandlerTable:
    import torch

    return {torch.linalg.matrix_exp: matrix_exp, torch.matrix_exp: matrix_exp, torch.Tensor.matrix_exp: matrix_exp}
