"""The FFT family: every torch.fft transform, torch.stft / istft and the window functions, without an FFT op.

- `fft` (the family): fft / ifft / rfft / irfft / hfft / ihfft, their 2-D and n-D forms (fft2, ifft2,
  rfft2, irfft2, hfft2, ihfft2, fftn, ifftn, rfftn, irfftn, hfftn, ihfftn) with `n` / `s` / `dim` /
  `norm`, as matmuls with a DFT basis at static sizes (buildsys.rewrites.dft); fftshift / ifftshift as rolls on
  real tensors and pairs; torch.stft as strided conv1ds and torch.istft as transposed conv1ds with the windowed
  basis; hann / hamming / blackman / bartlett windows as constants (buildsys.rewrites.spectral). Complex
  results are real pairs (buildsys.rewrites.pair), which the model's later complex arithmetic keeps real.
- `stft` (a member): torch.stft and the window functions only, the name targets set before the family.

Why a rewrite and not a decomposition: PyTorch decomposes torch.fft.* only into `_fft_r2c`, `_fft_c2c`
and `_fft_c2r`, which no decomposition table lowers further, and their values are complex: converters
without complex dtypes or an FFT op (litert-torch, ExecuTorch, Core ML, the legacy ONNX exporter on
complex STFTs) refuse them whatever the decomposition. Equivalence: tests/rewrites/test_rewrite_families_fft.py.
"""

from __future__ import annotations

from buildsys.rewrites.base import HandlerTable, Rewrite

#: What every FFT turns into once decomposed, and the signs of a refused FFT or complex value.
_DECOMPOSED = ("aten::_fft_r2c", "aten::_fft_c2c", "aten::_fft_c2r")
_COMPLEX_SIGNS = (r"complex<f\d+>", r"\bcomplex(32|64|128)\b", r"Complex(Float|Double|Half)", r"complex types?\b",
                  r"complex dtype", r"\b_conj(_copy|_physical)?\b")  # a conjugate is of a complex value
_TRANSFORMS = ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft", "fft2", "ifft2", "rfft2", "irfft2", "hfft2", "ihfft2",
               "fftn", "ifftn", "rfftn", "irfftn", "hfftn", "ihfftn")
_WINDOW_OPS = ("aten::hann_window", "aten::hamming_window", "aten::blackman_window", "aten::bartlett_window")


def _stft_handlers() -> HandlerTable:
    import torch

    from buildsys.rewrites import spectral

    table = {torch.stft: spectral.stft, torch.functional.stft: spectral.stft, torch.Tensor.stft: spectral.stft}
    table.update({getattr(torch, name): handler for name, handler in spectral.WINDOWS.items()})
    return table


def _fft_handlers() -> HandlerTable:
    import torch

    from buildsys.rewrites import dft, spectral

    table = dict(_stft_handlers())
    table.update({getattr(torch.fft, name): impl for name, impl in dft.TRANSFORMS.items()})
    table.update({torch.istft: spectral.istft, torch.functional.istft: spectral.istft, torch.Tensor.istft: spectral.istft})
    table.update({torch.fft.fftshift: _shift(inverse=False), torch.fft.ifftshift: _shift(inverse=True)})
    return table


def _shift(inverse: bool) -> object:
    """fftshift / ifftshift as rolls by ⌊n/2⌋ (−⌊n/2⌋ for the inverse) along `dim` (every dim when None), done with
    slices and a concatenation (sequence.roll), on a real tensor or on each part of a real pair."""
    from typing import Any

    def shift(input: Any, dim: int | tuple[int, ...] | list[int] | None = None) -> Any:
        from buildsys.rewrites.pair import ComplexPair
        from buildsys.rewrites.sequence import roll

        dims = list(range(input.dim())) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        shifts = [-(int(input.shape[d]) // 2) if inverse else int(input.shape[d]) // 2 for d in dims]
        if isinstance(input, ComplexPair):
            return ComplexPair(roll(input.real, shifts, dims), roll(input.imag, shifts, dims))
        return roll(input, shifts, dims)

    return shift


REWRITES = (
    Rewrite(
        name="fft",
        version=3,  # 2: its pairs' zeros_like / empty_like (pair_ops.py); 3: fftshift / ifftshift as rolls
        removes=("aten::stft", "aten::istft", *(f"aten::fft_{t}" for t in _TRANSFORMS), *_DECOMPOSED, *_WINDOW_OPS,
                 "aten::unfold", "aten::fft_fftshift", "aten::fft_ifftshift"),
        description="the FFT family (torch.fft's 1-D, 2-D and n-D transforms with n/s/dim/norm, stft, istft, "
                    "windows) as DFT matmuls and strided convolutions at static sizes; complex results as "
                    "real pairs",
        handlers=_fft_handlers,
        # ONNX's DFT / STFT, OpenVINO's RDFT / IRDFT nodes, litert-torch's "FFT normalization" and complex dtypes
        signs=(*_COMPLEX_SIGNS, r"\bSTFT\b", r"\bI?R?DFT\b", r"\bI?R?FFT\b"),
    ),
    Rewrite(
        name="stft",
        version=1,
        removes=("aten::stft", *_WINDOW_OPS, "aten::_fft_r2c", "aten::unfold"),
        description="torch.stft as strided conv1ds with the windowed DFT basis (complex results as real "
                    "pairs), window functions as constants: no STFT, FFT or complex op in the graph",
        handlers=_stft_handlers,
        signs=(*_COMPLEX_SIGNS, r"\bSTFT\b", r"\bDFT\b"),
        family="fft",
    ),
)
