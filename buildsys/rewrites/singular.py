"""The singular value decomposition, for the linear-algebra family (buildsys/rewrites/linalg.py): torch.linalg.svd,
torch.svd / Tensor.svd and svdvals of a real m × n matrix (min(m, n) ≤ rotations.MAX_SIZE, static), and what torch
computes from an SVD inside one ATen op (so the family's table never sees its svd): matrix_rank, pinv / pinverse,
matrix_norm / linalg.norm / torch.norm / nuclear_norm, cond, lstsq.

One-sided Jacobi (Hestenes): the columns of X = A (Aᵀ when m < n, so X is tall) are rotated in pairs until they are
orthogonal, X ← XJ, V ← VJ, with the round-robin rounds and the rotation of linalg's symmetric Jacobi, each
rotation read from the Gram entries of the pair (‖x_p‖², ‖x_q‖², x_p·x_q). Rotating X itself, not its Gram
matrix, keeps the singular values' relative accuracy (a Gram's eigenvalues square the condition number: a rank-
deficient A's zero σ would come out near √ε·σ_max, above matrix_rank's tolerance). Then σ_i = ‖x_i‖,
u_i = x_i / σ_i, ordered descending by a one-hot permutation.

Singular vectors are unique only up to a sign per pair (u_i, v_i) (and up to a rotation within a repeated σ):
these are a valid SVD, not LAPACK's choice of signs. PyTorch compares two implementations of the SVD the same
way (test_ops.py, test_compare_cpu: the sample's `output_process_fn_grad`, |U|, |V|, U Vᴴ). A zero singular
value has no vector to normalise (LAPACK completes the basis; here u_i is 0). `full_matrices=True` of a non-square
matrix needs that completion too and is refused; torch.svd's default (some=True) is the reduced form. What is built
from the SVD (pinv, lstsq's solution) does not depend on those signs. Refused besides: an empty matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, RewriteNotApplicable, by_name, refuse_out, returned
from buildsys.rewrites.householder import _constant
from buildsys.rewrites.matrices import invert, symmetric_eigen
from buildsys.rewrites.rotations import MAX_SIZE, ascending, eye, real_matrix, rotation, schedule, sweeps

if TYPE_CHECKING:
    import torch

_FAMILY = "linalg"
#: The aten ops these functions lower to (svdvals' own, and _linalg_svd, are linalg.py's).
REMOVES = ("aten::linalg_svd", "aten::svd", "aten::linalg_matrix_rank", "aten::linalg_pinv", "aten::pinverse",
           "aten::linalg_matrix_norm", "aten::linalg_norm", "aten::nuclear_norm", "aten::linalg_cond",
           "aten::linalg_lstsq")


def matrix_shape(A: torch.Tensor, op: str, name: str = "A") -> tuple[int, int]:
    """(m, n) of A [..., m, n] (the argument `name`), static, real float32 / float64, min(m, n) within the family's
    size and not 0 (the SVD's and the LU's check)."""
    import torch

    m, n = real_matrix(A, op, name)
    if A.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: Low precision dtypes not supported. Got {A.dtype}")
    if min(m, n) > MAX_SIZE:
        raise RewriteNotApplicable(_FAMILY, op, f"min(m, n) = {min(m, n)} is above {MAX_SIZE} (the unrolled graph "
                                   "grows with n³)")
    if min(m, n) == 0:
        raise RewriteNotApplicable(_FAMILY, op, f"an empty {m} × {n} matrix")
    return m, n


def _orthogonalised(X: torch.Tensor, k: int, vectors: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(X J₁ J₂ …, J₁ J₂ … or None without `vectors`) after rotations.sweeps(k) sweeps of one-sided Jacobi over X's k
    columns: each rotation is the one that zeroes the pair's entry of XᵀX (rotations.py), applied to X's columns."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    V = X.new_zeros(()) + constant(np.asarray(eye(k)), X.dtype) if vectors else None  # the batch's dtype and device
    steps = schedule(k, X.dtype)
    sides = [(constant(np.asarray([p for p, _ in r.pairs], dtype=np.int64)),
              constant(np.asarray([q for _, q in r.pairs], dtype=np.int64))) for r in steps]
    for _ in range(sweeps(k)):
        for step, (left, right) in zip(steps, sides):
            xp, xq = X.index_select(-1, left), X.index_select(-1, right)
            J = rotation(step, (xp * xp).sum(-2), (xq * xq).sum(-2), (xp * xq).sum(-2), k)
            X = torch.matmul(X, J)
            V = None if V is None else torch.matmul(V, J)
    return X, V


def singular_values(A: torch.Tensor, op: str, descending: bool = True) -> torch.Tensor:
    """σ [..., min(m, n)] of A by one-sided Jacobi on A itself (relative accuracy, unlike the Gram's eigenvalues),
    descending (or in the order the sweeps leave them)."""
    import torch

    m, n = matrix_shape(A, op)
    k = min(m, n)
    X, _ = _orthogonalised(A if m >= n else A.transpose(-2, -1), k, vectors=False)
    S = torch.sqrt((X * X).sum(-2))
    return torch.matmul(S.unsqueeze(-2), ascending(-S, k)).squeeze(-2) if descending else S


def _svd(A: torch.Tensor, op: str, full_matrices: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U [..., m, k], S [..., k] descending, Vh [..., k, n]) with k = min(m, n)."""
    import torch

    m, n = matrix_shape(A, op)
    if full_matrices and m != n:
        raise RewriteNotApplicable(_FAMILY, op, f"full_matrices=True of a {m} × {n} matrix: completing U or V to a "
                                   "square basis is not rewritten (full_matrices=False, or torch.svd's some=True, is)")
    tall = m >= n
    k = min(m, n)
    X, V = _orthogonalised(A if tall else A.transpose(-2, -1), k)
    assert V is not None
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


def svdvals(A: torch.Tensor, *, driver: str | None = None, out: object = None) -> torch.Tensor:
    refuse_out(_FAMILY, "torch.linalg.svdvals", out)
    return singular_values(A, "torch.linalg.svdvals")


def _spectrum(A: torch.Tensor, hermitian: bool, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ [..., k], σ_max [..., 1]): A's singular values, or with `hermitian` |eigenvalues| of its lower triangle."""
    if not hermitian:
        S = singular_values(A, op, descending=False)
        return S, S.amax(-1, keepdim=True)

    S = symmetric_eigen(A, "L", False, op)[0].abs()
    return S, S.amax(-1, keepdim=True)


def _tolerance(largest: torch.Tensor, atol: Any, rtol: Any, m: int, n: int) -> torch.Tensor:
    """max(atol, rtol · σ_max) [..., 1] as torch's get_atol_rtol: rtol defaults to ε·max(m, n), or to 0 where
    atol > 0 when atol is given; each a number or a tensor (broadcast against the batch)."""
    import torch

    default = torch.finfo(largest.dtype).eps * max(m, n)
    if rtol is None:
        rtol = default if atol is None else (
            (atol <= 0).to(largest.dtype) * default if isinstance(atol, torch.Tensor) else (0.0 if atol > 0 else default))
    for value, name in ((atol, "atol"), (rtol, "rtol")):
        if isinstance(value, torch.Tensor) and value.is_complex():
            raise RuntimeError(f"{name} tensor of complex type is not supported")
    relative = (rtol.unsqueeze(-1).to(largest.dtype) if isinstance(rtol, torch.Tensor) else rtol) * largest
    if isinstance(atol, torch.Tensor):
        return torch.maximum(atol.unsqueeze(-1).to(largest.dtype), relative)
    return relative if atol is None else torch.clamp(relative, min=float(atol))


def matrix_rank(A: torch.Tensor, tol: Any = None, hermitian: bool = False, *, atol: Any = None, rtol: Any = None,
                out: object = None) -> torch.Tensor:
    """torch.linalg.matrix_rank: the σ above the tolerance (the deprecated `tol` is atol with rtol 0), int64."""
    import torch

    op = "torch.linalg.matrix_rank"
    refuse_out(_FAMILY, op, out)
    if tol is not None:
        atol, rtol = tol, 0.0
    m, n = matrix_shape(A, op)
    S, largest = _spectrum(A, hermitian, op)
    return (S > _tolerance(largest, atol, rtol, m, n)).to(torch.int64).sum(-1)


def pinv(A: torch.Tensor, rcond: Any = None, hermitian: bool = False, *, atol: Any = None, rtol: Any = None,
         out: object = None) -> torch.Tensor:
    """torch.linalg.pinv: V Σ⁺ Uᵀ (with `hermitian`, Q Λ⁺ Qᵀ), 1/σ where σ is above the tolerance, else 0;
    rcond is NumPy's (rtol, with atol 0)."""
    import torch

    op = "torch.linalg.pinv"
    refuse_out(_FAMILY, op, out)
    if rcond is not None:
        atol, rtol = 0.0, rcond
    m, n = matrix_shape(A, op)
    if hermitian:

        w, Q = symmetric_eigen(A, "L", True, op)
        assert Q is not None
        keep = w.abs() > _tolerance(w.abs().amax(-1, keepdim=True), atol, rtol, m, n)
        inverse = torch.where(keep, 1.0 / torch.where(keep, w, torch.ones_like(w)), torch.zeros_like(w))
        return torch.matmul(Q * inverse.unsqueeze(-2), Q.transpose(-2, -1))
    U, S, Vh = _svd(A, op, full_matrices=False)
    keep = S > _tolerance(S.narrow(-1, 0, 1), atol, rtol, m, n)
    inverse = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    return torch.matmul(Vh.transpose(-2, -1) * inverse.unsqueeze(-2), U.transpose(-2, -1))


def pinverse(input: torch.Tensor, rcond: float = 1e-15) -> torch.Tensor:
    return pinv(input, rcond)


def _matrix_norm(A: torch.Tensor, ord: Any, dim: Any, keepdim: bool, dtype: Any, op: str) -> torch.Tensor:
    """The matrix norm of any ord over the two dims `dim`, as torch's linalg_matrix_norm computes it: 2 (σ_max), −2
    (σ_min) and 'nuc' (Σσ) from the singular values; 'fro' a vector 2-norm; ±1 (±inf) the max / min over columns
    (rows) of the absolute sums."""
    import torch

    if A.dim() < 2:
        raise RuntimeError(f"{op}: The input tensor A must have at least 2 dimensions.")
    if ord == "fro":
        return torch.linalg.vector_norm(A, 2, dim, keepdim, dtype=dtype)
    if isinstance(ord, str) and ord != "nuc" or not isinstance(ord, str) and abs(float(ord)) not in (1.0, 2.0,
                                                                                                     float("inf")):
        raise RuntimeError(f"{op}: Order {ord} not supported.")
    if dtype is not None:
        A = A.to(dtype)
    first, second = (d % A.dim() for d in dim)
    if first == second:
        raise RuntimeError(f"{op}: dims must be different. Got ({first}, {second})")
    if int(A.shape[first]) == 0 or int(A.shape[second]) == 0:
        raise RewriteNotApplicable(_FAMILY, op, f"an empty {A.shape[first]} × {A.shape[second]} matrix")
    if ord == "nuc" or abs(float(ord)) == 2.0:
        order = [d for d in range(A.dim()) if d not in (first, second)] + [first, second]
        S = singular_values(A.permute(order) if order != list(range(A.dim())) else A, op, descending=False)
        result = S.sum(-1) if ord == "nuc" else (S.amax(-1) if ord > 0 else S.amin(-1))
        if keepdim:
            for d in sorted((first, second)):
                result = result.unsqueeze(d)
        return result
    summed, extreme = (first, second) if abs(float(ord)) == 1.0 else (second, first)
    sums = A.abs().sum(summed, keepdim=True)
    result = sums.amax(extreme, keepdim=True) if ord > 0 else sums.amin(extreme, keepdim=True)
    return result if keepdim else result.squeeze(max(first, second)).squeeze(min(first, second))


def matrix_norm(A: torch.Tensor, ord: Any = "fro", dim: Any = (-2, -1), keepdim: bool = False, *, dtype: Any = None,
                out: object = None) -> torch.Tensor:
    refuse_out(_FAMILY, "torch.linalg.matrix_norm", out)
    return _matrix_norm(A, ord, dim, keepdim, dtype, "torch.linalg.matrix_norm")


def linalg_norm(A: torch.Tensor, ord: Any = None, dim: Any = None, keepdim: bool = False, *, out: object = None,
                dtype: Any = None) -> torch.Tensor:
    """torch.linalg.norm as torch's linalg_norm: a matrix norm (an ord and two dims, or a 2-D A) as matrix_norm's,
    else a vector norm (torch.linalg.vector_norm, of ord 2 by default)."""
    import torch

    refuse_out(_FAMILY, "torch.linalg.norm", out)
    if isinstance(dim, int):
        dim = (dim,)
    if ord is not None and ((dim is not None and len(dim) == 2) or (dim is None and A.dim() == 2)):
        return _matrix_norm(A, ord, (0, 1) if dim is None else dim, keepdim, dtype, "torch.linalg.norm")
    if isinstance(ord, str) or (dim is None and ord is not None and A.dim() != 1):
        return torch.linalg.norm(A, ord, dim, keepdim, dtype=dtype)  # torch's error
    return torch.linalg.vector_norm(A, 2 if ord is None else ord, dim, keepdim, dtype=dtype)


def norm(input: torch.Tensor, p: Any = "fro", dim: Any = None, keepdim: bool = False, out: object = None,
         dtype: Any = None) -> torch.Tensor:
    """torch.norm / Tensor.norm: p='nuc' is the nuclear norm over `dim` (every dim when None: a 2-D input)."""
    import torch

    if p != "nuc":
        return torch.norm(input, p, dim, keepdim, out=out, dtype=dtype)
    refuse_out(_FAMILY, "torch.norm", out)
    return _matrix_norm(input, "nuc", list(range(input.dim())) if dim is None else dim, keepdim, dtype, "torch.norm")


def nuclear_norm(input: torch.Tensor, dim: Any = (-2, -1), keepdim: bool = False, *, out: object = None
                 ) -> torch.Tensor:
    if isinstance(dim, bool):  # nuclear_norm(input, keepdim)
        dim, keepdim = (-2, -1), dim
    refuse_out(_FAMILY, "torch.nuclear_norm", out)
    return _matrix_norm(input, "nuc", dim, keepdim, None, "torch.nuclear_norm")


def cond(A: torch.Tensor, p: Any = None, *, out: object = None) -> torch.Tensor:
    """torch.linalg.cond: σ_max / σ_min (p None or 2; p = −2 its inverse); other p: ‖A‖·‖A⁻¹‖ with the family's
    inverse (inf where A is singular, as torch's)."""
    import torch

    op = "torch.linalg.cond"
    refuse_out(_FAMILY, op, out)
    if p is None or not isinstance(p, str) and abs(float(p)) == 2.0:
        S = singular_values(A, op)
        largest, smallest = S.narrow(-1, 0, 1), S.narrow(-1, S.shape[-1] - 1, 1)
        return (smallest / largest if p is not None and p < 0 else largest / smallest).squeeze(-1)

    inverse, info = invert(A, op, None)
    infinity = _constant(float("inf"), A.dtype)  # a constant: a literal inf does not compile back to TorchScript
    inverse = torch.where((info > 0)[..., None, None], infinity, inverse)
    result = matrix_norm(A, p) * matrix_norm(inverse, p)
    return torch.where(torch.isnan(result), infinity, result)


def lstsq(A: torch.Tensor, B: torch.Tensor, rcond: float | None = None, *, driver: str | None = None,
          out: object = None) -> Any:
    """torch.linalg.lstsq: X = V Σ⁺ Uᵀ B, σ below rcond·σ_max (default ε·max(m, n)) dropped as gelss / gelsd drop
    them (gels assumes full rank and drops none; gelsy's rank, a pivoted QR's condition estimate, is the same at the
    default rcond but for σ at the tolerance itself: an explicit rcond with gelsy is refused). The other fields as torch returns them on the CPU, per driver:
    rank (gelsy / gelss / gelsd: int64 [...]), singular_values (gelss / gelsd: σ [..., k]), residuals ‖AX − B‖² per
    column [..., p] where m > n and the driver is not gelsy, else empty tensors. gelss / gelsd return residuals only
    when every matrix has full rank: a graph cannot change an output's shape with the data, so a rank-deficient A
    gets NaN residuals where torch's are empty."""
    import torch

    op = "torch.linalg.lstsq"
    refuse_out(_FAMILY, op, out)
    driver = "gelsy" if driver is None else driver  # the CPU's default
    if driver not in ("gels", "gelsy", "gelsd", "gelss"):
        raise RuntimeError(f"{op}: parameter `driver` should be one of (gels, gelsy, gelsd, gelss)")
    if driver == "gelsy" and rcond is not None:
        raise RewriteNotApplicable(_FAMILY, op, "rcond with the gelsy driver: its rank is the pivoted QR's condition "
                                   "estimate, which the singular values match only at the default rcond (gelss / gelsd "
                                   "are the SVD's)")
    m, n = matrix_shape(A, op)
    if not isinstance(B, torch.Tensor) or B.is_complex():
        raise RewriteNotApplicable(_FAMILY, op, "a complex (or non-tensor) B: only real matrices are rewritten")
    if B.dtype != A.dtype:
        raise RuntimeError(f"{op}: Expected input and other to have the same dtype, but got input's dtype {A.dtype} "
                           f"and other's dtype {B.dtype}")
    if not 0 <= A.dim() - B.dim() <= 1:
        raise RuntimeError(f"{op}: input.dim() must be greater or equal to other.dim() and (input.dim() - other.dim()) "
                           "<= 1")
    vector = A.dim() - B.dim() == 1
    rhs = B.unsqueeze(-1) if vector else B
    if int(rhs.shape[-2]) != m:
        raise RuntimeError(f"{op}: input.size(-2) should match other.size({-1 if vector else -2})")
    U, S, Vh = _svd(A, op, full_matrices=False)
    if driver == "gels":
        keep = S != 0
    else:
        threshold = torch.finfo(A.dtype).eps * max(m, n) if rcond is None else rcond
        keep = S > threshold * S.narrow(-1, 0, 1)
    inverse = torch.where(keep, 1.0 / torch.where(keep, S, torch.ones_like(S)), torch.zeros_like(S))
    X = torch.matmul(Vh.transpose(-2, -1), inverse.unsqueeze(-1) * torch.matmul(U.transpose(-2, -1), rhs))
    # an empty field: a constant (coremltools' new_zeros takes no empty shape); NaN and inf: constants too (a literal
    # nan / inf in the exported graph does not compile back to TorchScript)
    rank = keep.to(torch.int64).sum(-1) if driver != "gels" else _constant([], torch.int64)
    if m > n and driver != "gelsy":
        difference = torch.matmul(A, X) - rhs
        residuals = (difference * difference).sum(-2)
        if driver != "gels":
            residuals = torch.where((rank == n).unsqueeze(-1), residuals, _constant(float("nan"), A.dtype))
    else:
        residuals = _constant([], A.dtype)
    values = S if driver in ("gelss", "gelsd") else _constant([], A.dtype)
    return returned("linalg_lstsq", (X.squeeze(-1) if vector else X, residuals, rank, values))


def handlers() -> HandlerTable:
    import torch

    table = by_name({"pinverse": pinverse, "norm": norm, "nuclear_norm": nuclear_norm}, (torch, torch.Tensor))
    table.update({torch.linalg.svd: linalg_svd, torch.svd: svd, torch.Tensor.svd: svd, torch.linalg.svdvals: svdvals,
                  torch.linalg.matrix_rank: matrix_rank, torch.linalg.pinv: pinv, torch.linalg.matrix_norm: matrix_norm,
                  torch.linalg.norm: linalg_norm, torch.linalg.cond: cond, torch.linalg.lstsq: lstsq})
    return table
