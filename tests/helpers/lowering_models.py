"""Small models that reproduce the refusals the lowering answers are for (docs/lowering.md), none named by a rewrite.

Each stands for a class of refusal met on public architectures: a flow-field warp (grid_sample: coremltools has no
conversion, PyTorch decomposes it), a per-sample loop (torch.export specialises the dynamic batch, as YOLO11n's
head does), a Conv1d+GRU activity model (onnx2tf's loop leaves TensorList ops TFLite refuses), an audio frontend
with GroupNorm (coremltools fails on its symbolic batch, as on wav2vec2), a point-cloud model (cdist), a
hand-normalised output layer (a linear layer whose weight is computed), a chunked local attention whose chunk
count is read from the attention mask (torch.export stops on the data-dependent value, as on long-document
encoders and audio codecs' padding arithmetic). The e2e
tests copy this file into their project and name its factories.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Warp(nn.Module):
    """Optical-flow style warp: a conv predicts a flow field, grid_sample resamples the image with it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.flow = nn.Conv2d(3, 2, 3, padding=1)
        self.head = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, _, h, w = image.shape
        base = torch.stack(torch.meshgrid(torch.linspace(-1.0, 1.0, w), torch.linspace(-1.0, 1.0, h), indexing="xy"),
                           dim=-1).unsqueeze(0)
        grid = base + 0.1 * torch.tanh(self.flow(image)).permute(0, 2, 3, 1)
        warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self.head(warped).mean(dim=(2, 3))


class PerSample(nn.Module):
    """Scores each sample of the batch in a Python loop: torch.export specialises the batch axis to the example's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.body(x[i]) for i in range(x.shape[0])])


class GruHar(nn.Module):
    """Activity recognition on [batch, 9, T] sensor windows: Conv1d features, a GRU over time, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(9, 16, 5, padding=2)
        self.gru = nn.GRU(16, 24, batch_first=True)
        self.head = nn.Linear(24, 6)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(torch.relu(self.conv(window)).transpose(1, 2))
        return self.head(out[:, -1])


class AudioFrontend(nn.Module):
    """A wav2vec2-style feature extractor: strided Conv1d, GroupNorm over time, GELU, pooled into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 8, 10, stride=5)
        self.norm = nn.GroupNorm(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.norm(self.conv(audio.unsqueeze(1)))).mean(dim=-1))


class PooledGrid(nn.Module):
    """A localisation net's head: a convolution, adaptive average pooling to a 4 × 4 grid, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(64, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(image))).flatten(1))


class PointCloud(nn.Module):
    """Points → features, pairwise distances (cdist) → a soft neighbourhood average → class scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(-torch.cdist(points, points), dim=-1)
        return self.head((weights @ self.embed(points)).mean(dim=1))


class NormedHead(nn.Module):
    """A token MLP whose output layer is weight-normalised by hand (direction / its norm × a gain): two linear layers
    with a parameter weight, one whose weight the model computes at run time."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(32, 128)
        self.mid = nn.Linear(128, 128)
        self.direction = nn.Parameter(torch.randn(8, 128))
        self.gain = nn.Parameter(torch.rand(8, 1) + 0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.mid(F.relu(self.up(tokens))))
        weight = self.gain * self.direction / self.direction.norm(dim=1, keepdim=True)
        return F.linear(hidden, weight)


class MaskedMixer(nn.Module):
    """Tokens mixed by attention that masks each token from itself (`torch.eye`, as XLNet's attention mask), then a
    linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = tokens @ tokens.transpose(1, 2) - 1e4 * torch.eye(tokens.shape[1])
        return self.head((torch.softmax(scores, dim=-1) @ tokens).mean(dim=1))


class ChunkedAttention(nn.Module):
    """Local attention over fixed windows of a token sequence, as long-document encoders chunk it: how many windows
    to attend is computed from the attention mask (its longest row, rounded up to whole windows) and read back as a
    Python int, so the loop over windows depends on the data. The masks given are all ones (full windows)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.window = 4
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 3)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        longest = int(mask.sum(dim=-1).max())
        chunks = -(-longest // self.window)
        q, k, v = self.qkv(features).chunk(3, dim=-1)
        parts = []
        for i in range(chunks):
            window = slice(i * self.window, (i + 1) * self.window)
            scores = q[:, window] @ k[:, window].transpose(1, 2) / 8 ** 0.5
            parts.append(scores.softmax(dim=-1) @ v[:, window])
        return self.out(torch.cat(parts, dim=1)).mean(dim=1)


def warp() -> nn.Module:
    return Warp().eval()


def per_sample() -> nn.Module:
    return PerSample().eval()


def gru_har() -> nn.Module:
    return GruHar().eval()


def audio_frontend() -> nn.Module:
    return AudioFrontend().eval()


def pooled_grid() -> nn.Module:
    return PooledGrid().eval()


def point_cloud() -> nn.Module:
    return PointCloud().eval()


def normed_head() -> nn.Module:
    return NormedHead().eval()


def masked_mixer() -> nn.Module:
    return MaskedMixer().eval()


def chunked_attention() -> nn.Module:
    return ChunkedAttention().eval()
