"""The distance family: torch.cdist, pdist, pairwise_distance and dist with elementwise ops and matmuls.

- cdist(x1, x2, p, compute_mode): p = 2 where torch uses its matmul form (compute_mode
  'use_mm_for_euclid_dist', or the default with more than 25 rows on either side) is that form, written
  as torch's `_euclidean_dist` computes it ([-2·x1, |x1|², 1] · [x2, 1, |x2|²]ᵀ, clamped at 1e-30, sqrt);
  otherwise every pair's difference [..., P, R, M] reduced with the p-norm (p = 0 counts non-zeros, inf
  takes the largest).
- pdist(x, p): the rows i < j of the same differences, picked with constant row indices.
- pairwise_distance(x1, x2, p, eps, keepdim): the p-norm of x1 − x2 + eps over the last dim, as torch.
- dist(x1, x2, p): the p-norm of the whole difference.

Norms are written as abs / pow / sum / sqrt / amax, so no norm op is left.

Not cosine_similarity: every converter here takes it (benchmarks/rewrite_matrix.py --ops), so it is left
as it is.

Why a rewrite and not a decomposition: cdist and pdist decompose only into `_cdist_forward` and
`_pdist_forward`, which no table lowers further; pairwise_distance and dist decompose
into `linalg_vector_norm` only under torch.export: the TorchScript trace that the legacy ONNX exporter
and Core ML's trace frontend read records the ops themselves. Equivalence: tests/rewrites/test_rewrite_families_distance.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from buildsys.rewrites.base import Handler, HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch


def norm(x: torch.Tensor, p: float, dim: int, keepdim: bool = False) -> torch.Tensor:
    """The p-norm of x along `dim` (p = 0: the count of non-zeros; ±inf: the largest / smallest |x|)."""
    import math

    import torch

    if p == 0:
        return (x != 0).to(x.dtype).sum(dim=dim, keepdim=keepdim)
    if math.isinf(p):
        magnitude = x.abs()
        return magnitude.amax(dim=dim, keepdim=keepdim) if p > 0 else magnitude.amin(dim=dim, keepdim=keepdim)
    if p == 1:
        return x.abs().sum(dim=dim, keepdim=keepdim)
    if p == 2:
        return torch.sqrt((x * x).sum(dim=dim, keepdim=keepdim))
    if p < 0:
        raise RewriteNotApplicable("distance", "a p-norm", f"p={p} (a negative p)")
    return x.abs().pow(p).sum(dim=dim, keepdim=keepdim).pow(1.0 / p)


def cdist(x1: torch.Tensor, x2: torch.Tensor, p: float = 2.0,
          compute_mode: str = "use_mm_for_euclid_dist_if_necessary") -> torch.Tensor:
    import torch

    from buildsys.rewrites.mechanism import static_size

    if p < 0:
        raise RuntimeError(f"cdist only supports non-negative p values, got {p}")
    if x1.dim() < 2 or x2.dim() < 2:
        raise RuntimeError("cdist only supports at least 2D tensors")
    if compute_mode not in ("use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist",
                            "donot_use_mm_for_euclid_dist"):
        raise ValueError(f"{compute_mode} is not a valid value for compute_mode")
    rows, cols = static_size(x1, -2, "distance", "torch.cdist"), static_size(x2, -2, "distance", "torch.cdist")
    matmul = p == 2 and (compute_mode == "use_mm_for_euclid_dist" or
                         (compute_mode == "use_mm_for_euclid_dist_if_necessary" and (rows > 25 or cols > 25)))
    if matmul:
        sq1, sq2 = (x1 * x1).sum(-1, keepdim=True), (x2 * x2).sum(-1, keepdim=True)
        left = torch.cat([x1 * -2.0, sq1, torch.ones_like(sq1)], dim=-1)
        right = torch.cat([x2, torch.ones_like(sq2), sq2], dim=-1)
        return torch.sqrt(torch.clamp(torch.matmul(left, right.transpose(-2, -1)), min=1e-30))
    return norm(x1.unsqueeze(-2) - x2.unsqueeze(-3), p, dim=-1)


def pdist(input: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    import numpy as np

    from buildsys.rewrites.mechanism import constant, static_size

    if input.dim() != 2:
        raise RuntimeError(f"pdist only supports 2D tensors, got: {input.dim()}D")
    from buildsys.rewrites.triangular import triangle_indices

    rows = static_size(input, 0, "distance", "torch.pdist")
    first, second = (constant(np.asarray(i, dtype=np.int64)) for i in triangle_indices(rows, rows, 1, upper=True))
    return norm(input.index_select(0, first) - input.index_select(0, second), p, dim=-1)


def pairwise_distance(x1: torch.Tensor, x2: torch.Tensor, p: float = 2.0, eps: float = 1e-6,
                      keepdim: bool = False) -> torch.Tensor:
    return norm(x1 - x2 + eps, p, dim=max(x1.dim(), x2.dim()) - 1, keepdim=keepdim)


def dist(input: torch.Tensor, other: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return norm((input - other).flatten(), float(p), dim=0)


def _handlers() -> HandlerTable:
    import torch
    import torch.nn.functional as F

    table: dict[Callable[..., object], Handler] = {torch.cdist: cdist, torch.functional.cdist: cdist, torch.dist: dist, torch.Tensor.dist: dist}
    for name, impl in (("pdist", pdist), ("pairwise_distance", pairwise_distance)):
        table[getattr(torch, name)] = impl
        table[getattr(F, name)] = impl
    return table


REWRITES = (
    Rewrite(
        name="distance",
        version=1,
        removes=("aten::cdist", "aten::_cdist_forward", "aten::_euclidean_dist", "aten::pdist", "aten::_pdist_forward",
                 "aten::pairwise_distance", "aten::dist"),
        description="cdist / pdist / pairwise_distance / dist (every p, compute_mode, eps, keepdim) as "
                    "differences, matmuls and written-out norms",
        handlers=_handlers,
        signs=(r"\bCDist\b", r"\bcdist\b",),
    ),
)
