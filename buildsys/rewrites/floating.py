"""The floating-point family: IEEE-754 operations and error-function relatives that converters lack, written in
the elementwise ops every converter has (abs, comparisons, where, floor, log, exp, sin, pow; no erf: TFLite has
none, onnxruntime none for float64), with torch's NaN, ±0 and ±inf semantics.

- fmax / fmin (torch and Tensor): the other operand where one is NaN, NaN where both are; on equal operands
  (+0 and −0) the first, as torch's kernel (glibc's fmax) returns. (glibc gives NaN for a signaling NaN, which
  no torch op produces: here that is a NaN like any other.)
- signbit: x < 0, or x == 0 with 1/x < 0 (−0.0). copysign(a, b): |a|, negated where b's sign bit is set (same
  rule; a number b: its sign bit, read in Python). A NaN's sign bit cannot be read without bit operations: a
  NaN b counts as positive (copysign gives |a|, signbit False) where torch reads the bit (a NaN made by 0/0 on
  x86 has it set, so torch gives −|a| and True there).
- nextafter: a ± the spacing of the format at |a|: 2^⌊log₂|a|⌋ (the estimate from log corrected by one exact
  halving or doubling) times finfo.eps; half that below a power of two, finfo.tiny·eps for subnormals and 0;
  ±max from ±inf, b where a == b, NaN where either is. Exact, bit for bit (under flush-to-zero hardware the
  subnormal steps are lost).
- frexp: the same binade (subnormals first scaled up by 2/eps, an exact power of two), mantissa x/2^e in
  [0.5, 1) with x's sign, exponent int32; 0, ±inf and NaN give (x, 0). Exact.
- ldexp: input · pow(2, other), torch's own composite (ops with that name in its graph).
- heaviside: values where input == 0, else input > 0 (NaN input: 0, as torch); input and values of one dtype.
- float_power: pow in float64, both operands converted first.
- logaddexp / logaddexp2: max + log1p(exp(−|a − b|)) (exp2 as exp of ·ln 2, divided by ln 2), a where a and b are
  the same infinity. log1p is the precise family's (its Taylor series for small arguments): accurate to a few ulp
  without a log1p op, also where OpenVINO folds the (1 + u) − 1 of Kahan's form back into u.
- erfcx: Cody's rational approximations ("Rational Chebyshev approximations for the error function", Math.
  Comp. 23, 1969) written for exp(x²)·erfc(x): P(x)/Q(x) on [0.46875, 4], (1/√π + P(1/x²)/(x²·Q(1/x²)))/x above;
  exp(x²)·(1 − erf x) below 0.46875, erf there x·P(x²)/Q(x²) (Cody's first table); 2·exp(x²) − erfcx(−x) for
  negative x (inf where exp overflows). Relative error ~1e-15 in float64, a few ulp in float32.
- ndtr: erfc(−x/√2)/2 with erfc from the same forms: torch's (1 + erf(x/√2))/2 to rounding, except far in the
  left tail, where torch's cancels to 0 and this keeps the tiny value. log_ndtr: as torch's kernel,
  log(erfcx(−t)/2) − t² below x = −1, else log1p(−erfc(t)/2), t = x/√2.
- entr: −x·log x, 0 at 0, −inf below 0. sinc: sin(πx)/(πx), 1 at 0. xlog1py: x·log1p(y), 0 where x == 0, NaN
  where y is.

Integer inputs are promoted as torch does (to the default float dtype). Where a result may be −0.0 it is built
as |v|·(±1), not picked by a where: onnxruntime's Where turns a −0.0 from its first branch into +0.0.

Which ops, measured on torch 2.13 with a one-op module: every op here fails the legacy ONNX exporter at opset 18
("Exporting the operator 'aten::…' to ONNX opset version 18 is not supported"); fmax, fmin, copysign, nextafter
and frexp fail the dynamo exporter too (no ONNX function for the op); the others (signbit, ldexp, heaviside,
float_power, logaddexp(2), erfcx, ndtr, log_ndtr, entr, sinc, xlog1py) it takes. Left out: torch.logit (with
and without eps) and torch.nan_to_num, which both exporters take. Equivalence:
tests/rewrites/test_rewrite_families_floating.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name, refuse_out, returned
from buildsys.rewrites.polynomial import horner

if TYPE_CHECKING:
    import torch

_LN2 = math.log(2.0)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
#: Cody's coefficients, highest power first: erf(x) = x·P(x²)/Q(x²) on [−0.5, 0.5] ...
_CODY_ERF_P = (1.857777061846031526730e-1, 3.161123743870565596947e00, 1.138641541510501556495e02,
               3.774852376853020208137e02, 3.209377589138469472562e03)
_CODY_ERF_Q = (1.0, 2.360129095234412093499e01, 2.440246379344441733056e02, 1.282616526077372275645e03,
               2.844236833439170622273e03)
#: ... erfc(x) = exp(−x²)·P(x)/Q(x) on [0.46875, 4] ...
_CODY_P = (2.15311535474403846343e-8, 5.64188496988670089180e-1, 8.88314979438837594118e00,
           6.61191906371416294775e01, 2.98635138197400131132e02, 8.81952221241769090411e02,
           1.71204761263407058314e03, 2.05107837782607146532e03, 1.23033935479799725272e03)
_CODY_Q = (1.0, 1.57449261107098347253e01, 1.17693950891312499305e02, 5.37181101862009857509e02,
           1.62138957456669018874e03, 3.29079923573345962678e03, 4.36261909014324715820e03,
           3.43936767414372163696e03, 1.23033935480374942043e03)
#: ... and erfc(x) = exp(−x²)/x·(1/√π + P(t)/(x²·Q(t))), t = 1/x², above 4.
_CODY_TAIL_P = (-1.63153871373020978498e-2, -3.05326634961232344035e-1, -3.60344899949804439429e-1,
                -1.25781726111229246204e-1, -1.60837851487422766278e-2, -6.58749161529837803157e-4)
_CODY_TAIL_Q = (1.0, 2.56852019228982242072e00, 1.87295284992346047209e00, 5.27905102951428412248e-1,
                6.05183413124413191178e-2, 2.33520497626869185443e-3)


def _floating(*values: Any) -> tuple[torch.Tensor, ...]:
    """Tensors of the values' promoted dtype, integers to the default float dtype, as torch's float ops do."""
    import torch

    dtype = torch.result_type(*values) if len(values) == 2 else values[0].dtype
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return tuple(_as(v, dtype) for v in values)


def _as(value: Any, dtype: torch.dtype) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor):
        return torch.tensor(value, dtype=dtype)
    return value if value.dtype == dtype else value.to(dtype)


def log1p(u: torch.Tensor) -> torch.Tensor:
    """log(1 + u) without a log1p op, its small arguments' digits kept (the precise family's form)."""
    from buildsys.rewrites.precise import log1p as precise_log1p

    return precise_log1p(u)


def fmax(input: torch.Tensor, other: torch.Tensor, *, out: object = None) -> torch.Tensor:
    return _fmaxmin(input, other, out, larger=True)


def fmin(input: torch.Tensor, other: torch.Tensor, *, out: object = None) -> torch.Tensor:
    return _fmaxmin(input, other, out, larger=False)


def _fmaxmin(input: torch.Tensor, other: torch.Tensor, out: object, larger: bool) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.fmax" if larger else "torch.fmin", out)
    dtype = torch.result_type(input, other)
    a, b = _as(input, dtype), _as(other, dtype)
    keep = a >= b if larger else a <= b
    if not dtype.is_floating_point:
        return torch.where(keep, a, b)
    keep = keep | torch.isnan(b)
    return _signed(torch.where(keep, a, b), (keep & _sign_bit(a)) | (~keep & _sign_bit(b)))  # no bool Where in ORT


def _signed(value: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """|value| with the sign bit where `negative`: a where that picks −0.0 gives +0.0 in onnxruntime (its Where
    adds the two masked branches), a product keeps it."""
    import torch

    return value.abs() * torch.where(negative, -1.0, 1.0).to(value.dtype)


def _sign_bit(x: torch.Tensor) -> torch.Tensor:
    """x's sign bit, −0.0 included (NaN: False)."""

    if not x.is_floating_point():
        return x < 0
    # 1/x itself, not 1/where(x == 0, x, 1): the ONNX exporter folds that where into the constant 0, losing −0's sign
    return (x < 0) | ((x == 0) & (1.0 / x < 0))


def signbit(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.signbit", out)
    if input.dtype == torch.bool:
        return torch.zeros_like(input)
    return _sign_bit(input)


def copysign(input: Any, other: Any, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.copysign", out)
    if isinstance(other, (int, float)):  # its sign bit read in Python (a NaN's too)
        dtype = torch.result_type(input, other)
        a = _as(input, dtype if dtype.is_floating_point else torch.get_default_dtype())
        return -a.abs() if math.copysign(1.0, float(other)) < 0 else a.abs()
    a, b = _floating(input, other)
    return _signed(a, _sign_bit(b))


def _binade(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, k) with p = 2^k ≤ m < 2p, for finite normal m > 0: k from log, then one exact correction each way."""
    import torch

    info = torch.finfo(m.dtype)  # the estimate kept within the normal exponents, so 2^k is finite and normal
    k = torch.clamp(torch.floor(torch.log(m) * (1.0 / _LN2)), math.frexp(info.tiny)[1] - 1, math.frexp(info.max)[1] - 1)
    p = torch.pow(2.0, k)
    high, low = p > m, p * 2.0 <= m
    p = torch.where(high, p * 0.5, torch.where(low, p * 2.0, p))
    k = torch.where(high, k - 1.0, torch.where(low, k + 1.0, k))
    return p, k


def nextafter(input: torch.Tensor, other: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.nextafter", out)
    if not input.is_floating_point() or input.dtype != getattr(other, "dtype", None):
        raise RewriteNotApplicable("floating", "torch.nextafter", "operands that are not floats of one dtype")
    a, b = input, other
    info = torch.finfo(a.dtype)
    magnitude = a.abs()
    normal = torch.where(torch.isfinite(magnitude) & (magnitude > info.tiny), magnitude,
                         torch.full_like(magnitude, info.tiny))
    p, _ = _binade(normal)
    up = p * info.eps  # the spacing above |a| (subnormals and tiny: tiny·eps)
    down = torch.where((normal == p) & (normal > info.tiny), up * 0.5, up)  # below a power of two: half
    away = (b > a) == (a > 0)
    step = torch.where(away, a + torch.where(a > 0, up, -up), a - torch.where(a > 0, down, -down))
    smallest = torch.full_like(a, info.tiny * info.eps)
    step = torch.where(a == 0, torch.where(b > 0, smallest, -smallest), step)
    largest = torch.full_like(a, info.max)
    step = torch.where(torch.isinf(a), torch.where(a > 0, largest, -largest), step)
    step = torch.where(a == b, b, step)
    # a zero result is b's zero where a == b, else a's (from ±tiny·eps towards 0)
    same = a == b
    negative = (step < 0) | ((step == 0) & ((same & _sign_bit(b)) | (~same & _sign_bit(a))))
    return torch.where(torch.isnan(a) | torch.isnan(b), a + b, _signed(step, negative))


def frexp(input: torch.Tensor, *, out: object = None) -> Any:
    import torch

    refuse_out("floating", "torch.frexp", out)
    if not input.is_floating_point():
        raise RewriteNotApplicable("floating", "torch.frexp", "an integer input (torch refuses it too)")
    info = torch.finfo(input.dtype)
    scale = 2.0 / info.eps  # subnormals times this are normal, exactly
    small = input.abs() < info.tiny
    x = torch.where(small, input * scale, input)
    regular = torch.isfinite(x) & (x != 0)
    m = torch.where(regular, x.abs(), torch.ones_like(x))
    p, k = _binade(m)
    mantissa = torch.where(regular, x / p * 0.5, input)
    exponent = torch.where(regular, k + 1.0 - torch.where(small, math.log2(scale), 0.0), torch.zeros_like(k))
    return returned("frexp", (mantissa, exponent.to(torch.int32)))


def ldexp(input: torch.Tensor, other: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.ldexp", out)
    return torch.mul(input, torch.pow(2.0, other))


def heaviside(input: torch.Tensor, values: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.heaviside", out)
    if input.dtype != values.dtype:
        raise RuntimeError("heaviside is not yet implemented for tensors with different dtypes")
    return torch.where(input != 0, (input > 0).to(input.dtype), values)  # values second: its −0 kept (_signed)


def float_power(input: Any, exponent: Any, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.float_power", out)
    if any(isinstance(v, torch.Tensor) and v.is_complex() or isinstance(v, complex) for v in (input, exponent)):
        raise RewriteNotApplicable("floating", "torch.float_power", "a complex operand")
    base = _as(input, torch.float64) if isinstance(input, torch.Tensor) else float(input)
    power = _as(exponent, torch.float64) if isinstance(exponent, torch.Tensor) else float(exponent)
    return torch.pow(base, power)  # type: ignore[arg-type]


def logaddexp(input: torch.Tensor, other: torch.Tensor, *, out: object = None) -> torch.Tensor:
    refuse_out("floating", "torch.logaddexp", out)
    return _logaddexp(input, other, base2=False)


def logaddexp2(input: torch.Tensor, other: torch.Tensor, *, out: object = None) -> torch.Tensor:
    refuse_out("floating", "torch.logaddexp2", out)
    return _logaddexp(input, other, base2=True)


def _logaddexp(input: torch.Tensor, other: torch.Tensor, base2: bool) -> torch.Tensor:
    import torch

    a, b = _floating(input, other)
    gap = -(a - b).abs()
    correction = log1p(torch.exp(gap * _LN2 if base2 else gap))
    value = torch.maximum(a, b) + (correction * (1.0 / _LN2) if base2 else correction)
    return torch.where(torch.isinf(a) & (a == b), a, value)


def _erf_near(x: torch.Tensor) -> torch.Tensor:
    """erf(x) for |x| ≤ 0.5 (clamped there), without an erf op (TFLite has none, onnxruntime none for float64)."""
    import torch

    near = torch.clamp(x, -0.5, 0.5)
    t = near * near
    return near * horner(_CODY_ERF_P, t) / horner(_CODY_ERF_Q, t)


def _erfcx_positive(x: torch.Tensor) -> torch.Tensor:
    """erfcx(x) for x ≥ 0 (Cody's rational forms; exp(x²)·(1 − erf x) near 0, where nothing cancels)."""
    import torch

    near = torch.exp(x * x) * (1.0 - _erf_near(x))
    middle = horner(_CODY_P, x) / horner(_CODY_Q, x)
    large = torch.clamp(x, min=4.0)
    t = 1.0 / (large * large)
    tail = (_INV_SQRT_PI + t * horner(_CODY_TAIL_P, t) / horner(_CODY_TAIL_Q, t)) / large
    return torch.where(x < 0.46875, near, torch.where(x <= 4.0, middle, tail))


def _erfcx(x: torch.Tensor) -> torch.Tensor:
    import torch

    positive = _erfcx_positive(x.abs())
    return torch.where(x < 0, 2.0 * torch.exp(x * x) - positive, positive)


def _erfc(x: torch.Tensor) -> torch.Tensor:
    """erfc from erfcx: no cancellation in the right tail."""
    import torch

    tail = _erfcx_positive(x.abs()) * torch.exp(-x * x)
    return torch.where(x.abs() < 0.46875, 1.0 - _erf_near(x), torch.where(x < 0, 2.0 - tail, tail))


def erfcx(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    refuse_out("floating", "torch.special.erfcx", out)
    (x,) = _floating(input)
    return _erfcx(x)


def ndtr(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    refuse_out("floating", "torch.special.ndtr", out)
    (x,) = _floating(input)
    return _erfc(-x * math.sqrt(0.5)) * 0.5


def log_ndtr(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.special.log_ndtr", out)
    (x,) = _floating(input)
    t = x * math.sqrt(0.5)
    left = torch.log(_erfcx(-t) / 2) - t * t
    return torch.where(x < -1.0, left, log1p(-_erfc(t) / 2))


def entr(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.special.entr", out)
    (x,) = _floating(input)
    positive = -x * torch.log(torch.where(x > 0, x, torch.ones_like(x)))
    rest = torch.where(x == 0, torch.zeros_like(x), torch.full_like(x, -math.inf))
    return torch.where(torch.isnan(x), x, torch.where(x > 0, positive, rest))


def sinc(input: torch.Tensor, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.sinc", out)
    (x,) = _floating(input)
    product = math.pi * torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.ones_like(x), torch.sin(product) / product)


def xlog1py(input: Any, other: Any, *, out: object = None) -> torch.Tensor:
    import torch

    refuse_out("floating", "torch.special.xlog1py", out)
    x, y = _floating(input, other)
    product = x * log1p(y)
    zero = torch.zeros_like(product)
    return torch.where(torch.isnan(y), y + zero, torch.where(x == 0, zero, product))


def _handlers() -> HandlerTable:
    import torch

    return by_name({"fmax": fmax, "fmin": fmin, "copysign": copysign, "signbit": signbit, "nextafter": nextafter,
                    "frexp": frexp, "ldexp": ldexp, "heaviside": heaviside, "float_power": float_power,
                    "logaddexp": logaddexp, "logaddexp2": logaddexp2, "erfcx": erfcx, "ndtr": ndtr,
                    "log_ndtr": log_ndtr, "entr": entr, "sinc": sinc, "xlog1py": xlog1py},
                   (torch, torch.Tensor, torch.special), in_place_on=torch.Tensor)


REWRITES = (
    Rewrite(
        name="floating",
        version=2,  # 2: log1p as the precise family's series (Kahan's form folded by OpenVINO)
        removes=("aten::fmax", "aten::fmin", "aten::copysign", "aten::signbit", "aten::nextafter", "aten::frexp",
                 "aten::ldexp", "aten::heaviside", "aten::float_power", "aten::logaddexp", "aten::logaddexp2",
                 "aten::special_erfcx", "aten::special_ndtr", "aten::special_log_ndtr", "aten::special_entr",
                 "aten::sinc", "aten::special_sinc", "aten::special_xlog1py"),
        description="fmax / fmin / copysign / signbit / nextafter / frexp / ldexp / heaviside / float_power / "
                    "logaddexp(2) / erfcx / ndtr / log_ndtr / entr / sinc / xlog1py in comparisons, where, floor, "
                    "log, exp, erf and pow",
        handlers=_handlers,
    ),
)
