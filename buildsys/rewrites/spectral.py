"""The `stft` rewrite: torch.stft as strided conv1ds whose kernels are the windowed DFT basis, and
window functions (hann, hamming, blackman, bartlett) as constants; complex results as real pairs.

torch.stft frames the (centre-padded) signal, multiplies each frame by the window and takes an FFT:
two convolutions with stride `hop_length` whose `bins` output channels are window·cos and −window·sin
(the real and imaginary parts of e^{−2πikt/n}) compute exactly that with an op every converter has.
The kernel spans only the window's non-zero samples (win_length), offset by its position in the
n_fft frame, so a short window costs less. Centre padding: `constant` is a pad, `reflect`,
`replicate` and `circular` are slices with a constant reversal gather (no reflection_pad op). Spectrogram and mel frontends written with torch.stft (torchaudio's
Spectrogram and MelSpectrogram call it) come out as conv1d + elementwise ops + the mel matmul.

Handled: n_fft, hop_length, win_length, window (any tensor or None), center, pad_mode, normalized,
onesided, return_complex True/False, align_to_window; 1-D and 2-D real input. A complex input raises
RewriteNotApplicable. Equivalence: tests/test_rewrites.py (max abs error ≤ 1e-4 × max|reference|).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

    from buildsys.rewrites.pair import ComplexPair

_WINDOWS = ("hann_window", "hamming_window", "blackman_window", "bartlett_window")


def _pad_signal(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """x [B, T] padded by `pad` samples on both sides as F.pad(mode) would, without a reflection_pad op."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    if pad == 0:
        return x
    if mode == "constant":
        return torch.nn.functional.pad(x, (pad, pad))
    reverse = constant(np.arange(pad - 1, -1, -1))
    if mode == "reflect":
        left = x[:, 1:pad + 1].index_select(1, reverse)
        right = x[:, -pad - 1:-1].index_select(1, reverse)
    elif mode == "replicate":
        left, right = x[:, :1].expand(-1, pad), x[:, -1:].expand(-1, pad)
    elif mode == "circular":
        left, right = x[:, -pad:], x[:, :pad]
    else:
        raise RewriteNotApplicable("stft", "torch.stft", f"pad_mode={mode!r}")
    return torch.cat([left, x, right], dim=1)


def stft(input: torch.Tensor, n_fft: int, hop_length: int | None = None, win_length: int | None = None,
         window: torch.Tensor | None = None, center: bool = True, pad_mode: str = "reflect",
         normalized: bool = False, onesided: bool | None = None, return_complex: bool | None = None,
         align_to_window: bool | None = None) -> torch.Tensor | ComplexPair:
    """torch.stft's arguments and result (a ComplexPair for return_complex=True)."""
    import numpy as np
    import torch

    from buildsys.rewrites.dft import basis
    from buildsys.rewrites.mechanism import constant, static_size
    from buildsys.rewrites.pair import ComplexPair

    if not isinstance(input, torch.Tensor) or input.is_complex():
        raise RewriteNotApplicable("stft", "torch.stft", "a complex input signal (only real signals are rewritten)")
    if return_complex is None:
        raise RuntimeError("stft requires the return_complex parameter be given for real inputs, and will further "
                           "require that return_complex=True in a future PyTorch release.")
    if center and align_to_window is not None:
        raise RuntimeError("stft align_to_window should only be set when center = false")
    if input.dim() not in (1, 2):
        raise RewriteNotApplicable("stft", "torch.stft", f"a {input.dim()}-D input (torch.stft takes 1-D or 2-D)")
    hop = hop_length if hop_length is not None else n_fft // 4
    win = win_length if win_length is not None else n_fft
    if not 0 < win <= n_fft:
        raise RewriteNotApplicable("stft", "torch.stft", f"win_length={win} outside 1..n_fft={n_fft}")
    dtype = input.dtype if input.is_floating_point() else torch.get_default_dtype()
    if window is None:
        window = constant(np.ones(win), dtype)
    elif window.dim() != 1 or static_size(window, 0, "stft", "torch.stft") != win:
        raise RuntimeError(f"stft: expected a 1D window tensor of size equal to win_length={win}, "
                           f"but got window with size {list(window.shape)}")
    x = input if input.dtype == dtype else input.to(dtype)
    x = x.unsqueeze(0) if input.dim() == 1 else x
    if center:
        x = _pad_signal(x, n_fft // 2, pad_mode)
    left = (n_fft - win) // 2  # where the window sits in the n_fft frame
    right = n_fft - win - left
    if not align_to_window and (left or right):  # frames start at the n_fft frame: the window `left` later
        x = x[:, left:x.shape[1] - right] if right else x[:, left:]  # (a no-op slice would trace as alias)
    bins = n_fft // 2 + 1 if onesided is None or onesided else n_fft
    cos, sin = basis(n_fft, bins, dtype, offset=left, length=win)  # [bins, win]: e^{-2πik(t+left)/n}
    win_t = (window if window.dtype == dtype else window.to(dtype))[None, :]
    if normalized:
        win_t = win_t * (n_fft ** -0.5)
    signal = x.unsqueeze(1)  # [B, 1, T]
    # two convs, not one with 2·bins channels then sliced: onnx2tf's layout pass breaks on the slices
    real = torch.nn.functional.conv1d(signal, (cos * win_t).unsqueeze(1), stride=hop)  # [B, bins, frames]
    imag = torch.nn.functional.conv1d(signal, (sin * -win_t).unsqueeze(1), stride=hop)
    if input.dim() == 1:
        real, imag = real[0], imag[0]
    return ComplexPair(real, imag) if return_complex else torch.stack([real, imag], dim=-1)


def _window(name: str) -> object:
    """torch.<name>_window(length, periodic=True, ..., dtype=...) as a constant computed in NumPy."""
    def make(window_length: int, periodic: bool = True, alpha: float = 0.54, beta: float = 0.46, *,
             dtype: torch.dtype | None = None, layout: object = None, device: torch.device | str | None = None,
             pin_memory: bool = False, requires_grad: bool = False) -> torch.Tensor:
        import numpy as np
        import torch

        from buildsys.rewrites.mechanism import constant

        dtype = dtype or torch.get_default_dtype()
        if window_length <= 1:
            return constant(np.ones(window_length), dtype)
        span = window_length if periodic else window_length - 1
        t = np.arange(window_length, dtype=np.float64) / span
        values = {
            "hann_window": lambda: 0.5 - 0.5 * np.cos(2 * np.pi * t),
            "hamming_window": lambda: alpha - beta * np.cos(2 * np.pi * t),
            "blackman_window": lambda: 0.42 - 0.5 * np.cos(2 * np.pi * t) + 0.08 * np.cos(4 * np.pi * t),
            "bartlett_window": lambda: 1.0 - np.abs(2.0 * t - 1.0),
        }[name]()
        window = constant(values, dtype)
        return window if device is None or str(device) == "cpu" else window.to(device)
    return make


def _handlers() -> HandlerTable:
    import torch

    table = {torch.stft: stft, torch.functional.stft: stft, torch.Tensor.stft: stft}
    table.update({getattr(torch, name): _window(name) for name in _WINDOWS})
    return table


REWRITES = (
    Rewrite(
        name="stft",
        version=1,
        removes=("aten::stft", "aten::hann_window", "aten::hamming_window", "aten::blackman_window",
                 "aten::bartlett_window", "aten::_fft_r2c", "aten::unfold"),
        description="torch.stft as strided conv1ds with the windowed DFT basis (complex results as real "
                    "pairs), window functions as constants: no STFT, FFT or complex op in the graph",
        handlers=_handlers,
        signs=(r"complex<f\d+>", r"\bcomplex(32|64|128)\b", r"Complex(Float|Double|Half)", r"complex types?\b",
               r"\bSTFT\b", r"\bDFT\b"),
    ),
)
