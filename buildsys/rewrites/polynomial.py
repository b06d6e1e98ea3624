"""Polynomial evaluation unrolled into the graph, for every family's polynomials and rational approximations
(special, floating, gamma, orthogonal, bessel). A leaf module: the families import it and each other, never
the other way round (tests/meta/test_imports.py: no import cycle)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


def horner(coefficients: Sequence[float], t: torch.Tensor) -> torch.Tensor:
    """Σ cᵢ·tⁱ by Horner's rule, coefficients highest power first (unrolled into the graph)."""
    result = t * 0.0 + coefficients[0]
    for c in coefficients[1:]:
        result = result * t + c
    return result
