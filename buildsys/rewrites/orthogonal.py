"""The orthogonal polynomials of the gamma family (buildsys/rewrites/gamma.py declares it), as PyTorch's CPU kernels
(ATen/native/Math.h, `*_polynomial_*_forward`) compute them, in elementwise ops.

The degree n is a number or a tensor; a float degree is truncated toward zero as the kernels' cast does, a
negative one gives 0, NaN and ±inf give 0 (the kernels' cast of those is undefined; on x86 it is negative).

- Chebyshev T, U, V, W and the shifted ones (argument y = 2x − 1): the kernel's special values at y = ±1
  (x = 1 and x = 0 for the shifted ones; a y of ±1 from a tiny x gets them too, as the kernel's
  recurrence does), its closed forms inside (−1, 1) above its threshold (T: cos(n·acos y),
  U: sin((n + 1)θ)/sin θ, V: cos((n + ½)θ)/cos(θ/2), W: sin((n + ½)θ)/sin(θ/2), θ = acos y, with the kernel's
  own fallbacks where the denominator rounds to 0 or 1), and its recurrence 2y·q − p elsewhere. A number n
  up to 64 unrolls that recurrence (exact, as the kernel); a tensor n selects among the first 9 terms with
  where(n == k). Beyond those, outside [−1, 1], the hyperbolic closed forms: φ = acosh|y| (log1p((|y| − 1) + s),
  s = √(|y| − 1)·√(|y| + 1)), T = cosh(nφ), U = sinh((n + 1)φ)/s, V = cosh((n + ½)φ)/cosh(φ/2),
  W = sinh((n + ½)φ)/sinh(φ/2) (each as exp(mφ − L) ± exp(−mφ − L), which overflows only where the value does),
  (−1)ⁿ and V ↔ W below −1; NaN where the term two before overflowed, as the recurrence gives (inf − inf).
  Relative error of those: up to 4e-5 (float32) and 4e-9 (float64) just outside ±1, where U and W are the
  difference of two close exponentials; the recurrence's own rounding elsewhere.
- Hermite H and He: the recurrence, NaN above the kernel's limit (128 in float32, 512 in float64). A tensor n
  selects among all terms up to that limit: exact for every n.
- Laguerre L (1 at x = 0) and Legendre P (±1 at x = ±1): the recurrence. A tensor n selects among the first 129
  terms: above degree 128 the result is NaN (refused at run time: the kernel's loop has no bound a graph can
  unroll); a number n above 1024 raises RewriteNotApplicable.

acos is Cephes' (asin's rational functions and sqrt, ~1e-16 relative): torch.acos would export as ONNX Acos,
which onnxruntime has for float32 only and TFLite not at all. A NaN x gives NaN (the kernels return an
uninitialized value for U, W, Laguerre and Legendre there).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Callable

from buildsys.rewrites.base import RewriteNotApplicable, refuse_out
from buildsys.rewrites.polynomial import horner

if TYPE_CHECKING:
    import torch

#: A number n up to this unrolls the Chebyshev recurrence; above, the closed forms.
UNROLL = 64
#: The terms a tensor n selects among (Chebyshev; Laguerre and Legendre).
CHEBYSHEV_ROWS, MAX_DEGREE = 8, 128
#: A number n above this is refused for Laguerre and Legendre (the unrolled graph would be that long).
MAX_UNROLLED = 1024
#: The kernels' thresholds above which (−1, 1) uses the closed form: (T, U, V, W) and the shifted ones.
_THRESHOLD = {False: {"t": 6, "u": 8, "v": 8, "w": 8}, True: {"t": 6, "u": 6, "v": 6, "w": 4}}

Degree = Any  # int, or a float tensor of truncated degrees (−1 for none)

#: Cephes' asin, highest power first: x + x³·P(x²)/Q(x²) up to 0.625, π/2 − √(2z)(1 + z·R(z)/S(z)), z = 1 − x, above.
_ASIN_P = (4.253011369004428248960e-3, -6.019598008014123785661e-1, 5.444622390564711410273e0,
           -1.626247967210700244449e1, 1.956261983317594739197e1, -8.198089802484824371615e0)
_ASIN_Q = (1.0, -1.474091372988853791896e1, 7.049610280856842141659e1, -1.471791292232726029859e2,
           1.395105614657485689735e2, -4.918853881490881290097e1)
_ASIN_R = (2.967721961301243206100e-3, -5.634242780008963776856e-1, 6.968710824104713396794e0,
           -2.556901049652824852289e1, 2.853665548261061424989e1)
_ASIN_S = (1.0, -2.194779531642920639778e1, 1.470656354026814941758e2, -3.838770957603691357202e2,
           3.424398657913078477438e2)
_MOREBITS = 6.123233995736765886130e-17  # π/2 − float64(π/2)


def _asin(x: torch.Tensor) -> torch.Tensor:
    """Cephes' asin on [−1, 1] (relative error ~1e-16), from sqrt and rational functions."""
    import torch

    a = x.abs()
    z = 1.0 - a
    root = torch.sqrt(z + z)
    large = (math.pi / 4 - root) - (root * (z * horner(_ASIN_R, z) / horner(_ASIN_S, z)) - _MOREBITS) \
        + math.pi / 4
    square = a * a
    small = a * (square * horner(_ASIN_P, square) / horner(_ASIN_Q, square)) + a
    value = torch.where(a > 0.625, large, small)
    return torch.where(x < 0, -value, value)


def acos(x: torch.Tensor) -> torch.Tensor:
    """Cephes' acos on [−1, 1]: 2·asin(√((1 − x)/2)) above ½, else π/2 − asin x. Not torch.acos: onnxruntime has
    no float64 Acos, TFLite no ACOS."""
    import torch

    near_one = 2.0 * _asin(torch.sqrt(0.5 - 0.5 * x))
    return torch.where(x > 0.5, near_one, (math.pi / 4 - _asin(x)) + _MOREBITS + math.pi / 4)


def _operands(input: Any, n: Any, op: str) -> tuple[torch.Tensor, Degree]:
    """x as a tensor of the result dtype (integers promoted to the default float) and n as the kernel reads it."""
    import torch

    dtype = torch.result_type(input, n)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    x = input.to(dtype) if isinstance(input, torch.Tensor) else torch.tensor(input, dtype=dtype)
    if isinstance(n, torch.Tensor):
        if n.is_complex():
            raise RewriteNotApplicable("gamma", op, "a complex n")
        n = n.to(dtype)
        truncated = torch.where(n < 0, torch.ceil(n), torch.floor(n))
        return x, torch.where(torch.isfinite(n) & (truncated >= 0), truncated, torch.full_like(n, -1.0))
    if not isinstance(n, (int, float)):
        raise RewriteNotApplicable("gamma", op, f"n of type {type(n).__name__}")
    import numpy as np

    with np.errstate(over="ignore"):  # the kernel converts n to x's dtype first (inf where it overflows)
        value = float(np.float32(n) if dtype != torch.float64 else np.float64(n))
    return x, int(math.trunc(value)) if math.isfinite(value) else -1


def _sign(n: Degree, like: torch.Tensor) -> Any:
    """(−1)ⁿ: a number for a number n, else a tensor."""
    import torch

    if isinstance(n, int):
        return -1.0 if n % 2 else 1.0
    return torch.where(n - 2.0 * torch.floor(n * 0.5) == 1.0, -1.0, 1.0).to(like.dtype)


def _select(n: Any, rows: list[torch.Tensor], otherwise: torch.Tensor) -> torch.Tensor:
    """rows[n] where n < len(rows), else `otherwise`."""
    import torch

    value = otherwise
    for k in range(len(rows) - 1, -1, -1):
        value = torch.where(n == k, rows[k], value)
    return value


def _chebyshev_rows(kind: str, y: torch.Tensor, count: int) -> list[torch.Tensor]:
    """The kernel's recurrence: terms 0..count."""
    import torch

    first = {"t": y, "u": y + y, "v": y + y - 1.0, "w": y + y + 1.0}[kind]
    rows = [torch.ones_like(y), first]
    for _ in range(2, count + 1):
        rows.append((y + y) * rows[-1] - rows[-2])
    return rows[:count + 1]


def _edges(kind: str, n: Degree, sign: Any) -> tuple[Any, Any]:
    """The kernel's values at y = 1 and y = −1."""
    return {"t": (1.0, sign), "u": (n + 1, sign * (n + 1)), "v": (1.0, sign * (2 * n + 1)),
            "w": (2 * n + 1, sign)}[kind]


def _trigonometric(kind: str, y: torch.Tensor, n: Degree, sign: Any, shifted: bool) -> torch.Tensor:
    """The kernel's closed form inside (−1, 1), with its fallbacks."""
    import torch

    theta = acos(torch.clamp(y, -1.0, 1.0))
    if kind == "t":
        return torch.cos(n * theta)
    if kind == "u":
        s = torch.sin(theta)
        return torch.where(s != 0, torch.sin((n + 1) * theta) / s, (n + 1) * torch.cos((n + 1) * theta) / y)
    if kind == "v":
        fallback = sign * (2 * n + 1) + 0.0 * y
        return torch.where(torch.sin(theta / 2.0) != 1.0, torch.cos((n + 0.5) * theta) / torch.cos(theta / 2.0),
                           fallback)
    fallback = sign + 0.0 * y if shifted else torch.where(y > 0, 2 * n + 1 + 0.0 * y, sign + 0.0 * y)
    return torch.where(torch.cos(theta / 2.0) != 1.0, torch.sin((n + 0.5) * theta) / torch.sin(theta / 2.0),
                       fallback)


def _hyperbolic(kind: str, y: torch.Tensor, n: Degree, sign: Any) -> torch.Tensor:
    """The closed form outside [−1, 1], NaN where the recurrence met inf − inf."""
    import torch

    from buildsys.rewrites.floating import log1p

    a = y.abs()
    s = torch.sqrt(torch.clamp(a - 1.0, min=0.0)) * torch.sqrt(a + 1.0)
    phi = log1p((a - 1.0) + s)
    def at(k: str) -> torch.Tensor:
        m, offset, minus = {"t": (n, math.log(2.0) + 0.0 * a, False), "u": (n + 1, torch.log(2.0 * s), True),
                            "v": (n + 0.5, 0.5 * torch.log(2.0 * (a + 1.0)), False),
                            "w": (n + 0.5, 0.5 * torch.log(2.0 * (a - 1.0)), True)}[k]
        big, small = torch.exp(m * phi - offset), torch.exp(-m * phi - offset)
        overflowed = (m - 2) * phi - offset > math.log(torch.finfo(y.dtype).max)  # the term two before
        return torch.where(overflowed, math.nan, big - small if minus else big + small)

    # below −1: T and U are (−1)ⁿ times themselves at |y|, V and W (−1)ⁿ times each other
    return torch.where(y < 0, sign * at({"v": "w", "w": "v"}.get(kind, kind)), at(kind))


@functools.cache
def chebyshev(kind: str, shifted: bool = False) -> Callable[..., torch.Tensor]:
    """The replacement for torch.special.[shifted_]chebyshev_polynomial_{kind} (one per kind: a table built twice
    holds the same handlers)."""
    name = f"torch.special.{'shifted_' if shifted else ''}chebyshev_polynomial_{kind}"
    threshold = _THRESHOLD[shifted][kind]

    def polynomial(input: Any, n: Any, *, out: object = None) -> torch.Tensor:
        import torch

        refuse_out("gamma", name, out)
        x, degree = _operands(input, n, name)
        y = x + x - 1.0 if shifted else x
        # the kernels test x == 1 and x == 0 (shifted) or x == ±1; y = ±1 from a tiny x takes their recurrence,
        # which gives the same values there, exactly
        plus, minus = y == 1.0, y == -1.0
        inside = y.abs() < 1.0
        if isinstance(degree, int):
            if degree < 0:
                return torch.zeros_like(x)
            sign = _sign(degree, x)
            if degree <= UNROLL:
                value = _chebyshev_rows(kind, y, max(degree, 1))[degree]
            else:
                value = _hyperbolic(kind, y, degree, sign)
            if degree > threshold:
                value = torch.where(inside, _trigonometric(kind, y, degree, sign, shifted), value)
        else:
            sign = _sign(degree, x)
            rows = _chebyshev_rows(kind, y, CHEBYSHEV_ROWS)
            value = _select(degree, rows, _hyperbolic(kind, y, degree, sign))
            value = torch.where(inside & (degree > threshold), _trigonometric(kind, y, degree, sign, shifted), value)
        at_plus, at_minus = _edges(kind, degree, sign)
        zero = torch.zeros_like(value)  # not 0·value: that is NaN where value is
        value = torch.where(plus, at_plus + zero, torch.where(minus, at_minus + zero, value))
        if isinstance(degree, int):
            return value
        return torch.where(degree >= 0, value, torch.zeros_like(value))

    polynomial.__name__ = polynomial.__qualname__ = f"{'shifted_' if shifted else ''}chebyshev_polynomial_{kind}"
    return polynomial


def _hermite_rows(x: torch.Tensor, count: int, probabilists: bool) -> list[torch.Tensor]:
    import torch

    rows = [torch.ones_like(x), x if probabilists else x + x]
    for j in range(1, count):
        k = j if probabilists else 2 * j
        rows.append((x if probabilists else x + x) * rows[-1] - k * rows[-2])
    return rows[:count + 1]


def _laguerre_rows(x: torch.Tensor, count: int) -> list[torch.Tensor]:
    import torch

    rows = [torch.ones_like(x), 1.0 - x]
    for k in range(1, count):
        rows.append((((k + k) + (1.0 - x)) * rows[-1] - k * rows[-2]) / (k + 1))
    return rows[:count + 1]


def _legendre_rows(x: torch.Tensor, count: int) -> list[torch.Tensor]:
    import torch

    rows = [torch.ones_like(x), x]
    for k in range(1, count):
        rows.append(((k + k + 1) * x * rows[-1] - k * rows[-2]) / (k + 1))
    return rows[:count + 1]


def _hermite_limit(dtype: torch.dtype) -> int:
    import torch

    return 512 if dtype == torch.float64 else 128


@functools.cache
def recurrence(family: str) -> Callable[..., torch.Tensor]:
    """The replacement for torch.special.{hermite_polynomial_h, hermite_polynomial_he, laguerre_polynomial_l,
    legendre_polynomial_p}."""
    name = f"torch.special.{family}"

    def polynomial(input: Any, n: Any, *, out: object = None) -> torch.Tensor:
        import torch

        refuse_out("gamma", name, out)
        x, degree = _operands(input, n, name)
        hermite = family.startswith("hermite")
        limit = _hermite_limit(x.dtype) if hermite else MAX_DEGREE
        if isinstance(degree, int):
            if degree < 0:
                return torch.zeros_like(x)
            if hermite and degree > limit:
                return torch.full_like(x, math.nan)
            if degree > MAX_UNROLLED:
                raise RewriteNotApplicable("gamma", name, f"degree {degree} (above {MAX_UNROLLED}, unrolled)")
            count = max(degree, 1)
        else:
            count = limit
        if hermite:
            rows = _hermite_rows(x, count, probabilists=family.endswith("he"))
        elif family.startswith("laguerre"):
            rows = _laguerre_rows(x, count)
        else:
            rows = _legendre_rows(x, count)
        if isinstance(degree, int):
            value = rows[degree]
        else:
            value = _select(degree, rows, torch.full_like(x, math.nan))
        if family.startswith("laguerre"):
            value = torch.where(x == 0, 1.0 + torch.zeros_like(value), value)
        elif family.startswith("legendre"):
            sign = _sign(degree, x)
            zero = torch.zeros_like(value)
            value = torch.where(x == 1.0, 1.0 + zero, torch.where(x == -1.0, sign + zero, value))
        if isinstance(degree, int):
            return value
        return torch.where(degree >= 0, value, torch.zeros_like(value))

    polynomial.__name__ = polynomial.__qualname__ = family
    return polynomial
