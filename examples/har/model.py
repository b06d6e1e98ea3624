"""HAR temporal conv net: window [batch, 9, 90] (channels first) -> logits [batch, 4]."""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAME = "window"
OUTPUT_NAME = "logits"
INPUT_SHAPE = (9, 90)  # per sample (channels, time steps); the batch axis is dynamic
NUM_CLASSES = 4


class HarNet(nn.Module):
    """Three Conv1d blocks, a mean over time and one linear layer, about 20k parameters.

    Convolutions instead of an LSTM/GRU because recurrent layers convert poorly to TFLite and
    Core ML; the mean over time makes the prediction insensitive to where in the window a step falls.
    """

    def __init__(self, channels: int = 9, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, 32, kernel_size=5, padding=2),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.MaxPool1d(2),  # 90 -> 45
            nn.Conv1d(32, 48, kernel_size=5, padding=2),
            nn.BatchNorm1d(48),
            nn.ReLU(),
            nn.MaxPool1d(2),  # 45 -> 22
            nn.Conv1d(48, 64, kernel_size=3, padding=1),
            nn.BatchNorm1d(64),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(window).mean(dim=2))


def build() -> nn.Module:
    """An untrained HarNet; the build system loads weights.pt into it."""
    return HarNet()
