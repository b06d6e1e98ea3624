"""MTCNN's RNet and ONet (Zhang et al. 2016) as facenet-pytorch 2.6.0 defines them, without facenet-pytorch.

Written from `facenet_pytorch/models/mtcnn.py` so that its state dicts (`data/rnet.pt`, `data/onet.pt`,
plain `state_dict`s) load with `strict=True`: same attribute names, shapes and layer order. Two
details matter for equivalence with the pretrained weights, which were ported from Caffe:

* every max-pool uses `ceil_mode=True` (Caffe rounds pooled sizes up: 46 → 23, 21 → 10, 8 → 4);
* the conv features are permuted to (N, W, H, C) before flattening (Caffe's weight order for the
  first dense layer), not flattened as (N, C, H, W).

The factories return untrained modules (no `pretrained=` download or file access); modelbuild loads
the weights named by `source.weights`. Inputs are crops normalized the way MTCNN does:
`(pixel - 127.5) * 0.0078125`, RGB, NCHW. Outputs keep facenet-pytorch's return order:

* ONet  [N, 3, 48, 48] → (box [N, 4], landmarks [N, 10], prob [N, 2])
* RNet  [N, 3, 24, 24] → (box [N, 4], prob [N, 2])

`prob` is a softmax over (not face, face); `box` holds bounding-box regression offsets and
`landmarks` the five (x…, y…) landmark positions relative to the crop.
"""

from __future__ import annotations

import torch
from torch import nn

ONET_INPUT = (3, 48, 48)
RNET_INPUT = (3, 24, 24)
ONET_OUTPUTS = ("box", "landmarks", "prob")
RNET_OUTPUTS = ("box", "prob")


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """0..255 RGB pixels → the network's input scale (what facenet-pytorch's detect_face does)."""
    return (pixels - 127.5) * 0.0078125


class RNet(nn.Module):
    """MTCNN refinement network: 24x24 crops → (box regression, face probability)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)  # 64 channels x 3 x 3
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # Caffe's flatten order: (N, W, H, C)
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        prob = self.softmax5_1(self.dense5_1(x))
        box = self.dense5_2(x)
        return box, prob


class ONet(nn.Module):
    """MTCNN output network: 48x48 crops → (box regression, 5 landmarks, face probability)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)  # 128 channels x 3 x 3
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))  # 46 → 23
        x = self.pool2(self.prelu2(self.conv2(x)))  # 21 → 10
        x = self.pool3(self.prelu3(self.conv3(x)))  # 8 → 4
        x = self.prelu4(self.conv4(x))  # 3
        x = x.permute(0, 3, 2, 1).contiguous()  # Caffe's flatten order: (N, W, H, C)
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        prob = self.softmax6_1(self.dense6_1(x))
        box = self.dense6_2(x)
        landmarks = self.dense6_3(x)
        return box, landmarks, prob


def build() -> ONet:
    """An untrained ONet; modelbuild loads onet.pt (facenet-pytorch's state dict) into it."""
    return ONet()


def build_rnet() -> RNet:
    """An untrained RNet; load rnet.pt into it."""
    return RNet()
