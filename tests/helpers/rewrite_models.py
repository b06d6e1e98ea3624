"""Two hard models of issue 21 for the op rewrites: a keyword spotter (torch.stft log-mel frontend +
conv + linear) and a recommender (nn.EmbeddingBag with offsets + dense features + MLP).

Both are what a user writes, not what a converter wants: the spotter takes the complex STFT's
magnitude, the recommender feeds ragged bags through offsets. Seeded, so every test sees the same weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SAMPLE_RATE = 8000
SAMPLES = 4000  # half a second of audio


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """A triangular HTK mel filterbank [n_fft // 2 + 1, n_mels] (what torchaudio's MelScale computes)."""
    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    points = hz(torch.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2))
    low, mid, high = points[:-2], points[1:-1], points[2:]
    up = (freqs[:, None] - low[None, :]) / (mid - low)[None, :]
    down = (high[None, :] - freqs[:, None]) / (high - mid)[None, :]
    return torch.clamp(torch.minimum(up, down), min=0.0)


class KeywordSpotter(nn.Module):
    """Waveform [B, SAMPLES] → torch.stft (hann, centered, reflect) → power → log-mel → 2 convs → 12 logits."""

    def __init__(self, n_fft: int = 256, hop: int = 128, n_mels: int = 32, classes: int = 12) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        self.register_buffer("mel", mel_filterbank(n_fft, n_mels, SAMPLE_RATE))
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, hop_length=self.hop, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        power = spec.abs().pow(2)                                   # [B, F, T]
        logmel = torch.log(torch.matmul(power.transpose(1, 2), self.mel) + 1e-6)  # [B, T, M]
        h = torch.relu(self.conv1(logmel.unsqueeze(1)))
        h = torch.relu(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


class Recommender(nn.Module):
    """Sparse ids through nn.EmbeddingBag (offsets: one bag per sample) beside dense features, then an MLP."""

    def __init__(self, items: int = 500, dim: int = 16, dense: int = 8, mode: str = "sum") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bag = nn.EmbeddingBag(items, dim, mode=mode)
        self.dense = nn.Linear(dense, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        pooled = self.bag(ids, offsets)
        return torch.sigmoid(self.mlp(torch.cat([pooled, torch.relu(self.dense(features))], dim=1)))


def spotter_inputs(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, SAMPLES, generator=gen) * 0.1,)


def recommender_inputs(batch: int = 4, items: int = 500, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bags of 1..5 ids each (ragged), their offsets, and dense features."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (batch,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    ids = torch.randint(0, items, (int(lengths.sum()),), generator=gen)
    return ids, offsets, torch.randn(batch, 8, generator=gen)
