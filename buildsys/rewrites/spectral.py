"""Short-time transforms for the `fft` family (and its `stft` member): torch.stft as strided conv1ds whose
kernels are the windowed DFT basis, torch.istft as transposed conv1ds (overlap-add), and window functions
(hann, hamming, blackman, bartlett) as constants; complex values as real pairs.

torch.stft frames the (centre-padded) signal, multiplies each frame by the window and takes an FFT:
two convolutions with stride `hop_length` whose `bins` output channels are window·cos and −window·sin
(the real and imaginary parts of e^{−2πikt/n}) compute exactly that with an op every converter has.
The kernel spans only the window's non-zero samples (win_length), offset by its position in the
n_fft frame, so a short window costs less. Centre padding: `constant` is a pad, `reflect`,
`replicate` and `circular` are slices with a constant reversal gather (no reflection_pad op). Spectrogram and mel frontends written with torch.stft (torchaudio's
Spectrogram and MelSpectrogram call it) come out as conv1d + elementwise ops + the mel matmul.

Handled: n_fft, hop_length, win_length, window (any tensor or None), center, pad_mode, normalized,
onesided, return_complex True/False, align_to_window; 1-D and 2-D real input. A complex input raises
RewriteNotApplicable. Equivalence: tests/rewrites/test_rewrites.py (max abs error ≤ 1e-4 × max|reference|).

torch.istft inverts each frame's spectrum (the C2R basis, or the complex one for return_complex=True),
multiplies it by the window and overlap-adds the frames: one conv_transpose1d per part whose kernels are
basis·window, stride hop_length; the window envelope Σ window² is the same transposed convolution of
ones, computed in the graph so a window held as a buffer works too. Handled: n_fft, hop_length,
win_length, window, center, normalized, onesided, length, return_complex; 2-D and 3-D input. torch
refuses a window whose envelope falls below 1e-11 (NOLA); the rewrite cannot check values inside a
graph and divides by it: use a window that overlaps (every torch window with hop_length ≤ n_fft // 2).
This module imports torch: the rewrites that use it declare themselves in buildsys/rewrites/fft.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.rewrites.base import Handler, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

    from buildsys.rewrites.pair import ComplexPair

_WINDOWS = ("hann_window", "hamming_window", "blackman_window", "bartlett_window")
#: The rewrite named in refusals: stft is declared as the `stft` member, and the `fft` family holds it.
REWRITE = "stft"


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
        raise RewriteNotApplicable(REWRITE, "torch.stft", f"pad_mode={mode!r}")
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
        raise RewriteNotApplicable(REWRITE, "torch.stft", "a complex input signal (only real signals are rewritten)")
    if return_complex is None:
        raise RuntimeError("stft requires the return_complex parameter be given for real inputs, and will further "
                           "require that return_complex=True in a future PyTorch release.")
    if center and align_to_window is not None:
        raise RuntimeError("stft align_to_window should only be set when center = false")
    if input.dim() not in (1, 2):
        raise RewriteNotApplicable(REWRITE, "torch.stft", f"a {input.dim()}-D input (torch.stft takes 1-D or 2-D)")
    hop = hop_length if hop_length is not None else n_fft // 4
    win = win_length if win_length is not None else n_fft
    if not 0 < win <= n_fft:
        raise RewriteNotApplicable(REWRITE, "torch.stft", f"win_length={win} outside 1..n_fft={n_fft}")
    dtype = input.dtype if input.is_floating_point() else torch.get_default_dtype()
    if window is None:
        window = constant(np.ones(win), dtype)
    elif window.dim() != 1 or static_size(window, 0, REWRITE, "torch.stft") != win:
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


def _window(name: str) -> Handler:
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


def istft(input: object, n_fft: int, hop_length: int | None = None, win_length: int | None = None,
          window: torch.Tensor | None = None, center: bool = True, normalized: bool = False,
          onesided: bool | None = None, length: int | None = None,
          return_complex: bool = False) -> torch.Tensor | ComplexPair:
    """torch.istft's arguments and result (a ComplexPair for return_complex=True)."""
    import numpy as np
    import torch

    from buildsys.rewrites.dft import _basis64
    from buildsys.rewrites.mechanism import constant, static_size
    from buildsys.rewrites.pair import ComplexPair, parts

    name = "torch.istft"
    if not isinstance(input, ComplexPair):
        raise RewriteNotApplicable("fft", name, "a spectrum that is not a complex value held as a real pair (the "
                                   "output of a rewritten stft or FFT)")
    real, imag = parts(input)
    assert isinstance(real, torch.Tensor) and isinstance(imag, torch.Tensor)
    if real.dim() not in (2, 3):
        raise RuntimeError(f"istft expected a tensor with 2 or 3 dimensions of complex dtype, got {real.dim()}")
    batched = real.dim() == 3
    real, imag = (real, imag) if batched else (real.unsqueeze(0), imag.unsqueeze(0))
    hop = hop_length if hop_length is not None else n_fft // 4
    win = win_length if win_length is not None else n_fft
    fft_size = static_size(real, 1, "fft", name)
    frames = static_size(real, 2, "fft", name)
    onesided = fft_size != n_fft if onesided is None else onesided
    if return_complex and onesided:
        raise RuntimeError("cannot have onesided output if window or input is complex")
    if (fft_size != n_fft // 2 + 1) if onesided else (fft_size != n_fft):
        raise RuntimeError(f"istft: expected the frequency dimension (size {fft_size}) to be "
                           f"{n_fft // 2 + 1 if onesided else n_fft} for n_fft={n_fft}, onesided={onesided}")
    dtype = real.dtype
    left = (n_fft - win) // 2
    if window is None:
        window = constant(np.ones(win), dtype)
    elif window.dim() != 1 or static_size(window, 0, "fft", name) != win:
        raise RuntimeError(f"Invalid window shape: window has to be 1D and length of `win_length` ({win})")
    window = window.to(dtype)
    if win != n_fft:
        window = torch.nn.functional.pad(window, (left, n_fft - win - left))
    norm = 1.0 / np.sqrt(n_fft) if normalized else 1.0 / n_fft
    bins = n_fft // 2 + 1
    if not return_complex and not onesided:  # a two-sided spectrum of a real signal: its first half
        real, imag = real[:, :bins], imag[:, :bins]
    used = n_fft if return_complex else bins
    cos64, sin64 = _basis64(n_fft, used)
    weight = np.ones(used)
    if not return_complex:  # C2R: bins other than DC and Nyquist stand for their mirror images too
        weight[1:] = 2.0
        if n_fft % 2 == 0:
            weight[-1] = 1.0
    cos = constant(cos64 * weight[:, None] * norm, dtype) * window  # [used, n_fft]: e^{+2πikt/n}·window
    sin = constant(sin64 * weight[:, None] * norm, dtype) * window

    def overlap_add(parts_in: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv_transpose1d(parts_in, kernel.unsqueeze(1), stride=hop)[:, 0]

    out_re = overlap_add(real, cos) - overlap_add(imag, sin)
    out_im = overlap_add(real, sin) + overlap_add(imag, cos) if return_complex else None
    total = n_fft + hop * (frames - 1)
    envelope = torch.nn.functional.conv_transpose1d(torch.ones(1, 1, frames, dtype=dtype),
                                                    (window * window)[None, None, :], stride=hop)[0]  # [1, total]
    start = n_fft // 2 if center else 0
    if isinstance(length, torch.SymInt):
        raise RewriteNotApplicable("fft", name, "a dynamic length (the output's slice depends on it)")
    # int(): a length read from a tensor's shape is a traced 0-d tensor under torch.jit.trace, a constant here
    end = start + int(length) if length is not None else (total - n_fft // 2 if center else total)
    stop = min(end, total)

    def finish(y: torch.Tensor) -> torch.Tensor:
        if start or stop != total:  # (a no-op slice traces as an alias, which coremltools' export refuses)
            y, kept = y[:, start:stop], envelope[:, start:stop]
        else:
            kept = envelope
        y = y / kept
        if end > total:
            y = torch.nn.functional.pad(y, (0, end - total))
        return y if batched else y[0]

    return ComplexPair(finish(out_re), finish(out_im)) if out_im is not None else finish(out_re)


#: The window functions' replacements, made once so the family and its member share them.
WINDOWS: dict[str, Handler] = {name: _window(name) for name in _WINDOWS}


def _register_istft() -> None:
    """istft's spectrum is a pair, which dispatches on itself: make it answer torch.istft and Tensor.istft."""
    import torch

    from buildsys.rewrites.pair import register

    for func in (torch.istft, torch.Tensor.istft):
        register(func, istft)


_register_istft()
