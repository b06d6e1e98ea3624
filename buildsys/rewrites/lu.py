"""LU with partial pivoting for the linear-algebra family (buildsys/rewrites/linalg.py): linalg.lu_factor / lu_factor_ex,
linalg.lu, torch.lu / Tensor.lu, lu_unpack, linalg.lu_solve and torch.lu_solve / Tensor.lu_solve, of real matrices
[..., m, n] with min(m, n) ≤ rotations.MAX_SIZE (static), unrolled one column per step as LAPACK's getrf does it.

Step j: the pivot is the first row at or below j of maximal |A[i, j]| (idamax: an argmax over the column with the rows
above j masked to −1); rows j and p are exchanged by selection (a one-hot row picked by a matmul, two wheres: exact,
where an update A − d dᵀA would round); then, unless the pivot is 0 (getrf skips that column and reports it in
info), the column below it is divided by it and the trailing block takes the rank-1 update A − l uᵀ. So LU and the
1-based int32 pivots are LAPACK's (to rounding: blocked getrf sums the updates in another order), info the first
zero pivot. lu_unpack's P is the product of the exchanges (I − d dᵀ with d = e_j − e_{pivot_j}, d from comparisons of
the pivots against constant row numbers: no scatter), L the unit lower trapezoid, U the upper one, as torch returns
them (A = P L U). lu_solve substitutes through L and U row by row (left or right, adjoint or not).

Every mask, identity and index vector is a constant built from the static sizes (no arange / eye / triu / tril in
the graph); no full-range slice (export records it as an alias). Refused: min(m, n) > MAX_SIZE, a dynamic size,
complex, out=, pivot=False (torch computes it only on CUDA). Why a rewrite: PyTorch keeps linalg_lu_factor_ex,
linalg_lu, lu_unpack and linalg_lu_solve as LAPACK calls (not core ATen; the ONNX exporters refuse them). Equivalence:
tests/rewrites/test_rewrite_families_lu.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, RewriteNotApplicable, by_name, refuse_out, returned
from buildsys.rewrites.householder import _constant, _identity, _upper
from buildsys.rewrites.matrices import lapack_info
from buildsys.rewrites.singular import matrix_shape

if TYPE_CHECKING:
    import torch

#: The ops these functions remove (the linalg family's `removes` holds them).
REMOVES = ("aten::linalg_lu_factor", "aten::linalg_lu_factor_ex", "aten::linalg_lu", "aten::_lu_with_info",
           "aten::lu_unpack", "aten::linalg_lu_solve", "aten::lu_solve")
_FAMILY = "linalg"


def _pivoting(pivot: bool, op: str) -> None:
    if not pivot:
        raise RewriteNotApplicable(_FAMILY, op, "pivot=False (LU without pivoting: torch computes it only on CUDA)")


def _factor(A: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """getrf: (LU [..., m, n], pivots [..., k] int32 1-based, the exchanges d_j [..., m], info [...] int32)."""
    import torch

    rows = _constant(list(range(m)), torch.int64)  # [m]: int64, as argmax returns
    pivots, exchanges, zero = [], [], []
    for j in range(min(m, n)):
        candidates = torch.where(_constant([i >= j for i in range(m)]), A.select(-1, j).abs(),
                                 _constant([-1.0] * m, A.dtype))
        p = candidates.argmax(dim=-1, keepdim=True)  # [..., 1]: the first of equal maxima, as idamax
        chosen = p == rows  # [..., m]
        pivot_row = torch.matmul(chosen.to(A.dtype).unsqueeze(-2), A)  # [..., 1, n]: row p, exactly
        row_j = A.select(-2, j).unsqueeze(-2)
        is_j = _constant([[i == j] for i in range(m)])  # [m, 1]
        A = torch.where(is_j, pivot_row, torch.where(chosen.unsqueeze(-1), row_j, A))
        pivots.append(p.squeeze(-1) + 1)
        exchanges.append(_constant([float(i == j) for i in range(m)], A.dtype) - chosen.to(A.dtype))
        pivot = A[..., j, j]
        zero.append(pivot == 0)
        divisor = torch.where(pivot == 0, torch.ones_like(pivot), pivot).unsqueeze(-1)
        below = _constant([i > j for i in range(m)])
        column = A.select(-1, j)
        multipliers = torch.where(below, column / divisor, torch.zeros_like(column))  # [..., m]
        row = A.select(-2, j)
        row = torch.where(_constant([c > j for c in range(n)]), row, torch.zeros_like(row))  # [..., n]
        A = A - torch.matmul(multipliers.unsqueeze(-1), row.unsqueeze(-2))
        at_j = _constant([[i > j and c == j for c in range(n)] for i in range(m)])
        A = torch.where(at_j, multipliers.unsqueeze(-1), A)
    return A, torch.stack(pivots, dim=-1).to(torch.int32), exchanges, lapack_info(zero)


def _permutation(exchanges: list[torch.Tensor], m: int, dtype: torch.dtype) -> torch.Tensor:
    """P [..., m, m] = (I − d₀d₀ᵀ)(I − d₁d₁ᵀ)…: entries 0 and 1, computed exactly."""
    import torch

    P = _identity(m, m, dtype)
    for d in exchanges:
        P = P - torch.matmul(torch.matmul(P, d.unsqueeze(-1)), d.unsqueeze(-2))
    return P


def _exchanges(pivots: torch.Tensor, m: int, k: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """The exchanges d_j = e_j − e_{pivots[j] − 1} [..., m] of LAPACK pivots [..., k] (compared with constant rows)."""
    import torch

    if pivots.dtype not in (torch.int32, torch.int64):
        raise RuntimeError(f"lu_unpack: LU_pivots is expected to be a contiguous tensor of torch.int32 dtype. Got "
                           f"{pivots.dtype}")
    rows = _constant([i + 1 for i in range(m)], pivots.dtype)  # 1-based, as the pivots
    out = []
    for j in range(k):
        chosen = (pivots.select(-1, j).unsqueeze(-1) == rows).to(dtype)
        out.append(_constant([float(i == j) for i in range(m)], dtype) - chosen)
    return out


def _triangles(LU: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L [..., m, k] unit lower, U [..., k, n] upper) of the packed LU."""
    import torch

    k = min(m, n)
    left = LU if k == n else LU.narrow(-1, 0, k)
    top = LU if k == m else LU.narrow(-2, 0, k)
    L = torch.where(_upper(m, k, strict=False), _identity(m, k, LU.dtype), left)
    U = torch.where(_upper(k, n, strict=False), top, torch.zeros_like(top))
    return L, U


def lu_factor_ex(A: torch.Tensor, *, pivot: bool = True, check_errors: bool = False, out: object = None) -> Any:
    op = "torch.linalg.lu_factor_ex"
    refuse_out(_FAMILY, op, out)
    _pivoting(pivot, op)
    LU, pivots, _, info = _factor(A, *matrix_shape(A, op))
    return returned("linalg_lu_factor_ex", (LU, pivots, info))


def lu_factor(A: torch.Tensor, *, pivot: bool = True, out: object = None) -> Any:
    op = "torch.linalg.lu_factor"
    refuse_out(_FAMILY, op, out)
    _pivoting(pivot, op)
    LU, pivots, _, _ = _factor(A, *matrix_shape(A, op))
    return returned("linalg_lu_factor", (LU, pivots))


def linalg_lu(A: torch.Tensor, *, pivot: bool = True, out: object = None) -> Any:
    """torch.linalg.lu: (P, L, U) with A = P L U."""
    op = "torch.linalg.lu"
    refuse_out(_FAMILY, op, out)
    _pivoting(pivot, op)
    m, n = matrix_shape(A, op)
    LU, _, exchanges, _ = _factor(A, m, n)
    L, U = _triangles(LU, m, n)
    return returned("linalg_lu", (_permutation(exchanges, m, A.dtype), L, U))


def lu(A: torch.Tensor, pivot: bool = True, get_infos: bool = False, out: object = None) -> Any:
    """torch.lu / Tensor.lu: (LU, pivots), with get_infos (LU, pivots, infos)."""
    op = "torch.lu"
    refuse_out(_FAMILY, op, out)
    _pivoting(pivot, op)
    LU, pivots, _, info = _factor(A, *matrix_shape(A, op))
    return returned("_lu_with_info", (LU, pivots, info)) if get_infos else (LU, pivots)


def tensor_lu(self: torch.Tensor, pivot: bool = True, get_infos: bool = False) -> Any:
    LU, pivots, info = lu(self, pivot, True)
    return (LU, pivots, info) if get_infos else (LU, pivots)


def lu_unpack(LU_data: torch.Tensor, LU_pivots: torch.Tensor, unpack_data: bool = True, unpack_pivots: bool = True,
              *, out: object = None) -> Any:
    """torch.lu_unpack: (P, L, U) of lu_factor's (LU, pivots); each one not unpacked is an empty tensor, as torch's."""
    op = "torch.lu_unpack"
    refuse_out(_FAMILY, op, out)
    m, n = matrix_shape(LU_data, op, "LU_data")
    k = min(m, n)
    if LU_pivots.dim() < 1 or int(LU_pivots.shape[-1]) != k:
        raise RuntimeError(f"{op}: LU_pivots.size(-1) must be equal to min(LU_data.size(-2), LU_data.size(-1))")
    # what is not unpacked: an empty constant (coremltools' new_zeros takes no empty shape)
    L, U = _triangles(LU_data, m, n) if unpack_data else (_constant([], LU_data.dtype),) * 2
    P = _permutation(_exchanges(LU_pivots, m, k, LU_data.dtype), m, LU_data.dtype) if unpack_pivots \
        else _constant([], LU_data.dtype)
    return returned("lu_unpack", (P, L, U))


def _substitute(T: torch.Tensor, B: torch.Tensor, n: int, lower: bool, unit: bool) -> torch.Tensor:
    """X with T X = B for T [..., n, n] triangular (only its lower or upper triangle read; a unit diagonal assumed with
    `unit`), B [..., n, p]: one row of X per step, eliminated from the rows after it."""
    import torch

    X = B
    for i in (range(n) if lower else reversed(range(n))):
        row = X.select(-2, i)  # [..., p]: final once the rows before it are eliminated
        if not unit:
            row = row / T[..., i, i].unsqueeze(-1)
            X = torch.where(_constant([[r == i] for r in range(n)]), row.unsqueeze(-2), X)
        later = _constant([r > i if lower else r < i for r in range(n)])
        column = T.select(-1, i)
        column = torch.where(later, column, torch.zeros_like(column))
        X = X - torch.matmul(column.unsqueeze(-1), row.unsqueeze(-2))
    return X


def _lu_solve(LU: torch.Tensor, pivots: torch.Tensor, B: torch.Tensor, left: bool, adjoint: bool, op: str
              ) -> torch.Tensor:
    import torch

    m, n = matrix_shape(LU, op, "LU")
    if m != n:
        raise RuntimeError(f"{op}: A must be batches of square matrices, but they are {m} by {n} matrices")
    if not isinstance(B, torch.Tensor) or B.is_complex():
        raise RewriteNotApplicable(_FAMILY, op, "a complex (or non-tensor) B: only real matrices are rewritten")
    if B.dim() < 2:
        raise RuntimeError(f"{op}: The input tensor B must have at least 2 dimensions.")
    if B.dtype != LU.dtype:
        raise RuntimeError(f"{op}: Expected LU and B to have the same dtype, but found LU of type {LU.dtype} and B "
                           f"of type {B.dtype} instead")
    if int(B.shape[-2 if left else -1]) != n:
        raise RuntimeError(f"{op}: Incompatible shapes of A and B for the equation "
                           f"{'AX = B' if left else 'XA = B'} ({n}x{n} and {'x'.join(map(str, B.shape[-2:]))})")
    if not left:  # X A = B ⇔ Aᵀ Xᵀ = Bᵀ
        return _lu_solve(LU, pivots, B.transpose(-2, -1), True, not adjoint, op).transpose(-2, -1)
    P = _permutation(_exchanges(pivots, n, n, LU.dtype), n, LU.dtype)
    if not adjoint:  # A = P L U: X = U⁻¹ L⁻¹ Pᵀ B
        Y = _substitute(LU, torch.matmul(P.transpose(-2, -1), B), n, lower=True, unit=True)
        return _substitute(LU, Y, n, lower=False, unit=False)
    T = LU.transpose(-2, -1)  # Aᵀ = Uᵀ Lᵀ Pᵀ: X = P L⁻ᵀ U⁻ᵀ B
    Y = _substitute(T, B, n, lower=True, unit=False)
    return torch.matmul(P, _substitute(T, Y, n, lower=False, unit=True))


def linalg_lu_solve(LU: torch.Tensor, pivots: torch.Tensor, B: torch.Tensor, *, left: bool = True,
                    adjoint: bool = False, out: object = None) -> torch.Tensor:
    refuse_out(_FAMILY, "torch.linalg.lu_solve", out)
    return _lu_solve(LU, pivots, B, left, adjoint, "torch.linalg.lu_solve")


def lu_solve(b: torch.Tensor, LU_data: torch.Tensor, LU_pivots: torch.Tensor, *, out: object = None) -> torch.Tensor:
    """torch.lu_solve / Tensor.lu_solve (deprecated): linalg.lu_solve(LU_data, LU_pivots, b)."""
    refuse_out(_FAMILY, "torch.lu_solve", out)
    return _lu_solve(LU_data, LU_pivots, b, True, False, "torch.lu_solve")


def handlers() -> HandlerTable:
    """The functions this module replaces, for the linalg family's table."""
    import torch

    table = by_name({"lu_unpack": lu_unpack, "lu_solve": lu_solve}, (torch, torch.Tensor))
    table.update({torch.linalg.lu_factor: lu_factor, torch.linalg.lu_factor_ex: lu_factor_ex,
                  torch.linalg.lu: linalg_lu, torch.linalg.lu_solve: linalg_lu_solve, torch.lu: lu,
                  torch.Tensor.lu: tensor_lu})
    return table
