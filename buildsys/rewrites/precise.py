"""The precise family: log1p and expm1 written so they keep their precision in formats that have no such op.

ONNX, TFLite and Core ML have no log1p or expm1: their exporters write log(1 + x) and exp(x) − 1, which lose every
digit of a small x (log(1 + 1e-8) is 0 in float32). Here each is its Taylor series where |x| < 1/8 (x·P(x), P by
Horner's rule, as many terms as the dtype's precision needs: 8 in float32, 17 in float64 for log1p) and the plain
form elsewhere, whose relative error there is at most about 8 ulp (the rounding of 1 + x, or of exp(x) − 1, over a
result of at least 1/8). Every converter keeps a polynomial as it is. Kahan's shorter log(w)·x/(w − 1), w = 1 + x,
is not used: OpenVINO fuses the (x + 1) − 1 it relies on back into x (its linear-op fusion), and gets
soft_margin_loss's small values 8 % wrong.

Nothing refuses these ops, so no refusal points here: a check that missed its tolerance on a route whose program
holds one of them is answered by this family (`Rewrite.precise`; buildsys/planning/failures.py). Equivalence:
tests/rewrites/test_rewrite_families_precise.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, by_name, refuse_out
from buildsys.rewrites.polynomial import horner

if TYPE_CHECKING:
    import torch

#: Below this |x| the series, above it the plain form.
SMALL = 0.125


def _floating(x: torch.Tensor) -> torch.Tensor:
    import torch

    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _series(dtype: torch.dtype, coefficient: Any) -> list[float]:
    """P's coefficients, highest power first: coefficient(k) for k = 0, 1, … until the next term, relative to the
    first, is below a quarter of the dtype's epsilon at |x| = SMALL."""
    import torch

    eps = torch.finfo(dtype).eps
    terms = [coefficient(0)]
    while abs(coefficient(len(terms))) * SMALL ** len(terms) >= eps / 4:
        terms.append(coefficient(len(terms)))
    return terms[::-1]


def log1p(input: torch.Tensor, *, out: Any = None) -> torch.Tensor:
    """log(1 + x): x·(1 − x/2 + x²/3 − …) where |x| < 1/8, else log(1 + x)."""
    import torch

    refuse_out("precise", "torch.log1p", out)
    x = _floating(input)
    series = x * horner(_series(x.dtype, lambda k: (-1.0) ** k / (k + 1)), x)
    return torch.where(x.abs() < SMALL, series, torch.log(1.0 + x))


def expm1(input: torch.Tensor, *, out: Any = None) -> torch.Tensor:
    """exp(x) − 1: x·(1 + x/2! + x²/3! + …) where |x| < 1/8, else exp(x) − 1."""
    import torch

    refuse_out("precise", "torch.expm1", out)
    x = _floating(input)
    series = x * horner(_series(x.dtype, lambda k: 1.0 / math.factorial(k + 1)), x)
    return torch.where(x.abs() < SMALL, series, torch.exp(x) - 1.0)


def _handlers() -> HandlerTable:
    import torch

    return by_name({"log1p": log1p, "expm1": expm1}, [torch, torch.special, torch.Tensor], in_place_on=torch.Tensor)


REWRITES = (
    Rewrite(
        name="precise",
        version=1,
        removes=("aten::log1p", "aten::special_log1p", "aten::expm1", "aten::special_expm1"),
        description="log1p / expm1 as their Taylor series for small arguments (their digits kept), log(1 + x) and "
                    "exp(x) − 1 elsewhere, for formats that write them as those plain forms everywhere",
        handlers=_handlers,
        precise=("aten::log1p", "aten::special_log1p", "aten::expm1", "aten::special_expm1"),
    ),
)
