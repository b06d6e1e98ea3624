"""Complex values as real pairs: `ComplexPair` carries the real and imaginary parts as real tensors and
implements the common complex ops on them, so no complex dtype reaches a traced or exported graph.

The rewrites that make complex values (`fft`, `stft`, `complex`) return a ComplexPair instead. It answers the
torch functions and Tensor methods of `IMPLEMENTED` (arithmetic with pairs, real tensors and Python
numbers, abs, angle, conj, pow, exp, log, sqrt, matmul, view_as_real, real/imag, reductions, shape and
indexing ops, slice assignment, cat/stack; pair_ops.py adds einsum, where, masked_fill, sin/cos/sgn and
the like-factories, dft.py the FFTs); anything else raises RewriteNotApplicable naming the op,
never a wrong number. Shape ops run on both parts through `mechanism.call`, so other rewrites in force
(roll, diff, ...) apply to the parts too.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Mapping, Sequence, Union, overload

import torch

from buildsys.rewrites.base import RewriteNotApplicable
from buildsys.rewrites.mechanism import call, function_name

Scalar = Union[bool, int, float, complex]
Operand = Union["ComplexPair", torch.Tensor, Scalar]
#: (real part, imaginary part or None when it is zero)
Parts = tuple[Union[torch.Tensor, float], Union[torch.Tensor, float, None]]

_COMPLEX_OF = {torch.float16: torch.complex32, torch.float32: torch.complex64, torch.float64: torch.complex128}
_REAL_OF = {v: k for k, v in _COMPLEX_OF.items()}


class ComplexPair:
    """A complex tensor as (real, imag) real tensors of the same shape; see the module doc for what it implements."""

    __slots__ = ("real", "imag")

    def __init__(self, real: torch.Tensor, imag: torch.Tensor) -> None:
        self.real = real
        self.imag = imag

    @property
    def shape(self) -> torch.Size:
        return self.real.shape

    @property
    def dtype(self) -> torch.dtype:
        return _COMPLEX_OF.get(self.real.dtype, torch.complex64)

    @property
    def device(self) -> torch.device:
        return self.real.device

    @property
    def ndim(self) -> int:
        return self.real.dim()

    @property
    def mT(self) -> ComplexPair:  # noqa: N802 - torch's name
        return ComplexPair(self.real.mT, self.imag.mT)

    @property
    def T(self) -> ComplexPair:  # noqa: N802 - torch's name
        return ComplexPair(self.real.T, self.imag.T)

    def dim(self) -> int:
        return self.real.dim()

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.real.size() if dim is None else self.real.size(dim)

    def is_complex(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.real)

    def __iter__(self) -> Iterator[ComplexPair]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"ComplexPair(shape={tuple(self.shape)}, dtype={self.dtype})"

    def __getattr__(self, name: str) -> Callable[..., object]:
        impl = IMPLEMENTED.get(name)
        if impl is None and not name.startswith("_") and hasattr(torch.Tensor, name):
            impl = _by_function().get(getattr(torch.Tensor, name))  # a method another module registered
        if impl is None and (name.startswith("_") or not hasattr(torch.Tensor, name)):
            raise AttributeError(f"'ComplexPair' object has no attribute '{name}'")  # hasattr() and tracers probe
        if impl is None:
            raise RewriteNotApplicable("complex", f"Tensor.{name}", "a complex value held as a real pair does not "
                                       "implement it (see buildsys/rewrites/pair.py for what it does)")
        return functools.partial(impl, self)

    @classmethod
    def __torch_function__(cls, func: Callable[..., object], types: object, args: Sequence[object] = (),
                           kwargs: Mapping[str, object] | None = None) -> object:
        impl = _by_function().get(func)
        if impl is None:
            raise RewriteNotApplicable("complex", function_name(func), "it is called on a complex value held as a "
                                       "real pair, which does not implement it")
        return impl(*args, **(kwargs or {}))

    def __add__(self, other: Operand) -> ComplexPair: return add(self, other)
    def __radd__(self, other: Operand) -> ComplexPair: return add(other, self)
    def __sub__(self, other: Operand) -> ComplexPair: return sub(self, other)
    def __rsub__(self, other: Operand) -> ComplexPair: return sub(other, self)
    def __mul__(self, other: Operand) -> ComplexPair: return mul(self, other)
    def __rmul__(self, other: Operand) -> ComplexPair: return mul(other, self)
    def __truediv__(self, other: Operand) -> ComplexPair: return div(self, other)
    def __rtruediv__(self, other: Operand) -> ComplexPair: return div(other, self)
    def __matmul__(self, other: Operand) -> ComplexPair: return matmul(self, other)
    def __rmatmul__(self, other: Operand) -> ComplexPair: return matmul(other, self)
    def __pow__(self, exponent: Operand) -> ComplexPair: return pow(self, exponent)
    def __neg__(self) -> ComplexPair: return ComplexPair(-self.real, -self.imag)
    def __pos__(self) -> ComplexPair: return self
    def __abs__(self) -> torch.Tensor: return absolute(self)
    def __getitem__(self, index: object) -> ComplexPair: return both(torch.Tensor.__getitem__)(self, index)

    def __setitem__(self, index: object, value: Operand) -> None:
        """Slice assignment into a pair, out of place (a pair's parts may be views of the tensors it was made
        from, which torch.complex would not alias): a static region is a pad and a where (placement.placed),
        anything else a copy written in place."""
        from buildsys.rewrites.placement import placed

        real, imag = parts(value)
        for name, part in (("real", real), ("imag", 0.0 if imag is None else imag)):
            target = getattr(self, name)
            written = placed(target, index, part)
            if written is None:
                written = target.clone()
                call(torch.Tensor.__setitem__, written, index, part)
            setattr(self, name, written)


def parts(x: Operand) -> Parts:
    """(real, imag or None) of a pair, a real tensor or a Python number; a genuine complex tensor is refused."""
    if isinstance(x, ComplexPair):
        return x.real, x.imag
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise RewriteNotApplicable("complex", "a complex tensor", "it meets a real pair but was made where no "
                                       "rewrite holds complex values as pairs: outside forward (a complex buffer or "
                                       "attribute, such as a precomputed RoPE freqs_cis) or without the 'complex' "
                                       "rewrite")
        return x, None
    if isinstance(x, complex):
        return x.real, x.imag
    return float(x), None


@overload
def _plus(a: torch.Tensor | float, b: torch.Tensor | float | None, sign: float = 1.0) -> torch.Tensor | float: ...
@overload
def _plus(a: torch.Tensor | float | None, b: torch.Tensor | float, sign: float = 1.0) -> torch.Tensor | float: ...
@overload
def _plus(a: torch.Tensor | float | None, b: torch.Tensor | float | None, sign: float = 1.0) -> torch.Tensor | float | None: ...
def _plus(a: torch.Tensor | float | None, b: torch.Tensor | float | None, sign: float = 1.0) -> torch.Tensor | float | None:
    if b is None:
        return a
    if a is None:
        return -b if sign < 0 else b
    return a + b if sign > 0 else a - b


@overload
def _times(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor | float: ...
@overload
def _times(a: torch.Tensor | float | None, b: torch.Tensor | float | None) -> torch.Tensor | float | None: ...
def _times(a: torch.Tensor | float | None, b: torch.Tensor | float | None) -> torch.Tensor | float | None:
    return None if a is None or b is None else a * b


def pair(real: torch.Tensor | float | None, imag: torch.Tensor | float | None) -> ComplexPair:
    """A ComplexPair from parts where either may be None (zero) or a number (broadcast to the other's shape)."""
    if not isinstance(real, torch.Tensor):
        if not isinstance(imag, torch.Tensor):
            raise RewriteNotApplicable("complex", "a complex number", "an op on Python numbers alone")
        real = torch.full_like(imag, real or 0.0)
    if not isinstance(imag, torch.Tensor):
        imag = torch.full_like(real, imag or 0.0)
    return ComplexPair(real, imag)


def add(a: Operand, b: Operand, *, alpha: float = 1.0) -> ComplexPair:
    (ar, ai), (br, bi) = parts(a), parts(b)
    if alpha != 1.0:
        br, bi = br * alpha, _times(bi, alpha)
    return pair(_plus(ar, br), _plus(ai, bi))


def sub(a: Operand, b: Operand, *, alpha: float = 1.0) -> ComplexPair:
    (ar, ai), (br, bi) = parts(a), parts(b)
    if alpha != 1.0:
        br, bi = br * alpha, _times(bi, alpha)
    return pair(_plus(ar, br, -1.0), _plus(ai, bi, -1.0))


def mul(a: Operand, b: Operand) -> ComplexPair:
    (ar, ai), (br, bi) = parts(a), parts(b)
    return pair(_plus(ar * br, _times(ai, bi), -1.0), _plus(_times(ar, bi), _times(ai, br)))


def div(a: Operand, b: Operand, *, rounding_mode: str | None = None) -> ComplexPair:
    if rounding_mode is not None:
        raise RewriteNotApplicable("complex", "torch.div", f"rounding_mode={rounding_mode!r} on complex values")
    (ar, ai), (br, bi) = parts(a), parts(b)
    if bi is None:
        return pair(ar / br, None if ai is None else ai / br)
    den = br * br + bi * bi
    return pair(_plus(ar * br, _times(ai, bi)) / den, _plus(_times(ai, br), _times(ar, bi), -1.0) / den)


def conj(a: ComplexPair) -> ComplexPair:
    return ComplexPair(a.real, -a.imag)


def absolute(a: ComplexPair) -> torch.Tensor:
    # sqrt(re² + im²): torch uses hypot, which no converter lowers; equal unless |z| > ~1e19 in fp32.
    return torch.sqrt(a.real * a.real + a.imag * a.imag)


def angle(a: ComplexPair) -> torch.Tensor:
    return torch.atan2(a.imag, a.real)


def polar(radius: torch.Tensor, theta: torch.Tensor) -> ComplexPair:
    return ComplexPair(radius * torch.cos(theta), radius * torch.sin(theta))


def pow(a: Operand, exponent: Operand) -> ComplexPair:  # noqa: A001 - torch's name
    if not isinstance(a, ComplexPair):
        raise RewriteNotApplicable("complex", "torch.pow", "a complex exponent")
    if isinstance(exponent, (ComplexPair, complex)):
        raise RewriteNotApplicable("complex", "torch.pow", "a complex exponent")
    if isinstance(exponent, (int, float)) and float(exponent).is_integer() and 0 <= exponent <= 4:
        out: ComplexPair = pair(torch.ones_like(a.real), None)
        for _ in range(int(exponent)):  # small integer powers by multiplication, as exact as torch's
            out = mul(out, a)
        return out
    # r^p (cos pθ, sin pθ): the principal branch, as torch.pow computes it (exp(p log z))
    return polar(absolute(a) ** exponent, angle(a) * exponent)


def exp(a: ComplexPair) -> ComplexPair:
    return polar(torch.exp(a.real), a.imag)


def log(a: ComplexPair) -> ComplexPair:
    return ComplexPair(torch.log(absolute(a)), angle(a))


def sqrt(a: ComplexPair) -> ComplexPair:
    return polar(torch.sqrt(absolute(a)), angle(a) * 0.5)


def matmul(a: Operand, b: Operand) -> ComplexPair:
    (ar, ai), (br, bi) = parts(a), parts(b)
    # torch.matmul takes tensors only (an imaginary part is a number only where the real one is)
    if not isinstance(ar, torch.Tensor) or not isinstance(br, torch.Tensor) or isinstance(ai, float) or isinstance(bi, float):
        raise TypeError("matmul(): arguments must be tensors, not Python numbers")
    mm = torch.matmul
    return pair(_plus(mm(ar, br), None if ai is None or bi is None else mm(ai, bi), -1.0),
                _plus(None if bi is None else mm(ar, bi), None if ai is None else mm(ai, br)))


def view_as_real(a: ComplexPair) -> torch.Tensor:
    return torch.stack([a.real, a.imag], dim=-1)


def to(a: ComplexPair, *args: Any, **kwargs: Any) -> ComplexPair | torch.Tensor:
    """Tensor.to: a complex dtype casts both parts; a real dtype keeps the real part (what torch does)."""
    dtype = kwargs.pop("dtype", next((x for x in args if isinstance(x, torch.dtype)), None))
    rest = [x for x in args if not isinstance(x, torch.dtype)]
    if dtype is None:
        return ComplexPair(a.real.to(*rest, **kwargs), a.imag.to(*rest, **kwargs))
    if dtype in _REAL_OF:
        real_dtype = _REAL_OF[dtype]
        return ComplexPair(a.real.to(*rest, **{**kwargs, "dtype": real_dtype}),
                           a.imag.to(*rest, **{**kwargs, "dtype": real_dtype}))
    return a.real.to(*rest, **{**kwargs, "dtype": dtype})


def both(func: Callable[..., object]) -> Callable[..., ComplexPair]:
    """An op that is real-linear and acts elementwise on structure (reshape, sum, indexing, roll...):
    applied to each part, through the rewrites in force."""
    def on_parts(a: ComplexPair, *args: object, **kwargs: object) -> ComplexPair:
        real, imag = call(func, a.real, *args, **kwargs), call(func, a.imag, *args, **kwargs)
        if isinstance(real, (tuple, list)):
            raise RewriteNotApplicable("complex", function_name(func), "it returns several tensors")
        return ComplexPair(real, imag)  # type: ignore[arg-type]
    return on_parts


def _sequence(func: Callable[..., object]) -> Callable[..., ComplexPair]:
    """cat / stack of pairs and real tensors."""
    def on_parts(tensors: Sequence[Operand], *args: object, **kwargs: object) -> ComplexPair:
        split = [parts(t) for t in tensors]
        reals = [r for r, _ in split]
        imags = [torch.zeros_like(r) if i is None else i for r, i in split]  # type: ignore[arg-type]
        return ComplexPair(call(func, reals, *args, **kwargs), call(func, imags, *args, **kwargs))  # type: ignore[arg-type]
    return on_parts


def _split(func: Callable[..., object]) -> Callable[..., tuple[ComplexPair, ...]]:
    """chunk / split / unbind: one pair per piece."""
    def on_parts(a: ComplexPair, *args: object, **kwargs: object) -> tuple[ComplexPair, ...]:
        reals, imags = call(func, a.real, *args, **kwargs), call(func, a.imag, *args, **kwargs)
        return tuple(ComplexPair(r, i) for r, i in zip(reals, imags))  # type: ignore[call-overload]
    return on_parts


def _pad(a: ComplexPair, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> ComplexPair:
    if mode == "constant" and isinstance(value, complex):
        raise RewriteNotApplicable("complex", "torch.nn.functional.pad", "a complex fill value")
    fill = {"value": value} if value else {}
    pad_ = torch.nn.functional.pad
    return ComplexPair(call(pad_, a.real, pad, mode, **fill), call(pad_, a.imag, pad, mode))  # type: ignore[arg-type]


_STRUCTURAL = ("reshape", "view", "transpose", "permute", "unsqueeze", "squeeze", "flatten", "unflatten",
               "contiguous", "clone", "detach", "movedim", "moveaxis", "narrow", "select", "expand", "repeat",
               "flip", "roll", "t", "swapaxes", "diff", "sum", "mean", "cumsum", "tile", "index_select", "gather",
               "__getitem__", "squeeze_", "unsqueeze_", "expand_as", "repeat_interleave", "rot90", "fliplr",
               "flipud", "tril", "triu", "take_along_dim")

IMPLEMENTED: dict[str, Callable[..., object]] = {
    **{name: both(getattr(torch.Tensor, name)) for name in _STRUCTURAL if hasattr(torch.Tensor, name)},
    "add": add, "sub": sub, "subtract": sub, "mul": mul, "multiply": mul, "div": div, "divide": div,
    "true_divide": div, "__add__": add, "__radd__": lambda a, b: add(b, a), "__sub__": sub,
    "__rsub__": lambda a, b: sub(b, a), "__mul__": mul, "__rmul__": lambda a, b: mul(b, a), "__truediv__": div,
    "__rtruediv__": lambda a, b: div(b, a), "__matmul__": matmul, "__rmatmul__": lambda a, b: matmul(b, a),
    "neg": lambda a: -a, "negative": lambda a: -a, "__neg__": lambda a: -a,
    "abs": absolute, "absolute": absolute, "__abs__": absolute, "angle": angle, "conj": conj,
    "conj_physical": conj, "resolve_conj": lambda a: a, "resolve_neg": lambda a: a,
    "pow": pow, "__pow__": pow, "square": lambda a: mul(a, a), "exp": exp, "log": log, "sqrt": sqrt,
    "reciprocal": lambda a: div(1.0, a), "matmul": matmul, "mm": matmul, "bmm": matmul,
    "view_as_real": view_as_real, "real": lambda a: a.real, "imag": lambda a: a.imag,
    "is_complex": lambda a: True, "to": to, "size": lambda a, dim=None: a.size(dim), "dim": lambda a: a.dim(),
    "cat": _sequence(torch.cat), "concat": _sequence(torch.cat), "concatenate": _sequence(torch.cat),
    "stack": _sequence(torch.stack), "chunk": _split(torch.Tensor.chunk), "split": _split(torch.Tensor.split),
    "unbind": _split(torch.Tensor.unbind), "pad": _pad,
}

#: Functions other modules implement on pairs (buildsys.rewrites.dft adds the FFTs when imported).
_REGISTERED: dict[Callable[..., object], Callable[..., object]] = {}


def register(func: Callable[..., object], impl: Callable[..., object]) -> None:
    """Make `func` called on a pair run `impl` (with the same arguments)."""
    _REGISTERED[func] = impl
    _by_function.cache_clear()


@functools.lru_cache(maxsize=1)
def _by_function() -> dict[Callable[..., object], Callable[..., object]]:
    """The torch functions and Tensor methods (and their dunder forms) a pair answers, by function object
    (with what pair_ops.py registers: `registry.apply` imports it before any rewritten forward runs, so that no
    import happens while TorchDynamo traces one)."""
    table: dict[Callable[..., object], Callable[..., object]] = dict(_REGISTERED)
    for name, impl in IMPLEMENTED.items():
        for owner in (torch, torch.Tensor, torch.nn.functional):
            func = getattr(owner, name, None)
            if func is not None and callable(func):
                table[func] = impl
    import operator  # TorchDynamo (torch.export strict=True) hands the operators, not the Tensor dunders

    table.update({operator.add: add, operator.sub: sub, operator.mul: mul, operator.truediv: div,
                  operator.matmul: matmul, operator.neg: IMPLEMENTED["neg"], operator.pow: pow})
    table[torch.Tensor.real.__get__] = IMPLEMENTED["real"]  # type: ignore[attr-defined]
    table[torch.Tensor.imag.__get__] = IMPLEMENTED["imag"]  # type: ignore[attr-defined]
    return table
