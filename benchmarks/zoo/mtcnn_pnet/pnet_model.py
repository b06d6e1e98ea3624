"""MTCNN's proposal network (PNet) from the weights facenet-pytorch 2.6.0 ships (data/pnet.pt).

PNet is the fully convolutional first stage of MTCNN face detection: every 12x12 window of the
(rescaled) image gets a face probability and a bounding-box regression, so the outputs are dense
maps — a detection head. Same attribute names as facenet_pytorch.models.mtcnn.PNet, so the state
dict loads with strict=True; facenet-pytorch itself is not imported (its package imports
torchvision). See tests/models/mtcnn.py in the project for RNet/ONet.

Input: image float32 [B, 3, 120, 160] RGB, normalized (pixel - 127.5) / 128.
Outputs: box [B, 4, 55, 75] regression offsets, prob [B, 2, 55, 75] softmax over (not face, face).
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import nn


def weights_path() -> str:
    pkg = importlib.util.find_spec("facenet_pytorch").submodule_search_locations[0]
    return os.path.join(pkg, "data", "pnet.pt")


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        prob = self.softmax4_1(self.conv4_1(x))
        box = self.conv4_2(x)
        return box, prob


def build() -> PNet:
    model = PNet()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True), strict=True)
    return model.eval()
