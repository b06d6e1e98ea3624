"""The precise family: log1p, expm1, linspace and logspace as torch computes them, where exporters write less.

ONNX, TFLite and Core ML have no log1p or expm1: their exporters write log(1 + x) and exp(x) − 1, which lose every
digit of a small x (log(1 + 1e-8) is 0 in float32). Here each is its Taylor series where |x| < 1/8 (x·P(x), P by
Horner's rule, as many terms as the dtype's precision needs: 8 in float32, 17 in float64 for log1p) and the plain
form elsewhere, whose relative error there is at most about 8 ulp (the rounding of 1 + x, or of exp(x) − 1, over a
result of at least 1/8). Every converter keeps a polynomial as it is. Kahan's shorter log(w)·x/(w − 1), w = 1 + x,
is not used: OpenVINO fuses the (x + 1) − 1 it relies on back into x (its linear-op fusion), and gets
soft_margin_loss's small values 8 % wrong.

linspace and logspace with tensor bounds (0-d tensors, as torch requires; `torch.linspace(t0, t1, n)`, a grid
spanning a box a model computed) are exported as start + i·(end − start)/(n − 1): for n = 1 that is 0·inf = NaN
(measured: the legacy and dynamo ONNX exporters into ONNX Runtime and ONNX Runtime Web), and OpenVINO's reading of
it gives the midpoint. Here they are torch's CPU kernel (RangeFactoriesKernel.cpp): start + i·step below the
middle, end − (n − 1 − i)·step from it, step in the output dtype, n ≤ 1 at its static length ([start] or []),
logspace base raised to that; bounds given as numbers are computed here once and become a constant.

Nothing refuses these ops, so no refusal points here: a check that missed its tolerance on a route whose program
holds one of them is answered by this family (`Rewrite.precise`; buildsys/planning/failures.py). Equivalence:
tests/rewrites/test_rewrite_families_precise.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name, refuse_out
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


def _bound(value: Any, dtype: torch.dtype) -> torch.Tensor:
    """A bound of linspace as a [1] tensor of the output dtype ([1], not 0-d: the legacy ONNX exporter casts a 0-d
    float64 tensor meeting a Python number to float32)."""
    return value.to(dtype).reshape(1)


def spaced(start: Any, end: Any, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """torch.linspace(start, end, steps) in float `dtype` as torch's CPU kernel computes it, the bounds numbers or
    0-d / [1] tensors: start + i·step for i < steps // 2, end − (steps − 1 − i)·step after; [start] for one step."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    if steps < 0:
        raise RuntimeError("linspace: number of steps must be non-negative")
    index = np.arange(steps)
    if not any(isinstance(b, torch.Tensor) for b in (start, end)):  # numbers: one constant, in the dtype's arithmetic
        kind: Any = {torch.float16: np.float16, torch.float64: np.float64}.get(dtype, np.float32)
        low, high = kind(start), kind(end)
        step = (high - low) / kind(max(steps - 1, 1))
        values = np.where(index < steps // 2, low + index.astype(kind) * step,
                          high - (steps - 1 - index).astype(kind) * step)
        return constant(values if steps != 1 else np.asarray([low]), dtype)
    low, high = (_bound(b if isinstance(b, torch.Tensor) else torch.tensor([float(b)], dtype=dtype), dtype)
                 for b in (start, end))
    if steps <= 1:
        return low[:steps]
    step = (high - low) / (steps - 1)
    return torch.where(constant(index < steps // 2), low + constant(index.astype(np.float64), dtype) * step,
                       high - constant((steps - 1 - index).astype(np.float64), dtype) * step)


def _space_dtype(op: str, dtype: Any) -> torch.dtype:
    import torch

    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise RewriteNotApplicable("precise", op, f"dtype {dtype} (torch rounds an integer range its own way)")
    return dtype


def linspace(start: Any, end: Any, steps: int, *, out: Any = None, dtype: Any = None, **_placement: Any) -> torch.Tensor:
    """torch.linspace without its op (the placement arguments, layout / device / requires_grad, are the graph's)."""
    refuse_out("precise", "torch.linspace", out)
    return spaced(start, end, int(steps), _space_dtype("torch.linspace", dtype))


def logspace(start: Any, end: Any, steps: int, base: float = 10.0, *, out: Any = None, dtype: Any = None,
             **_placement: Any) -> torch.Tensor:
    """torch.logspace: base to the power of torch's linspace, in the output dtype."""
    import torch

    refuse_out("precise", "torch.logspace", out)
    exponents = spaced(start, end, int(steps), _space_dtype("torch.logspace", dtype))
    return torch.pow(torch.full((), float(base), dtype=exponents.dtype), exponents)


def _handlers() -> HandlerTable:
    import torch

    table = by_name({"log1p": log1p, "expm1": expm1}, [torch, torch.special, torch.Tensor], in_place_on=torch.Tensor)
    return {**table, **by_name({"linspace": linspace, "logspace": logspace}, [torch])}


REWRITES = (
    Rewrite(
        name="precise",
        version=2,
        removes=("aten::log1p", "aten::special_log1p", "aten::expm1", "aten::special_expm1", "aten::linspace",
                 "aten::logspace"),
        description="log1p / expm1 as their Taylor series for small arguments (their digits kept), log(1 + x) and "
                    "exp(x) − 1 elsewhere, for formats that write them as those plain forms everywhere; linspace / "
                    "logspace as torch's kernel (one step is [start], not 0·inf)",
        handlers=_handlers,
        precise=("aten::log1p", "aten::special_log1p", "aten::expm1", "aten::special_expm1", "aten::linspace",
                 "aten::logspace"),
    ),
)
