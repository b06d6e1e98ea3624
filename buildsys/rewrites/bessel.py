"""The Bessel-function family: every Bessel-type function of torch computed as PyTorch's CPU kernels compute
them (Cephes' approximations, ATen/native/Math.h), in the elementwise ops every converter has (exp, log, sqrt,
sin, cos, abs, clamp, where, comparisons, mul, add, div). The coefficient tables, copied digit for digit from
those kernels, are in buildsys/rewrites/bessel_tables.py (a shared module: they would put this one over the
project's size limit).

- i0 / i0e (torch.i0, torch.special.i0, Tensor.i0, i0_; torch.special.i0e) and i1 / i1e (torch.special.i1,
  torch.special.i1e): Chebyshev series of exp(−|x|)·I(x) on [0, 8] (in |x|/2 − 2) and of exp(−|x|)·√|x|·I(x)
  on (8, ∞) (in 32/|x| − 2), each evaluated by Clenshaw's recurrence unrolled over its fixed coefficients
  (chbevl); i0 and i1 multiply by exp(|x|) first and divide by √|x| after, in the kernel's order, so float32
  overflows to inf where torch's does (|x| > 88.7); i0(±inf) and i1(±inf) are NaN (torch's inf/inf). i1 / i1e
  are odd; in float32 they read the kernel's shorter float tables (the last 17 and 7 coefficients).
- modified_bessel_i0 / modified_bessel_i1: the same series (the double tables in every dtype, as that kernel).
- modified_bessel_k0 / k1 and scaled_modified_bessel_k0 / k1: on (0, 2] a Chebyshev series in x² − 2 plus
  the log(x/2)·I term, on (2, ∞) a series in 8/x − 2 times exp(−x)/√x (the scaled forms drop the exp(−x), and
  multiply the (0, 2] branch by exp(x)); +inf at 0, NaN below.
- bessel_j0 / j1: on [0, 5] rational functions in x² times the factors (x² − r₁)(x² − r₂) of the first two
  zeros (j0: 1 − x²/4 under 1e-5), above 5 Hankel's asymptotic form √(2/πx)·(P·cos ξ − (5/x)·Q·sin ξ),
  ξ = x − π/4 (j1: x − 3π/4), P and Q rational in 25/x²; j0 is even, j1 odd; NaN at ±inf (cos(inf)).
- bessel_y0 / y1: on (0, 5] a rational function in x² plus (2/π)·log(x)·j0(x) (y1: (2/π)·(j1(x)·log(x) −
  1/x)), above 5 the same asymptotic form with sin and cos exchanged; −inf at 0, NaN below.
- airy_ai (torch.special.airy_ai, airy_ai_forward): x < −2.09 the oscillating form (1/√π)·(−x)^(−¼)·
  (sin θ·(1 + z²·AFN/AFD) − cos θ·z·AGN/AGD), ζ = (2/3)·(−x)^(3/2), z = 1/ζ, θ = ζ + π/4 (NaN where ζ
  overflows to inf, below −3.07e25 in float32, −2.0e205 in float64, as sin(inf)); x ≥ 2.09 (1/√π)·(AN/AD)(1/ζ)
  / (2·x^¼·exp(ζ)) (float32's underflows to 0 past 25.77, as torch's); 0 above 103.892; between,
  Ai(0)·f − |Ai′(0)|·g, f and g the Maclaurin series in x³. The kernel loops until a term of f is below
  epsilon relative to f: at most 14 times (17 beside f's zero at −1.98636), but from the 13th term on
  (|x³| ≤ 9.13: under 1e-19) nothing reaches the result's last bit, so 12 terms are unrolled, bit-identical to
  the loop in float32 and float64 (checked on 4e5 points of the interval, and the floats beside f's zero). The
  kernel's 8.3203353 changes nothing (above 2.09 it returns the asymptotic form either way). NaN at ±inf.
  torch has no float16 / bfloat16 airy_ai kernel; the rewrite computes them in float32.

Accuracy: the same approximations as torch's, so the difference is rounding, bounded by the check of
tests/rewrites/test_rewrite_families_bessel.py (max abs error ≤ 1e-4 · max|torch's value| + 1e-6; measured over
−85…85: under 6e-7 of max|torch's value| in float32, 2e-15 in float64; airy_ai over −200…30: 8e-5 and 1.5e-13 in
eager torch, whose float32 and float64 sqrt are an ulp off on AVX512 builds (PyTorch 2.13) and shift ζ by a few
ulps; with a correctly rounded sqrt, as ONNX Runtime's, 1e-7 and 3e-16); NaN, ±inf and the undefined values are
where torch's.
Each branch is evaluated on a clamped input (where() computes both sides), so the unused one stays finite; the
NaN at ±inf (i0, i1, j, y, airy_ai) and the NaN inputs are set by where() outright, since a converter's runtime need not
make NaN of inf/inf, cos(inf) or clamp(NaN) (ONNX Runtime does not).
Integer inputs are computed in the default float dtype as torch promotes them, float16 / bfloat16 in float32
and cast back (torch's i0 / i1 kernels upcast them the same way).

Why a rewrite and not a decomposition: PyTorch's tables have no decomposition for modified_bessel_*,
scaled_modified_bessel_*, bessel_y0, bessel_y1 or airy_ai (torch.export keeps the op); those for i0, i0e, i1, i1e,
bessel_j0 and bessel_j1 are torch._refs that lower to prims (aten.i0 → prims.bessel_i0, bessel_j0 →
prims.bessel_j0) that no converter takes, and none of them is in the core ATen decompositions, so
run_decompositions keeps every one of these ops (special_i0 only becomes aten.i0). Equivalence:
tests/rewrites/test_rewrite_families_bessel.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

from buildsys.rewrites import bessel_tables as tables
from buildsys.rewrites.base import HandlerTable, Rewrite, by_name, in_place, refuse_out
from buildsys.rewrites.polynomial import horner

if TYPE_CHECKING:
    import torch

#: The squares of J0's and J1's first two zeros (the factors of the kernels' [0, 5] branch).
_J0_ZEROS = (5.78318596294678452118e+00, 3.04712623436620863991e+01)
_J1_ZEROS = (1.46819706421238932572e+01, 4.92184563216946036703e+01)
_TWO_OVER_PI = 0.636619772367581343075535053490057448
_SQRT_TWO_OVER_PI = 0.797884560802865355879892119868763737
_QUARTER_PI = 0.785398163397448309615660845819875721
_THREE_QUARTERS_PI = 2.356194490192344928846982537459627163


def _chbevl(t: torch.Tensor, coefficients: Sequence[float]) -> torch.Tensor:
    """Σ' cᵢ·Tᵢ(t/2) by Clenshaw's recurrence (Cephes' chbevl), coefficients highest order first."""
    b0, b1 = t * 0.0 + coefficients[0], t * 0.0
    b2 = b1
    for c in coefficients[1:]:
        b2, b1 = b1, b0
        b0 = t * b1 - b2 + c
    return 0.5 * (b0 - b2)


def _odd(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.where(x < 0, -value, value)


# --- modified Bessel functions of the first kind ------------------------------------------------------------

def _i_below_8(s: torch.Tensor, a: Sequence[float], first: bool, scaled: bool) -> torch.Tensor:
    """I0 / I1 (scaled: times exp(−s)) for 0 ≤ s ≤ 8."""
    import torch

    series = _chbevl(s / 2.0 - 2.0, a)
    if scaled:
        return series * s if first else series
    return torch.exp(s) * s * series if first else torch.exp(s) * series


def _bessel_i(x: torch.Tensor, first: bool, scaled: bool, float32_tables: bool) -> torch.Tensor:
    import torch

    a: Sequence[float] = tables.I1_A if first else tables.I0_A
    b: Sequence[float] = tables.I1_B if first else tables.I0_B
    if first and float32_tables and x.dtype != torch.float64:  # calc_i1 / calc_i1e's float tables
        a, b = a[-tables.I1_A_FLOAT32:], b[-tables.I1_B_FLOAT32:]
    ax = x.abs()
    small = _i_below_8(torch.clamp(ax, max=8.0), a, first, scaled)
    high = torch.clamp(ax, min=8.0)  # ±inf stays inf: 32/inf = 0
    series = _chbevl(32.0 / high - 2.0, b)
    large = (series if scaled else torch.exp(high) * series) / torch.sqrt(high)
    value = torch.where(ax <= 8.0, small, large)
    return _odd(x, value) if first else value


# --- modified Bessel functions of the second kind -----------------------------------------------------------

def _bessel_k(x: torch.Tensor, first: bool, scaled: bool) -> torch.Tensor:
    import torch

    low = torch.where(x > 0, torch.clamp(x, max=2.0), torch.ones_like(x))  # (0, 2]
    series = _chbevl(low * low - 2.0, tables.K1_A if first else tables.K0_A)
    if first:
        log_half = torch.log(0.5 * low)
        small = log_half * _i_below_8(low, tables.I1_A, True, False) + series / low
    else:  # k0's kernel takes log(0.5 * x) in double (0.5 is a double there): float32's subnormal x stay finite
        in_double = not scaled and low.dtype != torch.float64
        log_half = torch.log(low) - math.log(2.0) if in_double else torch.log(0.5 * low)
        small = series - log_half * _i_below_8(low, tables.I0_A, False, False)
    if scaled:
        small = small * torch.exp(low)
    high = torch.clamp(x, min=2.0)
    large = _chbevl(8.0 / high - 2.0, tables.K1_B if first else tables.K0_B)
    if not scaled:
        large = torch.exp(-high) * large
    large = large / torch.sqrt(high)
    value = torch.where(x <= 2.0, small, large)
    return torch.where(x == 0, math.inf, torch.where(x < 0, math.nan, value))


# --- Bessel functions of the first and second kind ----------------------------------------------------------

def _asymptotic(high: torch.Tensor, first: bool, second_kind: bool) -> torch.Tensor:
    """Hankel's form for x ≥ 5: √(2/πx)·(P·cos ξ − (5/x)·Q·sin ξ) (second kind: P·sin ξ + (5/x)·Q·cos ξ)."""
    import torch

    if first:
        pp, pq, qp, qq = tables.J1_PP, tables.J1_PQ, tables.J1_QP, tables.J1_QQ
        w, angle = 5.0 / high * (5.0 / high), high - _THREE_QUARTERS_PI
    else:
        pp, pq, qp, qq = tables.J0_PP, tables.J0_PQ, tables.J0_QP, tables.J0_QQ
        w, angle = 25.0 / (high * high), high - _QUARTER_PI
    p, q = horner(pp, w) / horner(pq, w), 5.0 / high * (horner(qp, w) / horner(qq, w))
    if second_kind:
        wave = p * torch.sin(angle) + q * torch.cos(angle)
    else:
        wave = p * torch.cos(angle) - q * torch.sin(angle)
    return wave * _SQRT_TWO_OVER_PI / torch.sqrt(high)


def _j0_below_5(s: torch.Tensor) -> torch.Tensor:
    import torch

    z = s * s
    rational = (z - _J0_ZEROS[0]) * (z - _J0_ZEROS[1]) * horner(tables.J0_RP, z) / horner(tables.J0_RQ, z)
    return torch.where(s < 1e-5, 1.0 - z / 4.0, rational)


def _j1_below_5(s: torch.Tensor) -> torch.Tensor:
    z = s * s
    return horner(tables.J1_RP, z) / horner(tables.J1_RQ, z) * s * (z - _J1_ZEROS[0]) * (z - _J1_ZEROS[1])


def _bessel_j(x: torch.Tensor, first: bool) -> torch.Tensor:
    import torch

    ax = x.abs()
    low, high = torch.clamp(ax, max=5.0), torch.clamp(ax, min=5.0)
    value = torch.where(ax <= 5.0, _j1_below_5(low) if first else _j0_below_5(low), _asymptotic(high, first, False))
    return _odd(x, value) if first else value


def _bessel_y(x: torch.Tensor, first: bool) -> torch.Tensor:
    import torch

    low = torch.where(x > 0, torch.clamp(x, max=5.0), torch.ones_like(x))  # (0, 5]
    z = low * low
    if first:
        rational = low * (horner(tables.Y1_YP, z) / horner(tables.Y1_YQ, z))
        small = rational + _TWO_OVER_PI * (_j1_below_5(low) * torch.log(low) - 1.0 / low)
    else:
        rational = horner(tables.Y0_YP, z) / horner(tables.Y0_YQ, z)
        small = rational + _TWO_OVER_PI * torch.log(low) * _j0_below_5(low)
    small = torch.where(x == 0, -math.inf, torch.where(x < 0, math.nan, small))
    return torch.where(x <= 5.0, small, _asymptotic(torch.clamp(x, min=5.0), first, True))


# --- the Airy function Ai ----------------------------------------------------------------------------------

_AIRY_AI0, _AIRY_AI0_SLOPE = 0.355028053887817239260, 0.258819403792806798405  # Ai(0), −Ai′(0)
_INV_SQRT_PI = 5.64189583547756286948e-01
_AIRY_LOW, _AIRY_HIGH, _AIRY_ZERO_ABOVE = -2.09, 2.09, 103.892  # the kernel's branch points
_AIRY_SERIES_TERMS = 12  # the Maclaurin loop's terms unrolled (why 12: the module docstring)


def _airy_series(s: torch.Tensor) -> torch.Tensor:
    """Ai(s) = Ai(0)·f(s) + Ai′(0)·g(s) for −2.09 ≤ s < 2.09, f and g summed term by term in the kernel's order."""
    import torch

    f, m, z = torch.ones_like(s), torch.ones_like(s), s * s * s
    g, n = s, s
    for i in range(_AIRY_SERIES_TERMS):
        k = 3.0 * i + 1.0
        m = m * z / (k + 1.0)
        n = n * z / (k + 2.0)
        m = m / (k + 2.0)
        f = f + m
        n = n / (k + 3.0)
        g = g + n
    return _AIRY_AI0 * f - _AIRY_AI0_SLOPE * g


def _airy_ai(x: torch.Tensor) -> torch.Tensor:
    import torch

    neg = torch.clamp(x, max=_AIRY_LOW)  # x < −2.09: the oscillating asymptotic form
    zeta = -2.0 * neg * torch.sqrt(-neg) / 3.0
    z = 1.0 / zeta
    zz = z * z
    f = zz * horner(tables.AIRY_AFN, zz) / horner(tables.AIRY_AFD, zz)
    g = z * horner(tables.AIRY_AGN, zz) / horner(tables.AIRY_AGD, zz)
    theta = zeta + 0.25 * math.pi
    wave = _INV_SQRT_PI / torch.sqrt(torch.sqrt(-neg)) * (torch.sin(theta) * (1.0 + f) - torch.cos(theta) * g)
    wave = torch.where(zeta == math.inf, math.nan, wave)  # sin(inf): x < −3.07e25 (float32), −2.0e205 (float64)
    pos = torch.clamp(x, min=_AIRY_HIGH, max=_AIRY_ZERO_ABOVE)  # x ≥ 2.09: exp(−ζ) times a rational in 1/ζ
    zeta = 2.0 * pos * torch.sqrt(pos) / 3.0
    w = 1.0 / zeta
    rational = horner(tables.AIRY_AN, w) / horner(tables.AIRY_AD, w)
    decay = _INV_SQRT_PI * rational / (2.0 * torch.sqrt(torch.sqrt(pos)) * torch.exp(zeta))
    series = _airy_series(torch.clamp(x, min=_AIRY_LOW, max=_AIRY_HIGH))
    value = torch.where(x < _AIRY_LOW, wave, torch.where(x >= _AIRY_HIGH, decay, series))
    return torch.where(x > _AIRY_ZERO_ABOVE, 0.0, value)


# --- the replacements ---------------------------------------------------------------------------------------

def _elementwise(op: str, compute: Callable[[torch.Tensor], torch.Tensor],
                 nan_at_inf: bool = False) -> Callable[..., torch.Tensor]:
    """The replacement of `op`: integers in the default float dtype, float16 / bfloat16 in float32 (cast back),
    NaN passed through whatever a converter's clamp makes of it; with `nan_at_inf`, NaN at ±inf stated outright
    (torch's inf/inf and cos(inf): a runtime's fast sin, cos or division need not give NaN there, ONNX Runtime's
    do not)."""
    def replacement(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
        import torch

        refuse_out("bessel", op, out)
        x = input if input.is_floating_point() else input.to(torch.get_default_dtype())
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        result = compute(work)
        if nan_at_inf:
            result = torch.where(work.abs() == math.inf, math.nan, result)
        result = torch.where(work != work, work, result)
        return result if result.dtype == x.dtype else result.to(x.dtype)

    replacement.__name__ = replacement.__qualname__ = op.rsplit(".", 1)[-1]
    return replacement


i0 = _elementwise("torch.i0", lambda x: _bessel_i(x, first=False, scaled=False, float32_tables=True), nan_at_inf=True)
i0e = _elementwise("torch.special.i0e", lambda x: _bessel_i(x, first=False, scaled=True, float32_tables=True))
i1 = _elementwise("torch.special.i1", lambda x: _bessel_i(x, first=True, scaled=False, float32_tables=True),
                  nan_at_inf=True)
i1e = _elementwise("torch.special.i1e", lambda x: _bessel_i(x, first=True, scaled=True, float32_tables=True))
modified_bessel_i0 = _elementwise("torch.special.modified_bessel_i0",
                                  lambda x: _bessel_i(x, first=False, scaled=False, float32_tables=False), True)
modified_bessel_i1 = _elementwise("torch.special.modified_bessel_i1",
                                  lambda x: _bessel_i(x, first=True, scaled=False, float32_tables=False), True)
modified_bessel_k0 = _elementwise("torch.special.modified_bessel_k0", lambda x: _bessel_k(x, first=False, scaled=False))
modified_bessel_k1 = _elementwise("torch.special.modified_bessel_k1", lambda x: _bessel_k(x, first=True, scaled=False))
scaled_modified_bessel_k0 = _elementwise("torch.special.scaled_modified_bessel_k0",
                                         lambda x: _bessel_k(x, first=False, scaled=True))
scaled_modified_bessel_k1 = _elementwise("torch.special.scaled_modified_bessel_k1",
                                         lambda x: _bessel_k(x, first=True, scaled=True))
bessel_j0 = _elementwise("torch.special.bessel_j0", lambda x: _bessel_j(x, first=False), True)
bessel_j1 = _elementwise("torch.special.bessel_j1", lambda x: _bessel_j(x, first=True), True)
bessel_y0 = _elementwise("torch.special.bessel_y0", lambda x: _bessel_y(x, first=False), True)
bessel_y1 = _elementwise("torch.special.bessel_y1", lambda x: _bessel_y(x, first=True), True)
_airy_ai_of_input = _elementwise("torch.special.airy_ai", _airy_ai, nan_at_inf=True)


def airy_ai(x: torch.Tensor, *, out: object = None) -> torch.Tensor:
    """torch.special.airy_ai, whose argument is named x (airy_ai(x=t))."""
    return _airy_ai_of_input(x, out=out)


def _handlers() -> HandlerTable:
    import torch

    table = by_name({"i0": i0, "i0e": i0e, "i1": i1, "i1e": i1e, "modified_bessel_i0": modified_bessel_i0,
                     "modified_bessel_i1": modified_bessel_i1, "modified_bessel_k0": modified_bessel_k0,
                     "modified_bessel_k1": modified_bessel_k1, "scaled_modified_bessel_k0": scaled_modified_bessel_k0,
                     "scaled_modified_bessel_k1": scaled_modified_bessel_k1, "bessel_j0": bessel_j0,
                     "bessel_j1": bessel_j1, "bessel_y0": bessel_y0, "bessel_y1": bessel_y1, "airy_ai": airy_ai},
                    (torch, torch.Tensor, torch.special), in_place_on=torch.Tensor)
    table[torch.i0_] = in_place(i0)  # torch.i0_(x), beside Tensor.i0_
    return table


REWRITES = (
    Rewrite(
        name="bessel",
        version=2,
        removes=("aten::i0", "aten::special_i0", "aten::special_i0e", "aten::special_i1", "aten::special_i1e",
                 "aten::special_modified_bessel_i0", "aten::special_modified_bessel_i1",
                 "aten::special_modified_bessel_k0", "aten::special_modified_bessel_k1",
                 "aten::special_scaled_modified_bessel_k0", "aten::special_scaled_modified_bessel_k1",
                 "aten::special_bessel_j0", "aten::special_bessel_j1", "aten::special_bessel_y0",
                 "aten::special_bessel_y1", "aten::special_airy_ai"),
        description="i0 / i0e / i1 / i1e / modified_bessel_i0, i1, k0, k1 / scaled_modified_bessel_k0, k1 / "
                    "bessel_j0, j1, y0, y1 / airy_ai as PyTorch's Cephes kernels, in exp, log, sqrt, sin, cos and "
                    "where",
        handlers=_handlers,
    ),
)
