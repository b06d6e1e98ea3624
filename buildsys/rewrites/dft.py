"""Discrete Fourier transforms as real matmuls: precomputed cos/sin bases and torch.fft's 1-D transforms on real pairs.

A basis is computed once in float64 NumPy from the exact phase (k·t mod n) and enters the graph as a
constant of the input's dtype, so the graph holds one matmul per part and no FFT op. An n-point
transform costs O(n²) instead of O(n log n): right for the frame sizes of audio frontends (n ≤ 2048),
not for long signals. Importing this module makes torch.fft.fft / ifft / rfft / irfft work on pairs.
"""

from __future__ import annotations

import functools
import math
from typing import overload

import numpy as np
import torch

from buildsys.rewrites.base import RewriteNotApplicable
from buildsys.rewrites.mechanism import constant, static_size
from buildsys.rewrites.pair import ComplexPair, parts, register


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


def _scale(n: int, norm: str | None, inverse: bool) -> float:
    if norm in (None, "backward"):
        return 1.0 / n if inverse else 1.0
    if norm == "ortho":
        return 1.0 / math.sqrt(n)
    if norm == "forward":
        return 1.0 if inverse else 1.0 / n
    raise RewriteNotApplicable("complex", "torch.fft", f"norm={norm!r}")


def _fit(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [..., L] trimmed or zero-padded to [..., n], as torch.fft does with its `n` argument."""
    length = static_size(x, -1, "complex", "torch.fft")
    if length > n:
        return x[..., :n]
    if length < n:
        return torch.nn.functional.pad(x, (0, n - length))
    return x


@overload
def _last(x: torch.Tensor, dim: int) -> torch.Tensor: ...
@overload
def _last(x: torch.Tensor | None, dim: int) -> torch.Tensor | None: ...
def _last(x: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    return None if x is None else x.movedim(dim, -1)


def _dim_back(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.movedim(-1, dim)


def _real_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _check(name: str, out: object) -> None:
    if out is not None:
        raise RewriteNotApplicable("complex", f"torch.fft.{name}", "the out= argument")


def _forward(x: ComplexPair | torch.Tensor, n: int | None, dim: int, norm: str | None, bins_of: str,
             inverse: bool, name: str) -> ComplexPair:
    real, imag = parts(x)
    if not isinstance(real, torch.Tensor):
        raise RewriteNotApplicable("complex", f"torch.fft.{name}", "a Python number")
    real = _last(real.to(_real_dtype(real)), dim)
    imag = _last(imag if isinstance(imag, torch.Tensor) else None, dim)
    assert real is not None
    size = n if n is not None else static_size(real, -1, "complex", f"torch.fft.{name}")
    real = _fit(real, size)
    imag = None if imag is None else _fit(imag, size)
    bins = size // 2 + 1 if bins_of == "half" else size
    cos, sin = basis(size, bins, real.dtype)
    cos, sin = cos.T * _scale(size, norm, inverse), sin.T * _scale(size, norm, inverse)  # [size, bins]
    sign = 1.0 if inverse else -1.0  # e^{∓iθ}: forward subtracts, inverse adds
    out_re = real @ cos - (imag @ sin) * sign if imag is not None else real @ cos
    out_im = real @ sin * sign + (imag @ cos if imag is not None else 0.0)
    return ComplexPair(_dim_back(out_re, dim), _dim_back(out_im, dim))


def fft(input: ComplexPair | torch.Tensor, n: int | None = None, dim: int = -1, norm: str | None = None,
        *, out: object = None) -> ComplexPair:
    _check("fft", out)
    return _forward(input, n, dim, norm, "full", inverse=False, name="fft")


def ifft(input: ComplexPair | torch.Tensor, n: int | None = None, dim: int = -1, norm: str | None = None,
         *, out: object = None) -> ComplexPair:
    _check("ifft", out)
    return _forward(input, n, dim, norm, "full", inverse=True, name="ifft")


def rfft(input: torch.Tensor, n: int | None = None, dim: int = -1, norm: str | None = None,
         *, out: object = None) -> ComplexPair:
    _check("rfft", out)
    if isinstance(input, ComplexPair):
        raise RewriteNotApplicable("complex", "torch.fft.rfft", "a complex input (torch refuses it too)")
    return _forward(input, n, dim, norm, "half", inverse=False, name="rfft")


def irfft(input: ComplexPair | torch.Tensor, n: int | None = None, dim: int = -1, norm: str | None = None,
          *, out: object = None) -> torch.Tensor:
    """The real inverse of a half spectrum: bins 0..n//2, the others counted twice (Hermitian symmetry);
    the imaginary parts of the DC and Nyquist bins are ignored, as torch's C2R transform does."""
    _check("irfft", out)
    real, imag = parts(input)
    if not isinstance(real, torch.Tensor):
        raise RewriteNotApplicable("complex", "torch.fft.irfft", "a Python number")
    real = _last(real.to(_real_dtype(real)), dim)
    assert real is not None
    imag_t = _last(imag if isinstance(imag, torch.Tensor) else None, dim)
    size = n if n is not None else 2 * (static_size(real, -1, "complex", "torch.fft.irfft") - 1)
    bins = size // 2 + 1
    real = _fit(real, bins)
    imag_t = None if imag_t is None else _fit(imag_t, bins)
    weight = np.full(bins, 2.0)
    weight[0] = 1.0
    if size % 2 == 0:
        weight[-1] = 1.0
    cos64, sin64 = _basis64(size, bins)
    scale = _scale(size, norm, inverse=True)
    cos = constant(cos64 * weight[:, None] * scale, real.dtype)  # [bins, size]
    sin = constant(sin64 * weight[:, None] * scale, real.dtype)
    out_re = real @ cos - imag_t @ sin if imag_t is not None else real @ cos
    return _dim_back(out_re, dim)


for _name, _impl in (("fft", fft), ("ifft", ifft), ("rfft", rfft), ("irfft", irfft)):
    register(getattr(torch.fft, _name), _impl)
