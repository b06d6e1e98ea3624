"""Discrete Fourier transforms as real matmuls: every torch.fft transform on real tensors and real pairs.

A basis is computed once in float64 NumPy from the exact phase (k·t mod n) and enters the graph as a
constant of the input's dtype, so the graph holds one matmul per part and no FFT op. An n-point
transform costs O(n²) instead of O(n log n): right for the frame sizes of audio frontends and the
sides of small images (n ≤ 2048), not for long signals. An n-D transform is the 1-D transform along
each of its dims in turn, as pocketfft computes it (the real-to-complex half first, the
complex-to-real half last), with each dim's share of the norm; sizes must be static (`static_size`).

Every transform takes torch.fft's own arguments (`n` / `s`, `dim`, `norm`) and returns a ComplexPair
(buildsys.rewrites.pair) where torch returns a complex tensor. Importing this module makes the
transforms answer when called on a pair, as they do under the `fft` rewrite.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

from buildsys.rewrites.base import RewriteNotApplicable, refuse_out
from buildsys.rewrites.mechanism import constant, from_last, static_size, to_last
from buildsys.rewrites.pair import ComplexPair, Operand, both, parts, register

_REWRITE = "fft"


@functools.lru_cache(maxsize=64)
def _basis64(n: int, bins: int, offset: int = 0, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of 2π·k·(t + offset)/n for k < bins and t < length (default n), each [bins, length]."""
    k = np.arange(bins, dtype=np.int64)[:, None]
    t = np.arange(n if length is None else length, dtype=np.int64)[None, :] + offset
    phase = 2.0 * math.pi * ((k * t) % n) / n  # exact integer phase: no error growing with k·t
    return np.cos(phase), np.sin(phase)


def basis(n: int, bins: int, dtype: torch.dtype, offset: int = 0, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin bases as constants of `dtype` ([bins, length])."""
    cos, sin = _basis64(n, bins, offset, length)
    return constant(cos, dtype), constant(sin, dtype)


def scale(n: int, norm: str | None, inverse: bool, name: str) -> float:
    """The factor torch.fft's `norm` puts on an n-point forward or inverse transform."""
    if norm in (None, "backward"):
        return 1.0 / n if inverse else 1.0
    if norm == "ortho":
        return 1.0 / math.sqrt(n)
    if norm == "forward":
        return 1.0 if inverse else 1.0 / n
    raise ValueError(f'Invalid normalization mode: "{norm}"') if isinstance(norm, str) \
        else RewriteNotApplicable(_REWRITE, f"torch.fft.{name}", f"norm={norm!r}")


def _swapped(norm: str | None) -> str:
    """The norm of the transform in the other direction (hfft is irfft of the conjugate, with it)."""
    return {None: "forward", "backward": "forward", "forward": "backward", "ortho": "ortho"}.get(norm, str(norm))


def _fit(x: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """x [..., L] trimmed or zero-padded to [..., n], as torch.fft does with its `n` argument."""
    length = static_size(x, -1, _REWRITE, f"torch.fft.{name}")
    if length > n:
        return x[..., :n]
    if length < n:
        return torch.nn.functional.pad(x, (0, n - length))
    return x


def _real_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _last_parts(x: Operand, dim: int, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The real and imaginary parts (None: zero) of x with `dim` moved last, in a floating dtype."""
    real, imag = parts(x)
    if not isinstance(real, torch.Tensor):
        raise RewriteNotApplicable(_REWRITE, f"torch.fft.{name}", "a Python number")
    dtype = _real_dtype(real)
    imag_t = to_last(imag.to(dtype), dim) if isinstance(imag, torch.Tensor) else None
    return to_last(real.to(dtype), dim), imag_t


def _points(n: int | None, name: str) -> int | None:
    """The `n` (or an `s` entry) as a Python int: under torch.jit.trace a size read from a tensor is a traced
    0-d tensor (the trace specialises to it, as the basis does); a dynamic torch.export size cannot be."""
    if n is None:
        return None
    if isinstance(n, torch.SymInt):
        raise RewriteNotApplicable(_REWRITE, f"torch.fft.{name}", "a dynamic n or s (the basis depends on it)")
    if int(n) < 1:
        raise RuntimeError(f"Invalid number of data points ({int(n)}) specified")
    return int(n)


def c2c(x: Operand, n: int | None, dim: int, norm: str | None, inverse: bool, name: str,
        bins: str = "full") -> ComplexPair:
    """The complex transform along `dim` (e^{∓2πikt/n}); `bins="half"`: only bins 0..n//2 (rfft, ihfft)."""
    n = _points(n, name)
    real, imag = _last_parts(x, dim, name)
    size = n if n is not None else static_size(real, -1, _REWRITE, f"torch.fft.{name}")
    real = _fit(real, size, name)
    imag = None if imag is None else _fit(imag, size, name)
    cos, sin = basis(size, size // 2 + 1 if bins == "half" else size, real.dtype)
    factor = scale(size, norm, inverse, name)
    cos, sin = cos.T * factor, sin.T * factor  # [size, bins]
    sign = 1.0 if inverse else -1.0  # e^{∓iθ}: forward subtracts, inverse adds
    out_re = real @ cos - (imag @ sin) * sign if imag is not None else real @ cos
    out_im = real @ sin * sign + (imag @ cos if imag is not None else 0.0)
    return ComplexPair(from_last(out_re, dim), from_last(out_im, dim))


def c2r(x: Operand, n: int | None, dim: int, norm: str | None, name: str) -> torch.Tensor:
    """The real inverse of a half spectrum along `dim`: bins 0..n//2, the others counted twice (Hermitian
    symmetry); the imaginary parts of the DC and Nyquist bins are ignored, as torch's C2R transform does."""
    n = _points(n, name)
    real, imag = _last_parts(x, dim, name)
    size = n if n is not None else 2 * (static_size(real, -1, _REWRITE, f"torch.fft.{name}") - 1)
    if size < 1:
        raise RuntimeError(f"Invalid number of data points ({size}) specified")
    bins = size // 2 + 1
    real = _fit(real, bins, name)
    imag = None if imag is None else _fit(imag, bins, name)
    weight = np.full(bins, 2.0)
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    cos64, sin64 = _basis64(size, bins)
    factor = scale(size, norm, True, name)
    cos = constant(cos64 * weight[:, None] * factor, real.dtype)  # [bins, size]
    sin = constant(sin64 * weight[:, None] * factor, real.dtype)
    out = real @ cos - imag @ sin if imag is not None else real @ cos
    return from_last(out, dim)


def _no_out(name: str, out: object) -> None:
    refuse_out(_REWRITE, f"torch.fft.{name}", out)


def _conj(x: Operand) -> Operand:
    """The conjugate of a pair; a real tensor or number is its own."""
    return ComplexPair(x.real, -x.imag) if isinstance(x, ComplexPair) else x


def _real_only(x: Operand, name: str) -> None:
    if isinstance(x, ComplexPair):
        raise RuntimeError(f"{name} expects a real input tensor, but got {x.dtype}")


# --- 1-D ----------------------------------------------------------------------------------------------

def fft(input: Operand, n: int | None = None, dim: int = -1, norm: str | None = None, *, out: object = None) -> ComplexPair:
    _no_out("fft", out)
    return c2c(input, n, dim, norm, False, "fft")


def ifft(input: Operand, n: int | None = None, dim: int = -1, norm: str | None = None, *, out: object = None) -> ComplexPair:
    _no_out("ifft", out)
    return c2c(input, n, dim, norm, True, "ifft")


def rfft(input: torch.Tensor, n: int | None = None, dim: int = -1, norm: str | None = None, *, out: object = None) -> ComplexPair:
    _no_out("rfft", out)
    _real_only(input, "rfft")
    return c2c(input, n, dim, norm, False, "rfft", bins="half")


def irfft(input: Operand, n: int | None = None, dim: int = -1, norm: str | None = None, *, out: object = None) -> torch.Tensor:
    _no_out("irfft", out)
    return c2r(input, n, dim, norm, "irfft")


def hfft(input: Operand, n: int | None = None, dim: int = -1, norm: str | None = None, *, out: object = None) -> torch.Tensor:
    """The real spectrum of a Hermitian signal given by its first half: irfft of the conjugate, the norm swapped."""
    _no_out("hfft", out)
    return c2r(_conj(input), n, dim, _swapped(norm), "hfft")


def ihfft(input: torch.Tensor, n: int | None = None, dim: int = -1, norm: str | None = None, *, out: object = None) -> ComplexPair:
    """The inverse of hfft: the conjugate of rfft, the norm swapped."""
    _no_out("ihfft", out)
    _real_only(input, "ihfft")
    half = c2c(input, n, dim, _swapped(norm), False, "ihfft", bins="half")
    return ComplexPair(half.real, -half.imag)


# --- 2-D and n-D ------------------------------------------------------------------------------------

def _plan(x: Operand, s: Sequence[int] | None, dim: int | Sequence[int] | None, name: str) -> list[tuple[int, int | None]]:
    """(dim, n) per transformed dim, as torch.fft's n-D functions read `s` and `dim`: dim None means the
    last len(s) dims (all dims without s); an s entry of -1 keeps that dim's size."""
    if not isinstance(x, (torch.Tensor, ComplexPair)):
        raise RewriteNotApplicable(_REWRITE, f"torch.fft.{name}", "a Python number")
    ndim = x.dim()
    if isinstance(dim, int):
        dim = [dim]
    if dim is None:
        dim = list(range(ndim - len(s), ndim)) if s is not None else list(range(ndim))
    dims = [d % ndim for d in dim]
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"{name} dims must be unique")
    if s is not None and len(s) != len(dims):
        raise RuntimeError(f"When given, dim and shape arguments must have the same length (s: {list(s)}, "
                           f"dim: {list(dims)})")
    if not dims:
        raise RewriteNotApplicable(_REWRITE, f"torch.fft.{name}", "no dim to transform")
    sizes = [None] * len(dims) if s is None else [None if int(n) == -1 else _points(n, name) for n in s]
    return list(zip(dims, sizes))


def fftn(input: Operand, s: Sequence[int] | None = None, dim: Sequence[int] | None = None, norm: str | None = None,
         *, out: object = None, _name: str = "fftn", _inverse: bool = False) -> ComplexPair:
    """The full transform along each dim in turn (ifftn, fft2, ifft2 are this with other defaults)."""
    _no_out(_name, out)
    (first, n_first), *rest = _plan(input, s, dim, _name)
    result = c2c(input, n_first, first, norm, _inverse, _name)
    for d, n in rest:
        result = c2c(result, n, d, norm, _inverse, _name)
    return result


def ifftn(input: Operand, s: Sequence[int] | None = None, dim: Sequence[int] | None = None, norm: str | None = None,
          *, out: object = None) -> ComplexPair:
    return fftn(input, s, dim, norm, out=out, _name="ifftn", _inverse=True)


def fft2(input: Operand, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None,
         *, out: object = None) -> ComplexPair:
    return fftn(input, s, dim, norm, out=out, _name="fft2")


def ifft2(input: Operand, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None,
          *, out: object = None) -> ComplexPair:
    return fftn(input, s, dim, norm, out=out, _name="ifft2", _inverse=True)


def rfftn(input: torch.Tensor, s: Sequence[int] | None = None, dim: Sequence[int] | None = None,
          norm: str | None = None, *, out: object = None, _name: str = "rfftn") -> ComplexPair:
    """The half spectrum along the last of the dims, then full transforms along the others."""
    _no_out(_name, out)
    _real_only(input, _name)
    plan = _plan(input, s, dim, _name)
    (last, n_last), rest = plan[-1], plan[:-1]
    result = c2c(input, n_last, last, norm, False, _name, bins="half")
    for d, n in rest:
        result = c2c(result, n, d, norm, False, _name)
    return result


def rfft2(input: torch.Tensor, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None,
          *, out: object = None) -> ComplexPair:
    return rfftn(input, s, dim, norm, out=out, _name="rfft2")


def irfftn(input: Operand, s: Sequence[int] | None = None, dim: Sequence[int] | None = None, norm: str | None = None,
           *, out: object = None, _name: str = "irfftn") -> torch.Tensor:
    """Full inverse transforms along all dims but the last, then the real inverse along the last."""
    _no_out(_name, out)
    plan = _plan(input, s, dim, _name)
    (last, n_last), rest = plan[-1], plan[:-1]
    result: Operand = input
    for d, n in rest:
        result = c2c(result, n, d, norm, True, _name)
    return c2r(result, n_last, last, norm, _name)


def irfft2(input: Operand, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None,
           *, out: object = None) -> torch.Tensor:
    return irfftn(input, s, dim, norm, out=out, _name="irfft2")


def hfftn(input: Operand, s: Sequence[int] | None = None, dim: Sequence[int] | None = None, norm: str | None = None,
          *, out: object = None, _name: str = "hfftn") -> torch.Tensor:
    return irfftn(_conj(input), s, dim, _swapped(norm), out=out, _name=_name)


def hfft2(input: Operand, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None,
          *, out: object = None) -> torch.Tensor:
    return hfftn(input, s, dim, norm, out=out, _name="hfft2")


def ihfftn(input: torch.Tensor, s: Sequence[int] | None = None, dim: Sequence[int] | None = None,
           norm: str | None = None, *, out: object = None, _name: str = "ihfftn") -> ComplexPair:
    half = rfftn(input, s, dim, _swapped(norm), out=out, _name=_name)
    return ComplexPair(half.real, -half.imag)


def ihfft2(input: torch.Tensor, s: Sequence[int] | None = None, dim: Sequence[int] = (-2, -1), norm: str | None = None,
           *, out: object = None) -> ComplexPair:
    return ihfftn(input, s, dim, norm, out=out, _name="ihfft2")


TRANSFORMS = {name: globals()[name] for name in (
    "fft", "ifft", "rfft", "irfft", "hfft", "ihfft", "fft2", "ifft2", "rfft2", "irfft2", "hfft2", "ihfft2",
    "fftn", "ifftn", "rfftn", "irfftn", "hfftn", "ihfftn")}

for _name, _impl in TRANSFORMS.items():
    register(getattr(torch.fft, _name), _impl)
for _shift in (torch.fft.fftshift, torch.fft.ifftshift):  # rolls: the same on each part
    register(_shift, both(_shift))
