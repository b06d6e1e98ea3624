"""Digits CNN: image [batch, 1, 8, 8] in [0, 1] -> logits [batch, 10]."""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
INPUT_SHAPE = (1, 8, 8)  # per sample; the batch axis is dynamic
NUM_CLASSES = 10
PIXEL_MAX = 16.0  # load_digits stores 0..16 intensities; the model expects pixel / PIXEL_MAX


class DigitsCNN(nn.Module):
    """Three 3x3 conv blocks and one linear layer, about 15k parameters.

    Only Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten and Linear are used, because those ops
    convert cleanly to TorchScript, ONNX, TFLite and Core ML, with fp16 and int8 variants.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, num_classes),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def build() -> nn.Module:
    """An untrained DigitsCNN; the build system loads weights.pt into it."""
    return DigitsCNN()
