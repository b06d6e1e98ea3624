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

Accuracy: the same approximations as torch's, so the difference is rounding, bounded by the check of
tests/rewrites/test_rewrite_families_bessel.py (max abs error ≤ 1e-4 · max|torch's value| + 1e-6; measured over
−85…85: under 6e-7 of max|torch's value| in float32, 2e-15 in float64); NaN, ±inf and the undefined values are
where torch's.
Each branch is evaluated on a clamped input (where() computes both sides), so the unused one stays finite; the
NaN at ±inf (i0, i1, j, y) and the NaN inputs are set by where() outright, since a converter's runtime need not
make NaN of inf/inf, cos(inf) or clamp(NaN) (ONNX Runtime does not).
Integer inputs are computed in the default float dtype as torch promotes them, float16 / bfloat16 in float32
and cast back (torch's i0 / i1 kernels upcast them the same way).

Why a rewrite and not a decomposition: PyTorch's tables have no decomposition for modified_bessel_*,
scaled_modified_bessel_*, bessel_y0 or bessel_y1 (torch.export keeps the op); those for i0, i0e, i1, i1e,
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
from buildsys.rewrites.special import horner

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


def _handlers() -> HandlerTable:
    import torch

    table = by_name({"i0": i0, "i0e": i0e, "i1": i1, "i1e": i1e, "modified_bessel_i0": modified_bessel_i0,
                     "modified_bessel_i1": modified_bessel_i1, "modified_bessel_k0": modified_bessel_k0,
                     "modified_bessel_k1": modified_bessel_k1, "scaled_modified_bessel_k0": scaled_modified_bessel_k0,
                     "scaled_modified_bessel_k1": scaled_modified_bessel_k1, "bessel_j0": bessel_j0,
                     "bessel_j1": bessel_j1, "bessel_y0": bessel_y0, "bessel_y1": bessel_y1},
                    (torch, torch.Tensor, torch.special), in_place_on=torch.Tensor)
    table[torch.i0_] = in_place(i0)  # torch.i0_(x), beside Tensor.i0_
    return table


REWRITES = (
    Rewrite(
        name="bessel",
        version=1,
        removes=("aten::i0", "aten::special_i0", "aten::special_i0e", "aten::special_i1", "aten::special_i1e",
                 "aten::special_modified_bessel_i0", "aten::special_modified_bessel_i1",
                 "aten::special_modified_bessel_k0", "aten::special_modified_bessel_k1",
                 "aten::special_scaled_modified_bessel_k0", "aten::special_scaled_modified_bessel_k1",
                 "aten::special_bessel_j0", "aten::special_bessel_j1", "aten::special_bessel_y0",
                 "aten::special_bessel_y1"),
        description="i0 / i0e / i1 / i1e / modified_bessel_i0, i1, k0, k1 / scaled_modified_bessel_k0, k1 / "
                    "bessel_j0, j1, y0, y1 as PyTorch's Cephes kernels, in exp, log, sqrt, sin, cos and where",
        handlers=_handlers,
    ),
)
