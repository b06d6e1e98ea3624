"""One tiny module per rewrite, each calling the op its rewrite removes (with a shape every converter can take).

tests/rewrites/test_rewrites_graphs.py traces and exports them before and after their rewrite;
benchmarks/rewrite_matrix.py --ops surveys which converters take them.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Fn(nn.Module):
    """A module whose forward is `fn` (a parameter-free op under test), with a linear layer after it so
    converters see a real graph."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args)


def _rope(x: torch.Tensor) -> torch.Tensor:
    """LLaMA-style rotary embedding through complex numbers: view_as_complex · polar · view_as_real."""
    half = x.shape[-1] // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(x.shape[-2], dtype=torch.float32), freqs)
    rotation = torch.polar(torch.ones_like(angles), angles)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], half, 2))
    return torch.view_as_real(z * rotation).flatten(-2)


def _spectral_filter(x: torch.Tensor) -> torch.Tensor:
    """An FFT-domain filter: rfft, a gain per bin, irfft."""
    spectrum = torch.fft.rfft(x, dim=-1)
    gain = torch.linspace(1.0, 0.0, spectrum.shape[-1])
    return torch.fft.irfft(spectrum * gain, n=x.shape[-1], dim=-1)


def _magnitude_stft(x: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(64)
    return torch.stft(x, 64, hop_length=16, window=window, return_complex=True).abs()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _bag(ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return F.embedding_bag(ids, torch.arange(40.0).reshape(10, 4), offsets, mode="mean")


def _fft_filter_2d(x: torch.Tensor) -> torch.Tensor:
    """A 2-D low-pass in the frequency domain on [..., 8, 16]: rfft2, keep the low bins, irfft2 (the 2-D real FFT
    the complex rewrite refused before the FFT family). The mask is a constant of the bins' size: sizes read
    from a traced shape trip coremltools' trace frontend and onnx2tf whatever the op (docs/rewrites.md)."""
    spectrum = torch.fft.rfft2(x, norm="ortho")
    keep = torch.zeros(8, 9)
    keep[:3, :3] = 1.0
    return torch.fft.irfft2(spectrum * keep, s=(8, 16), norm="ortho")


def _istft_roundtrip(x: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(64)
    spec = torch.stft(x, 64, hop_length=16, window=window, return_complex=True)
    return torch.istft(spec * 0.5, 64, hop_length=16, window=window, length=x.shape[-1])


def _complex_mixing(x: torch.Tensor) -> torch.Tensor:
    """Complex weights applied with einsum, then a slice assignment into a complex buffer."""
    z = torch.view_as_complex(x.reshape(2, 8, 8, 2))                                # [B, C, F] of [2, 8, 16]
    weight = torch.complex(torch.linspace(-1, 1, 64), torch.linspace(1, 0, 64))      # (static sizes, as above)
    mixed = torch.einsum("bcf,fg->bcg", z, weight.reshape(8, 8))
    out = torch.zeros(2, 8, 8, dtype=torch.complex64)
    out[..., :2] = mixed[..., :2]
    return torch.view_as_real(out).flatten(-2) + mixed.abs().sum(-1, keepdim=True)


class _Recurrent(nn.Module):
    """One recurrent layer (a module under test) and the output a model would read from it."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        if isinstance(self.layer, nn.LSTMCell):
            return out[0] + out[1]
        return out[0] if isinstance(out, tuple) else out


def _index_add(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(4, 16).index_add(0, torch.tensor([0, 2, 2, 3, 0]), x)  # (static sizes: see _fft_filter_2d)


def _index_put(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(4, 16)
    return out.index_put((torch.tensor([1, 3, 1, 0, 3]),), x, accumulate=True)


#: case → (module, example inputs, the ATen op it removes as torch.export names it, the rewrite that removes it)
def cases() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], str, str]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, generator=gen)
    q = torch.randn(1, 2, 6, 8, generator=gen)
    points = torch.randn(2, 10, 3, generator=gen), torch.randn(2, 7, 3, generator=gen)
    rows = torch.randn(5, 16, generator=gen)
    return {
        "stft": (Fn(_magnitude_stft), (torch.randn(2, 512, generator=gen),), "stft", "stft"),
        "complex": (Fn(_rope), (x,), "view_as_complex", "complex"),
        "embedding-bag": (Fn(_bag), (torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([0, 2, 5])), "embedding_bag",
                          "embedding-bag"),
        "diff": (Fn(lambda t: torch.diff(t, dim=-1)), (x,), "diff", "diff"),
        "roll": (Fn(lambda t: torch.roll(t, shifts=(2, -3), dims=(1, 2))), (x,), "roll", "roll"),
        "unfold": (Fn(lambda t: t.unfold(-1, 4, 2).sum(-1)), (x,), "unfold", "unfold"),
        "fold": (Fn(lambda t: F.fold(t, (6, 6), kernel_size=3)), (torch.randn(1, 18, 16, generator=gen),), "col2im",
                 "fold"),
        "sdpa": (Fn(_attention), (q, q + 1, q - 1), "scaled_dot_product_attention", "sdpa"),
        "fft-filter": (Fn(_spectral_filter), (x,), "fft_rfft", "fft"),
        "fft2": (Fn(_fft_filter_2d), (x,), "fft_rfft2", "fft"),
        "istft": (Fn(_istft_roundtrip), (torch.randn(2, 512, generator=gen),), "istft", "fft"),
        "complex-einsum": (Fn(_complex_mixing), (x,), "view_as_complex", "complex"),
        "scatter-add": (Fn(lambda t: torch.zeros(2, 5, 16).scatter_add(1, (t.abs() * 3).long() % 5, t)), (x,),
                        "scatter_add", "scatter"),
        "scatter-reduce": (Fn(lambda t: torch.zeros(2, 5, 16).scatter_reduce(1, (t.abs() * 3).long() % 5, t, "amax",
                                                                              include_self=False)), (x,),
                           "scatter_reduce", "scatter"),
        "index-add": (Fn(_index_add), (rows,), "index_add", "scatter"),
        "index-put": (Fn(_index_put), (rows,), "index_put", "scatter"),
        "index-copy": (Fn(lambda t: torch.zeros(7, 16).index_copy(0, torch.tensor([6, 0, 2, 3, 5]), t)), (rows,),
                       "index_copy", "scatter"),
        "gru": (_Recurrent(nn.GRU(16, 12, batch_first=True)), (x,), "gru", "recurrent"),
        "lstm": (_Recurrent(nn.LSTM(16, 12, num_layers=2, bidirectional=True, batch_first=True)), (x,), "lstm",
                 "recurrent"),
        "rnn": (_Recurrent(nn.RNN(16, 12, batch_first=True)), (x,), "rnn_tanh", "recurrent"),
        "lstm-cell": (_Recurrent(nn.LSTMCell(16, 12)), (rows,), "lstm_cell", "recurrent"),
        "cdist": (Fn(lambda a, b: torch.cdist(a, b)), points, "cdist", "distance"),
        "pdist": (Fn(lambda a: F.pdist(a)), (rows,), "pdist", "distance"),
        "pairwise-distance": (Fn(lambda a, b: F.pairwise_distance(a, b)), (rows, rows.flip(0)), "pairwise_distance",
                              "distance"),
        "triu": (Fn(lambda t: torch.triu(t, diagonal=1) + t.tril(-2)), (x,), "triu", "triangular"),
        "inv": (Fn(lambda a: torch.linalg.inv(a @ a.transpose(-1, -2) + torch.eye(4))), (torch.randn(3, 4, 4, generator=gen),),
                "linalg_inv", "linalg"),
    }


SPECTRAL_FILTER = _spectral_filter
