"""Householder QR for the linear-algebra family (buildsys/rewrites/linalg.py): geqrf, householder_product (orgqr),
ormqr and qr of real matrices [..., m, n] at static sizes, unrolled one reflector per step in LAPACK's convention,
so the results are LAPACK's (the same R signs and Q columns, not merely an equivalent factorisation).

Reflector j (j < k = min(m, n)) is H_j = I − τ_j v_j v_jᵀ with v_j = (0…0, 1, a[j+1:, j]) — dlarfg's: for
α = a[j, j] and x = a[j+1:, j], β = −sign(α)·‖(α, x)‖, τ = (β − α)/β, v's tail x/(α − β); x = 0 gives τ = 0 and
β = α (H = I). geqrf applies each H_j to the rest of the matrix (a rank-1 update: A ← A − τ v (vᵀA)) and returns
R's upper triangle, β on the diagonal, the v tails below it, and τ. householder_product is H_0 H_1 … H_{k−1}
applied to the first n columns of the identity (right to left); ormqr multiplies by Q or Qᵀ from either side, the
reflectors in the order each product needs; qr is geqrf then householder_product (mode reduced, complete or r).

Why a rewrite and not a decomposition: PyTorch's tables keep geqrf, linalg_householder_product, ormqr and
linalg_qr as LAPACK calls (none core ATen, no decomposition), and both ONNX exporters refuse them at opset 18.
Matmuls, sqrt, where and concatenation every converter takes. Equivalence: tests/rewrites/test_rewrite_families_linalg.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from buildsys.rewrites.base import HandlerTable, RewriteNotApplicable, by_name, refuse_out, returned

if TYPE_CHECKING:
    import torch

#: The ops these functions remove (the linalg family's `removes` holds them).
REMOVES = ("aten::geqrf", "aten::linalg_householder_product", "aten::orgqr", "aten::ormqr", "aten::linalg_qr", "aten::qr")
#: The most reflectors the family unrolls (each is a handful of ops on the whole matrix).
MAX_REFLECTORS = 64
_FAMILY = "linalg"


def _matrix(A: torch.Tensor, op: str) -> tuple[int, int]:
    """(m, n) of A [..., m, n], static, real float32 / float64; refused or rejected as torch would."""
    import torch

    from buildsys.rewrites.mechanism import static_size

    if not isinstance(A, torch.Tensor) or A.is_complex():
        raise RewriteNotApplicable(_FAMILY, op, "a complex or non-tensor input: only real matrices are rewritten")
    if A.dim() < 2:
        raise RuntimeError(f"{op}: The input tensor A must have at least 2 dimensions.")
    if A.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: Low precision dtypes not supported. Got {A.dtype}")
    m, n = static_size(A, -2, _FAMILY, op), static_size(A, -1, _FAMILY, op)
    if min(m, n) > MAX_REFLECTORS:
        raise RewriteNotApplicable(_FAMILY, op, f"{min(m, n)} reflectors, above {MAX_REFLECTORS} (unrolled)")
    return m, n


def _constant(rows: Sequence[Any] | float, dtype: torch.dtype | None = None, shape: tuple[int, ...] | None = None
              ) -> torch.Tensor:
    """A constant of the graph from nested lists (bool where dtype is None): masks and identities are built here from
    the static sizes, never with torch.eye / torch.arange / torch.triu (iota ops in the graph, which TFLite lacks)."""
    import numpy as np

    from buildsys.rewrites.mechanism import constant

    if isinstance(rows, float):  # a scalar: 0-d (a lifted constant is at least 1-d)
        return constant(np.asarray([rows]), dtype).squeeze(0)
    values = np.asarray(rows, dtype=bool) if dtype is None else np.asarray(rows)  # bool when empty too
    return constant(values if shape is None else values.reshape(shape), dtype)  # [m, 0] or [0, n] from [] too


def _upper(m: int, n: int, strict: bool) -> torch.Tensor:
    """The bool mask [m, n] above the diagonal (strictly, or with it)."""
    return _constant([[j > i or (j == i and not strict) for j in range(n)] for i in range(m)], shape=(m, n))


def _identity(m: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The first n columns of I_m [m, n], a constant."""
    return _constant([[float(i == j) for j in range(n)] for i in range(m)], dtype, (m, n))


def _vector(a: torch.Tensor, j: int) -> torch.Tensor:
    """v_j [..., m] of the reflectors geqrf stored in `a`: e_j plus column j strictly below the diagonal."""
    m = int(a.shape[-2])
    below = _constant([float(i > j) for i in range(m)], a.dtype)
    unit = _constant([float(i == j) for i in range(m)], a.dtype)
    return unit + a.select(-1, j) * below


def _from_left(X: torch.Tensor, v: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """H X = X − τ v (vᵀ X) for X [..., m, p], v [..., m], τ [...]."""
    return X - (tau[..., None, None] * v.unsqueeze(-1)) * (v.unsqueeze(-2) @ X)


def _from_right(X: torch.Tensor, v: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """X H = X − τ (X v) vᵀ for X [..., p, m]."""
    return X - (X @ v.unsqueeze(-1)) * (tau[..., None, None] * v.unsqueeze(-2))


def _factor(A: torch.Tensor, m: int, n: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """geqrf's (a [..., m, n], τ_j [...] and v_j [..., m] for each of the k = min(m, n) reflectors).

    Every step works on whole columns with constant masks (no empty slice at the last row, no eye / arange / triu /
    diag_embed, no full-range slice that export records as an alias), so every exporter and converter takes it."""
    import torch

    R, taus, vectors, columns = A, [], [], []
    for j in range(min(m, n)):
        below = _constant([float(i > j) for i in range(m)], A.dtype)
        unit = _constant([float(i == j) for i in range(m)], A.dtype)
        alpha = R[..., j, j]
        x = R.select(-1, j) * below  # [..., m]: the column strictly below the diagonal
        squares = (x * x).sum(-1)
        norm = torch.sqrt(alpha * alpha + squares)
        trivial = squares == 0
        beta = torch.where(trivial, alpha, torch.where(alpha >= 0, -norm, norm))
        tau = torch.where(trivial, torch.zeros_like(alpha), (beta - alpha) / beta)
        scale = torch.where(trivial, torch.zeros_like(alpha), 1.0 / torch.where(trivial, torch.ones_like(alpha),
                                                                                   alpha - beta))
        tail = x * scale.unsqueeze(-1)
        v = unit + tail
        R = _from_left(R, v, tau)
        taus.append(tau)
        vectors.append(v)
        columns.append(tail + beta.unsqueeze(-1) * unit)  # a's column j at and below the diagonal
    k = len(taus)
    if k == 0:
        return R, taus, vectors
    lower = torch.stack(columns, dim=-1)  # [..., m, k]
    if n > k:  # a wide matrix: its columns past k lie above the diagonal, R's
        lower = torch.cat([lower, R.narrow(-1, k, n - k)], dim=-1)
    return torch.where(_upper(m, n, strict=True), R, lower), taus, vectors


def geqrf(input: torch.Tensor, *, out: object = None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.geqrf: (a, tau) as LAPACK's geqrf."""
    import torch

    op = "torch.geqrf"
    refuse_out(_FAMILY, op, out)
    m, n = _matrix(input, op)
    a, taus, _ = _factor(input, m, n)
    if not taus:
        return a, input.new_zeros((*input.shape[:-2], 0))
    return a, torch.stack(taus, dim=-1)


def _product(vectors: list[torch.Tensor], taus: list[torch.Tensor], m: int, n: int, like: torch.Tensor
             ) -> torch.Tensor:
    """H_0 … H_{k−1} applied to the first n columns of I_m (right to left), batched as `like` [..., m, ·]."""
    Q = _identity(m, n, like.dtype)
    if not vectors:
        return Q.expand(*like.shape[:-2], m, n)
    for v, tau in zip(reversed(vectors), reversed(taus)):
        Q = _from_left(Q, v, tau)  # the first step broadcasts the constant to the batch
    return Q


def householder_product(A: torch.Tensor, tau: torch.Tensor, *, out: object = None) -> torch.Tensor:
    """torch.linalg.householder_product / orgqr: the first n columns of H_0 … H_{k−1}."""
    op = "torch.linalg.householder_product"
    refuse_out(_FAMILY, op, out)
    m, n = _matrix(A, op)
    k = int(tau.shape[-1])
    if m < n or k > n:
        raise RuntimeError(f"{op}: input.shape[-2] must be greater than or equal to input.shape[-1] and "
                           f"tau.shape[-1] at most input.shape[-1]")
    return _product([_vector(A, j) for j in range(k)], [tau.select(-1, j) for j in range(k)], m, n, A)


def ormqr(input: torch.Tensor, input2: torch.Tensor, input3: torch.Tensor, left: bool = True,
          transpose: bool = False, *, out: object = None) -> torch.Tensor:
    """torch.ormqr: Q·C, Qᵀ·C, C·Q or C·Qᵀ with Q = H_0 … H_{k−1} from geqrf's (input, tau = input2)."""
    op = "torch.ormqr"
    refuse_out(_FAMILY, op, out)
    _matrix(input, op)
    _matrix(input3, op)
    k = int(input2.shape[-1])
    # Q C = H_0 (H_1 (… H_{k−1} C)); Qᵀ C = H_{k−1} … H_0 C; C Q = ((C H_0) H_1) …; C Qᵀ = C H_{k−1} … H_0
    forward = (left and transpose) or (not left and not transpose)
    order = range(k) if forward else reversed(range(k))
    C = input3
    for j in order:
        v = _vector(input, j)
        C = _from_left(C, v, input2.select(-1, j)) if left else _from_right(C, v, input2.select(-1, j))
    return C


def linalg_qr(A: torch.Tensor, mode: str = "reduced", *, out: object = None) -> Any:
    """torch.linalg.qr (mode reduced, complete or r) as LAPACK computes it: geqrf, then orgqr."""
    import torch

    op = "torch.linalg.qr"
    refuse_out(_FAMILY, op, out)
    if mode not in ("reduced", "complete", "r"):
        raise RuntimeError(f"qr received unrecognized mode '{mode}' but expected one of 'reduced' (default), 'r', "
                           "or 'complete'")
    m, n = _matrix(A, op)
    k = min(m, n)
    a, taus, vectors = _factor(A, m, n)
    rows = m if mode == "complete" else k
    top = a if rows == m else a.narrow(-2, 0, rows)  # a full-range slice would be an alias op once exported
    R = torch.where(_upper(rows, n, strict=False), top, torch.zeros_like(top))
    if mode == "r":
        return returned("linalg_qr", (_constant([], A.dtype), R))
    return returned("linalg_qr", (_product(vectors, taus, m, rows, A), R))


def qr(input: torch.Tensor, some: bool = True, *, out: object = None) -> Any:
    """torch.qr (some=True: reduced, False: complete)."""
    Q, R = linalg_qr(input, "reduced" if some else "complete", out=out)
    return returned("qr", (Q, R))


def handlers() -> HandlerTable:
    """The functions this module replaces, for the linalg family's table."""
    import torch

    table = by_name({"geqrf": geqrf, "orgqr": householder_product, "ormqr": ormqr, "qr": qr}, (torch, torch.Tensor))
    table.update({torch.linalg.householder_product: householder_product, torch.linalg.qr: linalg_qr})
    return table
