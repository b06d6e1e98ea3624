"""The linear-algebra ops torch composes in C++ from a LAPACK one, for the linalg family: linalg.tensorinv and
linalg.tensorsolve (a reshape around inv / solve) and matrix_power (repeated squaring, of the inverse for n < 0).

Why they need their own handlers: the family's rewrite swaps the Python-level functions (torch.linalg.inv, …) under
a TorchFunctionMode, and a composite op calls the LAPACK one inside C++, where the mode never sees it; the exported
program then still holds linalg_inv_ex (which ExecuTorch refuses) and the legacy ONNX exporter refuses the composite
itself (aten::linalg_tensorinv at opset 18, measured). Here each is written in the family's own kernels
(matrices.py: Gauss-Jordan with partial pivoting), so it goes wherever inv and solve go.
"""

from __future__ import annotations

from math import prod
from typing import TYPE_CHECKING

from buildsys.rewrites.base import HandlerTable, by_name, refuse_out
from buildsys.rewrites.matrices import eliminate, invert, square_size
from buildsys.rewrites.rotations import eye

if TYPE_CHECKING:
    import torch

#: The ops these functions remove (the linalg family's `removes` holds them).
REMOVES = ("aten::linalg_tensorinv", "aten::linalg_tensorsolve", "aten::linalg_matrix_power", "aten::matrix_power")


def tensorinv(A: torch.Tensor, ind: int = 2, *, out: object = None) -> torch.Tensor:
    """The inverse of A [*left, *right] read as a prod(left) × prod(right) matrix, shaped [*right, *left]."""
    op = "torch.linalg.tensorinv"
    refuse_out("linalg", op, out)
    if ind <= 0:
        raise RuntimeError(f"{op}: Expected a strictly positive integer for 'ind', but got {ind}")
    left, right = tuple(A.shape[:ind]), tuple(A.shape[ind:])
    if prod(left) != prod(right):
        raise RuntimeError(f"{op}: Expected self to satisfy the requirement prod(self.shape[ind:]) == "
                           f"prod(self.shape[:ind]), but got {prod(right)} != {prod(left)}")
    return invert(A.reshape(prod(left), prod(right)), op, None)[0].reshape(*right, *left)


def tensorsolve(A: torch.Tensor, B: torch.Tensor, dims: tuple[int, ...] | None = None, *,
                out: object = None) -> torch.Tensor:
    """X [*A.shape[B.ndim:]] with tensordot(A, X, X.ndim) = B; `dims` of A moved to its end first."""
    op = "torch.linalg.tensorsolve"
    refuse_out("linalg", op, out)
    if dims is not None:
        kept = [d for d in range(A.dim()) if d not in {d % A.dim() for d in dims}]
        A = A.permute(*kept, *(d % A.dim() for d in dims))
    solution = tuple(A.shape[B.dim():])
    if prod(solution) != B.numel():
        raise RuntimeError(f"{op}: Expected self to satisfy the requirement prod(self.shape[other.ndim:]) == "
                           f"prod(self.shape[:other.ndim]), but got {prod(solution)} != {B.numel()}")
    matrix = A.reshape(B.numel(), prod(solution))
    n = square_size(matrix, op)
    X, _, _ = eliminate(matrix, B.reshape(n, 1), n, safe=False)
    assert X is not None
    return X.reshape(solution)


def matrix_power(A: torch.Tensor, n: int, *, out: object = None) -> torch.Tensor:
    """A^n by torch's binary exponentiation (of A⁻¹ for n < 0; the identity, broadcast over the batch, for n = 0),
    its matmuls in torch's order; any size and dtype for n ≥ 0 (matmuls only), as the family's inverse for n < 0."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    op = "torch.linalg.matrix_power"
    refuse_out("linalg", op, out)
    if n < 0:  # the inverse: float, within the family's size
        square_size(A, op)
    elif A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise RuntimeError(f"{op}: A must be batches of square matrices, but they are "
                           f"{' by '.join(map(str, A.shape[-2:]))} matrices")
    size = int(A.shape[-1])
    if n == 0:
        return torch.zeros_like(A) + constant(np.asarray(eye(size)), A.dtype)
    a = invert(A, op, None)[0] if n < 0 else A
    n = abs(n)
    if n <= 3:  # torch's own short cases
        return a if n == 1 else torch.matmul(a, a) if n == 2 else torch.matmul(torch.matmul(a, a), a)
    result, z = None, None
    while n:
        bit, n = n % 2, n // 2
        z = a if z is None else torch.matmul(z, z)
        if bit:
            result = z if result is None else torch.matmul(result, z)
    assert result is not None
    return result


def handlers() -> HandlerTable:
    import torch

    table = by_name({"tensorinv": tensorinv, "tensorsolve": tensorsolve}, (torch.linalg,))
    table.update(by_name({"matrix_power": matrix_power}, (torch.linalg, torch, torch.Tensor)))
    return table
