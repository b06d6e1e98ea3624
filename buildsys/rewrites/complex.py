"""The `complex` rewrite: complex tensors as real pairs, from every place a model makes them.

torch.view_as_complex, torch.complex, torch.polar and torch.fft.fft / ifft / rfft / irfft (as matmuls
with a DFT basis, buildsys.rewrites.dft) return a `ComplexPair` (buildsys.rewrites.pair) instead of a
complex tensor; the pair's own ops (arithmetic, abs, angle, exp, view_as_real, ...) keep it real to the
end. This is the RoPE of LLaMA-style models (view_as_complex · polar · view_as_real) and FFT-domain
filters. While it is in force, any function that still returns a complex tensor (a `.to(torch.cfloat)`,
a complex factory) raises RewriteNotApplicable: the rewritten graph has no complex dtype, or the rewrite
does not apply. Equivalence: tests/test_rewrites.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

    from buildsys.rewrites.pair import ComplexPair


def view_as_complex(input: torch.Tensor) -> ComplexPair:
    from buildsys.rewrites.pair import ComplexPair

    if input.shape[-1] != 2:
        raise RuntimeError("Tensor must have a last dimension of size 2")
    return ComplexPair(input[..., 0], input[..., 1])


def complex_(real: torch.Tensor, imag: torch.Tensor, *, out: object = None) -> ComplexPair:
    import torch

    from buildsys.rewrites.pair import ComplexPair

    if out is not None:
        raise RewriteNotApplicable("complex", "torch.complex", "the out= argument")
    real, imag = torch.broadcast_tensors(real, imag)
    return ComplexPair(real, imag)


def polar(abs: torch.Tensor, angle: torch.Tensor, *, out: object = None) -> ComplexPair:
    from buildsys.rewrites.pair import polar as make

    if out is not None:
        raise RewriteNotApplicable("complex", "torch.polar", "the out= argument")
    return make(abs, angle)


def _handlers() -> HandlerTable:
    import torch

    from buildsys.rewrites import dft

    return {torch.view_as_complex: view_as_complex, torch.complex: complex_, torch.polar: polar,
            torch.fft.fft: dft.fft, torch.fft.ifft: dft.ifft, torch.fft.rfft: dft.rfft, torch.fft.irfft: dft.irfft}


REWRITES = (
    Rewrite(
        name="complex",
        version=1,
        removes=("aten::view_as_complex", "aten::complex", "aten::polar", "aten::view_as_real", "aten::fft_fft",
                 "aten::fft_ifft", "aten::fft_rfft", "aten::fft_irfft", "aten::_fft_r2c", "aten::_fft_c2c",
                 "aten::_fft_c2r"),
        description="complex tensors (view_as_complex, complex, polar, 1-D FFTs) as pairs of real tensors "
                    "with real arithmetic: no complex dtype in the graph",
        handlers=_handlers,
        signs=(r"complex<f\d+>", r"\bcomplex(32|64|128)\b", r"Complex(Float|Double|Half)", r"complex types?\b",
               r"complex dtype", r"\bDFT\b"),
    ),
)
