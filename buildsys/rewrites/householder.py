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

from typing import TYPE_CHECKING, Any

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


def _vector(a: torch.Tensor, j: int) -> torch.Tensor:
    """v_j [..., m] of the reflectors geqrf stored in `a`: column j below the diagonal is its tail."""
    return _with_head(a[..., j + 1:, j], j)


def _with_head(tail: torch.Tensor, j: int) -> torch.Tensor:
    """A reflector's vector: j zeros, a one, then `tail` [..., m − j − 1]."""
    import torch

    lead = tail.shape[:-1]
    return torch.cat([torch.zeros(*lead, j, dtype=tail.dtype), torch.ones(*lead, 1, dtype=tail.dtype), tail], dim=-1)


def _from_left(X: torch.Tensor, v: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """H X = X − τ v (vᵀ X) for X [..., m, p], v [..., m], τ [...]."""
    return X - (tau[..., None, None] * v.unsqueeze(-1)) * (v.unsqueeze(-2) @ X)


def _from_right(X: torch.Tensor, v: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """X H = X − τ (X v) vᵀ for X [..., p, m]."""
    return X - (X @ v.unsqueeze(-1)) * (tau[..., None, None] * v.unsqueeze(-2))


def geqrf(input: torch.Tensor, *, out: object = None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.geqrf: (a, tau) as LAPACK's geqrf."""
    import torch

    op = "torch.geqrf"
    refuse_out(_FAMILY, op, out)
    m, n = _matrix(input, op)
    R, taus, betas, tails = input, [], [], []
    for j in range(min(m, n)):
        alpha, x = R[..., j, j], R[..., j + 1:, j]
        norm = torch.sqrt(alpha * alpha + (x * x).sum(-1))
        trivial = (x * x).sum(-1) == 0
        beta = torch.where(trivial, alpha, torch.where(alpha >= 0, -norm, norm))
        tau = torch.where(trivial, torch.zeros_like(alpha), (beta - alpha) / beta)
        tail = x * torch.where(trivial, torch.zeros_like(alpha), 1.0 / (alpha - beta)).unsqueeze(-1)
        v = _with_head(tail, j)
        R = _from_left(R, v, tau)
        taus.append(tau)
        betas.append(beta)
        tails.append(v)
    rows = torch.arange(m)[:, None]
    cols = torch.arange(n)[None, :]
    if not taus:
        return torch.triu(R), torch.zeros(*input.shape[:-2], 0, dtype=input.dtype)
    k = len(taus)
    below = torch.stack(tails, dim=-1)                                           # [..., m, k]
    if n > k:
        below = torch.cat([below, torch.zeros(*below.shape[:-1], n - k, dtype=R.dtype)], dim=-1)
    diagonal = torch.diag_embed(torch.stack(betas, dim=-1), dim1=-2, dim2=-1)       # [..., k, k]
    diagonal = torch.nn.functional.pad(diagonal, (0, n - k, 0, m - k))
    a = torch.where(rows < cols, R, torch.where(rows == cols, diagonal, below))
    return a, torch.stack(taus, dim=-1)


def householder_product(A: torch.Tensor, tau: torch.Tensor, *, out: object = None) -> torch.Tensor:
    """torch.linalg.householder_product / orgqr: the first n columns of H_0 … H_{k−1}."""
    import torch

    op = "torch.linalg.householder_product"
    refuse_out(_FAMILY, op, out)
    m, n = _matrix(A, op)
    k = int(tau.shape[-1])
    if m < n or k > n:
        raise RuntimeError(f"{op}: input.shape[-2] must be greater than or equal to input.shape[-1] and "
                           f"tau.shape[-1] at most input.shape[-1]")
    eye = torch.eye(m, n, dtype=A.dtype).expand(*A.shape[:-2], m, n)
    Q = eye
    for j in reversed(range(k)):
        Q = _from_left(Q, _vector(A, j), tau[..., j])
    return Q


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
        C = _from_left(C, v, input2[..., j]) if left else _from_right(C, v, input2[..., j])
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
    a, tau = geqrf(A)
    columns = m if mode == "complete" else k
    R = torch.triu(a[..., :columns, :])
    if mode == "r":
        return returned("linalg_qr", (torch.zeros(0, dtype=A.dtype), R))
    reflectors = a[..., :, :k]
    if columns > k:  # the complete Q of a tall matrix: its k reflectors applied to all of I_m
        reflectors = torch.cat([reflectors, torch.zeros(*a.shape[:-2], m, columns - k, dtype=a.dtype)], dim=-1)
    Q = householder_product(reflectors, tau) if k else torch.eye(m, columns, dtype=A.dtype).expand(
        *A.shape[:-2], m, columns)
    return returned("linalg_qr", (Q, R))


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
