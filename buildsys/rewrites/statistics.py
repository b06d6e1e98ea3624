"""The statistics family: torch.cov and torch.corrcoef written out, as torch's composite computes them.

- cov(input, correction, fweights, aweights): the weights' product w (fweights · aweights, either, or none), the
  weighted mean of each variable, the centred observations times w against their transpose, over the normaliser
  torch uses (Σw − correction, or Σw − correction·Σ(w·a)/Σw with analytic weights, clamped at 0); squeezed.
- corrcoef(input): cov, then divided by the outer product of its diagonal's square roots, clamped to [−1, 1] (a
  0-d covariance gives c / c, as torch).

Why a rewrite: torch.cov checks its frequency weights with a data-dependent torch.equal, which torch.export
refuses (DataDependentOutputException: aten.equal), and the ONNX exporters and coremltools have no cov or corrcoef;
PyTorch has no decomposition of either. Equivalence: tests/rewrites/test_rewrite_families_statistics.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name

if TYPE_CHECKING:
    import torch


def cov(input: torch.Tensor, *, correction: int = 1, fweights: torch.Tensor | None = None,
        aweights: torch.Tensor | None = None) -> torch.Tensor:
    """torch.cov of [variables, observations] (or one variable's observations)."""
    import torch

    if input.is_complex():
        raise RewriteNotApplicable("statistics", "torch.cov", "a complex input")
    x = input if input.dim() == 2 else input.reshape(1, -1)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    observations = int(x.shape[1])
    w = fweights
    if aweights is not None:
        w = aweights if w is None else w * aweights
    if w is None:
        total: Any = observations
        mean = x.mean(dim=1)
        norm: Any = max(observations - correction, 0)
    else:
        w = w.to(x.dtype)
        total = w.sum()
        mean = (x * w).sum(dim=1) / total
        if correction == 0:
            norm = total
        elif aweights is None:
            norm = total - correction
        else:
            norm = total - correction * (w * aweights.to(x.dtype)).sum() / total
        norm = torch.clamp(norm, min=0)
    centred = x - mean.unsqueeze(1)
    weighted = centred if w is None else centred * w
    return (torch.matmul(weighted, centred.transpose(0, 1)) / norm).squeeze()


def corrcoef(input: torch.Tensor) -> torch.Tensor:
    """torch.corrcoef: the covariance over the outer product of the standard deviations, clamped to [−1, 1]."""
    import torch

    c = cov(input)
    if c.dim() == 0:
        return c / c
    n = int(c.shape[0])
    from buildsys.rewrites.householder import _constant

    eye = _constant([[float(i == j) for j in range(n)] for i in range(n)], c.dtype)
    std = torch.sqrt((c * eye).sum(-1))
    c = c / std.unsqueeze(1)
    c = c / std.unsqueeze(0)
    return torch.clamp(c, -1.0, 1.0)


def _handlers() -> HandlerTable:
    import torch

    return by_name({"cov": cov, "corrcoef": corrcoef}, (torch, torch.Tensor))


REWRITES = (
    Rewrite(
        name="statistics",
        version=1,
        removes=("aten::cov", "aten::corrcoef"),
        description="cov (correction, frequency and analytic weights) and corrcoef as means, a matmul and a division",
        handlers=_handlers,
        signs=(r"DataDependentOutputException: aten\.equal",),
    ),
)
