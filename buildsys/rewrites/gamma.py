"""The gamma family: the Hurwitz zeta function, polygamma and the orthogonal polynomials of torch.special, written
in elementwise ops (pow, log, exp, sqrt, sin, cos, floor, comparisons, where), as PyTorch's CPU kernels
(ATen/native/Math.h) compute them.

- zeta(x, q) (torch.special.zeta; x or q may be a number): Cephes' Euler–Maclaurin sum as the kernel runs it:
  q⁻ˣ + Σᵢ (q + i)⁻ˣ over i = 1…9 and on while q + i − 1 ≤ 9, then the tail at w = q + i with the kernel's
  12 Bernoulli terms, its factors (x + k)/w folded into one running product (no float32 overflow where the
  kernel's double accumulator has none). Unrolled to i = 25: exact down to q > −16; below (only integer x
  allows a negative q) the result is NaN. The kernel's early exits skip terms under 1.1e-16 of the sum: here
  they are added. Special values as the kernel: inf at x = 1, NaN below 1, inf at q = 0, −1, …, NaN for q < 0
  with a non-integer x, and at x = inf: inf for q < 1, 1 at q = 1, NaN above. float32 sums in float32 where
  the kernel sums in double: relative error ~1e-6.
- polygamma(n, x) (torch.polygamma, torch.special.polygamma, Tensor.polygamma(n), polygamma_), n a number ≥ 0:
  n = 0 the kernel's (Cephes') digamma (reflection below 0 with π·cos/sin, up to ten shifts to 10, the
  asymptotic series), n = 1 its trigamma (reflection below ½ with π²/sin²(πx), six shifts, asymptotic series),
  n ≥ 2 (−1)ⁿ⁺¹·n!·zeta(n + 1, x), as calc_polygamma; below x = −16, where zeta's unrolled terms stop, by the
  reflection ψ⁽ⁿ⁾(x) = (−1)ⁿψ⁽ⁿ⁾(1 − x) − π·dⁿ/dxⁿ cot(πx) (the derivative a polynomial in cot πx). There,
  near half-integers, a large n (30) cancels to rounding noise in the kernel's sum and here alike.
- The Chebyshev polynomials T, U, V, W and the shifted ones, Hermite H and He, Laguerre L and Legendre P
  (torch.special.*_polynomial_*; n a number or a tensor): buildsys/rewrites/orthogonal.py, whose docstring
  says how, and where a tensor n is bounded (Laguerre and Legendre: NaN above degree 128).

Why a rewrite: none of these ops has a decomposition, and neither ONNX exporter converts them (legacy at
opset 18: "Exporting the operator 'aten::special_zeta' to ONNX opset version 18 is not supported"; dynamo: no
ONNX function for aten.special_zeta, aten.polygamma, aten.special_chebyshev_polynomial_t, …). Equivalence:
tests/rewrites/test_rewrite_families_gamma.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name, refuse_out
from buildsys.rewrites.polynomial import horner

if TYPE_CHECKING:
    import torch

#: Cephes' Euler–Maclaurin denominators: (2k)!/B₂ₖ.
_ZETA_A = (12.0, -720.0, 30240.0, -1209600.0, 47900160.0, -1.8924375803183791606e9, 7.47242496e10,
           -2.950130727918164224e12, 1.1646782814350067249e14, -4.5979787224074726105e15,
           1.8152105401943546773e17, -7.1661652561756670113e18)
#: Cephes' digamma: the asymptotic series' coefficients (highest power first) and ψ(10).
_DIGAMMA_A = (8.33333333333333333333e-2, -2.10927960927960927961e-2, 7.57575757575757575758e-3,
              -4.16666666666666666667e-3, 3.96825396825396825397e-3, -8.33333333333333333333e-3,
              8.33333333333333333333e-2)
_PSI_10 = 2.25175258906672110764
#: The kernel sums at least this many terms, and on while q + i − 1 ≤ 9: unrolled to _TERMS (q > 9 − _TERMS).
_MIN_TERMS, _TERMS = 9, 25


def _promoted(*values: Any) -> tuple[torch.Tensor, ...]:
    import torch

    dtype = torch.result_type(*values) if len(values) == 2 else values[0].dtype
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return tuple(v.to(dtype) if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=dtype) for v in values)


def hurwitz(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """ζ(x, q) as the kernel computes it (see the module docstring); x and q tensors of one dtype."""
    import torch

    s = torch.pow(q, -x)
    a = q
    b = torch.zeros_like(s)
    for i in range(1, _TERMS + 1):
        term = torch.pow(q + float(i), -x)
        if i <= _MIN_TERMS:
            s, a, b = s + term, q + float(i), term
        else:  # the kernel's loop runs step i while the previous a = q + i − 1 is ≤ 9
            runs = q + float(i - 1) <= 9.0
            s = s + torch.where(runs, term, torch.zeros_like(term))
            a, b = torch.where(runs, q + float(i), a), torch.where(runs, term, b)
    w = a
    s = s + b * w / (x - 1.0)
    s = s - 0.5 * b
    product = b  # the kernel's a·b, kept as one product: a alone overflows float32
    k = 0.0
    for denominator in _ZETA_A:
        product = product * (x + k) / w
        s = s + product / denominator
        product = product * (x + (k + 1.0)) / w
        k += 2.0
    s = torch.where(q + float(_TERMS) <= 9.0, math.nan, s)  # beyond the unrolled terms
    at_infinity = torch.where(q < 1.0, math.inf, torch.where(q == 1.0, 1.0, math.nan)).to(s.dtype)
    s = torch.where(x == math.inf, at_infinity, s)
    non_positive = q <= 0
    s = torch.where(non_positive & (x != torch.floor(x)), math.nan, s)
    s = torch.where(non_positive & (q == torch.floor(q)), math.inf, s)
    return torch.where(x == 1.0, math.inf, torch.where(x < 1.0, math.nan, s))


def zeta(input: Any, other: Any, *, out: object = None) -> torch.Tensor:
    refuse_out("gamma", "torch.special.zeta", out)
    x, q = _promoted(input, other)
    return hurwitz(x, q)


def _trigamma(input: torch.Tensor) -> torch.Tensor:
    """The kernel's trigamma: reflection below ½, six shifts, then the asymptotic series."""
    import torch

    below = input < 0.5
    sin_pi_x = torch.sin(math.pi * input)
    reflected = -(math.pi * math.pi) / (sin_pi_x * sin_pi_x)
    x = torch.where(below, 1.0 - input, input)
    result = torch.where(below, reflected, torch.zeros_like(reflected))
    for _ in range(6):
        result = result + 1.0 / (x * x)
        x = x + 1.0
    ixx = 1.0 / (x * x)
    result = result + (1.0 + 1.0 / (2.0 * x) + ixx * (1.0 / 6 - ixx * (1.0 / 30 - ixx * (1.0 / 42)))) / x
    return torch.where(below, -result, result)


def kernel_digamma(input: torch.Tensor) -> torch.Tensor:
    """The kernel's (Cephes') digamma: ∓inf at ±0, NaN at negative integers, reflection below 0 (π·cot(π·r), r the
    distance to the nearest integer), up to ten shifts to reach 10, ψ(10) itself there, else the asymptotic series."""
    import torch

    from buildsys.rewrites.floating import signbit

    negative = input < 0
    whole = torch.where(negative, torch.ceil(input), torch.floor(input))
    x = torch.where(negative, 1.0 - input, input)
    result = torch.zeros_like(x)
    for _ in range(10):
        small = x < 10.0
        result = torch.where(small, result - 1.0 / x, result)
        x = torch.where(small, x + 1.0, x)
    z = 1.0 / (x * x)
    series = torch.where(x < 1e17, z * horner(_DIGAMMA_A, z), torch.zeros_like(z))
    value = torch.where(x == 10.0, result + _PSI_10, result + torch.log(x) - 0.5 / x - series)
    angle = math.pi * (input - torch.round(input))  # cot has period π: the nearest integer off, exactly
    value = torch.where(negative, value - math.pi * torch.cos(angle) / torch.sin(angle), value)
    value = torch.where(negative & (input == whole), math.nan, value)
    at_zero = torch.where(signbit(input), math.inf, -math.inf).to(value.dtype)
    return torch.where(input == 0, at_zero, value)


def polygamma(first: Any, second: Any, *, out: object = None) -> torch.Tensor:
    """torch.polygamma(n, input), and Tensor.polygamma(input, n)."""
    import torch

    refuse_out("gamma", "torch.polygamma", out)
    n, input = (second, first) if isinstance(first, torch.Tensor) else (first, second)
    if isinstance(n, bool) or not isinstance(n, int):
        raise RewriteNotApplicable("gamma", "torch.polygamma", f"n of type {type(n).__name__} (not an int)")
    if n < 0:
        raise RuntimeError("polygamma(n, x) does not support negative n.")
    (x,) = _promoted(input)
    if n == 0:
        return kernel_digamma(x)
    if n == 1:
        return _trigamma(x)
    scale = (1.0 if n % 2 else -1.0) * _float(math.factorial(n))
    # below the unrolled terms' reach, the reflection ψ⁽ⁿ⁾(x) = (−1)ⁿψ⁽ⁿ⁾(1 − x) − π·dⁿ/dxⁿ cot(πx)
    beyond = x <= 9.0 - _TERMS
    value = scale * hurwitz(torch.full_like(x, float(n + 1)), torch.where(beyond, 1.0 - x, x))
    angle = math.pi * (x - torch.round(x))
    derivative = horner(_cot_derivative(n), torch.cos(angle) / torch.sin(angle))
    power = math.pi ** (n + 1) if n < 600 else math.inf  # π⁶⁰⁰ is past float64 already
    reflected = (-1.0 if n % 2 else 1.0) * value - power * derivative
    pole = torch.full_like(x, math.copysign(math.inf, scale))  # at 0, −1, …: the kernel's zeta is inf there
    return torch.where(beyond, torch.where(x == torch.floor(x), pole, reflected), value)


def _float(value: int) -> float:
    """value as a float, inf past float64."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _cot_derivative(n: int) -> list[float]:
    """Pₙ with dⁿ/dxⁿ cot(πx) = πⁿ·Pₙ(cot πx), highest power first: P₀ = c, Pₖ₊₁ = −(1 + c²)·Pₖ'."""
    coefficients = [0, 1]  # lowest power first
    for _ in range(n):
        derivative = [k * c for k, c in enumerate(coefficients)][1:] or [0]
        product = [0] * (len(derivative) + 2)
        for k, c in enumerate(derivative):
            product[k] -= c
            product[k + 2] -= c
        coefficients = product
    return [_float(c) for c in reversed(coefficients)]


def _handlers() -> HandlerTable:
    import torch

    from buildsys.rewrites.orthogonal import chebyshev, recurrence

    replacements = {"zeta": zeta, "polygamma": polygamma}
    for kind in "tuvw":
        replacements[f"chebyshev_polynomial_{kind}"] = chebyshev(kind)
        replacements[f"shifted_chebyshev_polynomial_{kind}"] = chebyshev(kind, shifted=True)
    for family in ("hermite_polynomial_h", "hermite_polynomial_he", "laguerre_polynomial_l", "legendre_polynomial_p"):
        replacements[family] = recurrence(family)
    return by_name(replacements, (torch, torch.Tensor, torch.special), in_place_on=torch.Tensor)


_POLYNOMIALS = ("aten::special_chebyshev_polynomial_t", "aten::special_chebyshev_polynomial_u",
                "aten::special_chebyshev_polynomial_v", "aten::special_chebyshev_polynomial_w",
                "aten::special_shifted_chebyshev_polynomial_t", "aten::special_shifted_chebyshev_polynomial_u",
                "aten::special_shifted_chebyshev_polynomial_v", "aten::special_shifted_chebyshev_polynomial_w",
                "aten::special_hermite_polynomial_h", "aten::special_hermite_polynomial_he",
                "aten::special_laguerre_polynomial_l", "aten::special_legendre_polynomial_p")

REWRITES = (
    Rewrite(
        name="gamma",
        version=2,  # 2: the orthogonal polynomials' closed forms take the precise family's log1p
        removes=("aten::special_zeta", "aten::polygamma", "aten::special_polygamma") + _POLYNOMIALS,
        description="Hurwitz zeta / polygamma / Chebyshev (shifted too), Hermite, Laguerre and Legendre polynomials "
                    "in pow, log, exp, sqrt, sin, cos, floor and where",
        handlers=_handlers,
    ),
)
