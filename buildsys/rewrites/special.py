"""The special-function family: elementwise special functions and reductions written in the elementwise ops
every converter has (log, exp, sqrt, sin, where, round, sums).

- erfinv (torch.erfinv, torch.special.erfinv, Tensor.erfinv): Giles' single-precision approximation
  ("Approximating the erfinv function", GPU Computing Gems, 2011): a degree-8 polynomial in w = −log(1 − x²)
  (in √w − 3 for w ≥ 5), relative error under 4e-7 on (−1, 1); ±inf at ±1, NaN outside. float64 inputs get one
  Newton step on erf (error ~1e-13).
- ndtri (torch.special.ndtri): √2 · erfinv(2p − 1), with w = −log(4p(1 − p)) computed from p itself (no
  cancellation near 0 and 1).
- lgamma (torch.lgamma, torch.special.gammaln): Stirling's series at z ≥ 6 (to z⁻⁵: truncation error below
  3e-9), below 6 shifted up by the recurrence Γ(z + 6) = z(z + 1)…(z + 5)·Γ(z), below ½ the reflection formula
  with sin(π·(x − round(x))) (exact at large |x|).
- digamma (torch.digamma, torch.special.digamma / psi): the kernel's own (Cephes'), shared with the gamma
  family's polygamma (gamma.kernel_digamma): ∓inf at ±0, NaN at the negative integers and at −inf, as torch.
- mvlgamma (torch.mvlgamma, torch.special.multigammaln): p(p − 1)/4 · log π + Σⱼ lgamma(x − j/2).
- hypot: √(a² + b²). spherical_bessel_j0: sin(x)/x, 1 at 0. xlogy: x·log y, 0 where x = 0, NaN where y is.
- round(x, decimals=d): round(x·10ᵈ)/10ᵈ (d < 0: round(x/10⁻ᵈ)·10⁻ᵈ), as PyTorch's kernel computes it.
- var_mean / std_mean (every dim, correction / unbiased, keepdim): the mean, the sum of squared deviations
  over N − correction, N from the static sizes.

Why a rewrite and not a decomposition: PyTorch's tables have no decomposition for erfinv, ndtri, lgamma,
digamma, mvlgamma's lgamma, spherical_bessel_j0 or round(decimals) (torch._refs registers some, which export
as prims that no converter takes: erfinv → prims.erf_inv); hypot, xlogy, var_mean decompose only under
torch.export, while the TorchScript trace that the legacy ONNX exporter and Core ML's trace frontend read
records the op itself (measured on the OpInfo sample: benchmarks/op_matrix.py). Equivalence:
tests/rewrites/test_rewrite_families_special.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, by_name, refuse_out
from buildsys.rewrites.polynomial import horner

if TYPE_CHECKING:
    import torch

#: Giles' coefficients, highest power first: the central branch (w < 5, in w − 2.5) and the tail (in √w − 3).
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)
#: Below this, lgamma is shifted up by six before Stirling's series.
_SHIFT = 6.0



def _erfinv_from(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """erfinv(x) given w = −log((1 − x)(1 + x)), computed by the caller where it knows a better form."""
    import torch

    central = horner(_ERFINV_CENTRAL, w - 2.5)
    tail = horner(_ERFINV_TAIL, torch.sqrt(torch.clamp(w, min=5.0)) - 3.0)
    y = torch.where(w < 5.0, central, tail) * x
    if x.dtype == torch.float64:  # Newton on erf(y) = x, from float32's 4e-7 to float64's precision
        y = y - (torch.erf(y) - x) / (2.0 / math.sqrt(math.pi) * torch.exp(-y * y))
    return torch.where(x.abs() == 1.0, x * math.inf, y)  # the tail polynomial is not ±inf at w = inf


def erfinv(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("special", "torch.erfinv", out)
    x = input if input.is_floating_point() else input.to(torch.get_default_dtype())
    return _erfinv_from(x, -torch.log((1.0 - x) * (1.0 + x)))


def ndtri(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("special", "torch.special.ndtri", out)
    p = input if input.is_floating_point() else input.to(torch.get_default_dtype())
    return math.sqrt(2.0) * _erfinv_from(2.0 * p - 1.0, -torch.log(4.0 * p * (1.0 - p)))


def _reflected(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(below ½, y = x or 1 − x ≥ ½, π·(x − round(x))): what the reflection formulas need."""
    import torch

    below = x < 0.5
    return below, torch.where(below, 1.0 - x, x), math.pi * (x - torch.round(x))


def lgamma(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("special", "torch.lgamma", out)
    x = input if input.is_floating_point() else input.to(torch.get_default_dtype())
    below, y, angle = _reflected(x)
    small = y < _SHIFT
    low = torch.clamp(y, max=_SHIFT)  # the product of the six shifts stays below 12!/5! at most
    shift = torch.where(small, torch.log(low * (low + 1) * (low + 2) * (low + 3) * (low + 4) * (low + 5)), 0.0 * y)
    z = torch.where(small, y + _SHIFT, y)
    inv, inv2 = 1.0 / z, 1.0 / (z * z)
    series = (z - 0.5) * torch.log(z) - z + 0.5 * math.log(2 * math.pi) \
        + inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260)))
    upper = series - shift
    return torch.where(below, math.log(math.pi) - torch.log(torch.sin(angle).abs()) - upper, upper)


def digamma(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    from buildsys.rewrites.gamma import kernel_digamma

    refuse_out("special", "torch.digamma", out)
    return kernel_digamma(input if input.is_floating_point() else input.to(torch.get_default_dtype()))


def mvlgamma(input: torch.Tensor, p: int, *, out: object = None) -> torch.Tensor:
    refuse_out("special", "torch.mvlgamma", out)
    if p < 1:
        raise RuntimeError("p has to be greater than or equal to 1")
    terms = [lgamma(input - j / 2.0) for j in range(p)]
    return sum(terms[1:], terms[0]) + p * (p - 1) / 4.0 * math.log(math.pi)


def hypot(input: torch.Tensor, other: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("special", "torch.hypot", out)
    return torch.sqrt(input * input + other * other)


def spherical_bessel_j0(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("special", "torch.special.spherical_bessel_j0", out)
    x = input if input.is_floating_point() else input.to(torch.get_default_dtype())
    nonzero = torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.ones_like(x), torch.sin(nonzero) / nonzero)


def xlogy(input: Any, other: Any, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("special", "torch.xlogy", out)
    x, y = torch.as_tensor(input), torch.as_tensor(other)
    product = x * torch.log(y)
    zero = torch.zeros_like(product)
    return torch.where(y != y, y.to(product.dtype) + zero, torch.where(x == 0, zero, product))


def round_decimals(input: torch.Tensor, *, decimals: int = 0, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("special", "torch.round", out)
    if decimals == 0:
        return torch.round(input)
    if decimals > 0:
        scale = 10.0 ** decimals
        return torch.round(input * scale) / scale
    scale = 10.0 ** -decimals
    return torch.round(input / scale) * scale


def var_mean(input: torch.Tensor, dim: Any = None, unbiased: bool | None = None, keepdim: bool = False, *,
             correction: float | None = None, out: object = None) -> tuple[torch.Tensor, torch.Tensor]:

    from buildsys.rewrites.mechanism import static_size

    refuse_out("special", "torch.var_mean", out)
    if isinstance(dim, bool):  # var_mean(x, unbiased)
        dim, unbiased = None, dim
    if correction is None:
        correction = 0.0 if unbiased is False else 1.0
    dims = list(range(input.dim())) if dim is None or dim == [] else [dim] if isinstance(dim, int) else list(dim)
    count = math.prod(static_size(input, d, "special", "torch.var_mean") for d in dims)
    deviations = (input - input.mean(dim=dims, keepdim=True)) ** 2
    # N − correction ≤ 0 divides by zero, as torch does (inf, or NaN where every value is the mean)
    var = deviations.sum(dim=dims, keepdim=keepdim) / max(count - correction, 0.0)
    return var, input.mean(dim=dims, keepdim=keepdim)


def std_mean(input: torch.Tensor, dim: Any = None, unbiased: bool | None = None, keepdim: bool = False, *,
             correction: float | None = None, out: object = None) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    var, mean = var_mean(input, dim, unbiased, keepdim, correction=correction, out=out)
    return torch.sqrt(var), mean


def _handlers() -> HandlerTable:
    import torch

    table = by_name({"erfinv": erfinv, "lgamma": lgamma, "gammaln": lgamma, "digamma": digamma, "psi": digamma,
                     "mvlgamma": mvlgamma, "multigammaln": mvlgamma, "hypot": hypot, "xlogy": xlogy,
                     "round": round_decimals, "ndtri": ndtri, "spherical_bessel_j0": spherical_bessel_j0},
                    (torch, torch.Tensor, torch.special), in_place_on=torch.Tensor)
    table.update({torch.var_mean: var_mean, torch.std_mean: std_mean})
    return table


REWRITES = (
    Rewrite(
        name="special",
        version=2,  # 2: digamma as the kernel's (gamma.kernel_digamma)
        removes=("aten::erfinv", "aten::special_ndtri", "aten::lgamma", "aten::digamma", "aten::mvlgamma",
                 "aten::hypot", "aten::special_spherical_bessel_j0", "aten::xlogy", "aten::round",
                 "aten::var_mean", "aten::std_mean"),
        description="erfinv / ndtri / lgamma / digamma / mvlgamma / hypot / spherical_bessel_j0 / xlogy / "
                    "round(decimals) / var_mean / std_mean in log, exp, sqrt, sin, where and sums",
        handlers=_handlers,
    ),
)
