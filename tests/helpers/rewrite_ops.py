"""One tiny module per rewrite, each calling the op its rewrite removes (with a shape every converter can take).

tests/test_rewrites_graphs.py traces and exports them before and after their rewrite;
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


#: rewrite → (module, example inputs, the ATen op it removes as torch.export names it)
def cases() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], str]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, generator=gen)
    q = torch.randn(1, 2, 6, 8, generator=gen)
    return {
        "stft": (Fn(_magnitude_stft), (torch.randn(2, 512, generator=gen),), "stft"),
        "complex": (Fn(_rope), (x,), "view_as_complex"),
        "embedding-bag": (Fn(_bag), (torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([0, 2, 5])), "embedding_bag"),
        "diff": (Fn(lambda t: torch.diff(t, dim=-1)), (x,), "diff"),
        "roll": (Fn(lambda t: torch.roll(t, shifts=(2, -3), dims=(1, 2))), (x,), "roll"),
        "unfold": (Fn(lambda t: t.unfold(-1, 4, 2).sum(-1)), (x,), "unfold"),
        "fold": (Fn(lambda t: F.fold(t, (6, 6), kernel_size=3)), (torch.randn(1, 18, 16, generator=gen),), "col2im"),
        "sdpa": (Fn(_attention), (q, q + 1, q - 1), "scaled_dot_product_attention"),
    }


SPECTRAL_FILTER = _spectral_filter
