"""Resemblyzer's speaker encoder (GE2E, 3-layer LSTM) from the weights the `Resemblyzer` wheel ships.

`resemblyzer/pretrained.pt` is a training checkpoint whose `model_state` is the state dict of
`resemblyzer.VoiceEncoder`: LSTM(40 → 256, 3 layers, batch_first) → Linear(256, 256) → ReLU →
L2 normalization of the last layer's final hidden state. The package is installed with
--no-deps and never imported (its __init__ pulls librosa/webrtcvad for audio I/O); only the file
is read. similarity_weight/bias are GE2E training-loss scalars, unused at inference.

Input: mels float32 [B, 160, 40] (160 frames of 10 ms, 40 mel bands, linear power — what
resemblyzer.audio.wav_to_mel_spectrogram returns). Output: embedding float32 [B, 256].
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import nn


def weights_path() -> str:
    pkg = importlib.util.find_spec("resemblyzer").submodule_search_locations[0]
    return os.path.join(pkg, "pretrained.pt")


class VoiceEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 256, num_layers=3, batch_first=True)
        self.linear = nn.Linear(256, 256)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embeds = torch.relu(self.linear(hidden[-1]))
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


def build() -> VoiceEncoder:
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)["model_state"]
    state = {k: v for k, v in state.items() if not k.startswith("similarity_")}
    model = VoiceEncoder()
    model.load_state_dict(state, strict=True)
    return model.eval()
