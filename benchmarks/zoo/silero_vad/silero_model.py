"""Silero VAD v6 (16 kHz) as a stateless PyTorch module, from the weights `silero-vad` ships.

The wheel carries `silero_vad/data/silero_vad.jit` (TorchScript, the model `load_silero_vad()`
returns) and `silero_vad_16k.safetensors`, whose weights are NOT those of the .jit/.onnx builds
(probabilities differ by up to 0.5). The weights are therefore taken from the TorchScript file's
16 kHz submodule (`_model`, 15 tensors, renamed 1:1); the layers follow the package's reference
port (`silero_vad/tinygrad_model.py`) so that they load with strict=True, and the result matches
the TorchScript model chunk for chunk in streaming use.
The recurrent state is explicit, which makes it a model with several inputs and outputs:

  audio [B, 576] (64 samples of context + a 512-sample chunk), h [B, 128], c [B, 128]
    → (prob [B, 1] speech probability, h_next [B, 128], c_next [B, 128])

Run chunk by chunk, feeding h_next/c_next back; the first chunk starts from zeros.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import nn

CHUNK = 512
CONTEXT = 64


# TorchScript name (16 kHz submodule) -> this module's name
RENAME = {
    "_model.stft.forward_basis_buffer": "stft_conv.weight",
    **{f"_model.encoder.{i}.reparam_conv.{p}": f"conv{i + 1}.{p}" for i in range(4) for p in ("weight", "bias")},
    **{f"_model.decoder.rnn.{p}": f"lstm_cell.{p}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    "_model.decoder.decoder.2.weight": "final_conv.weight",
    "_model.decoder.decoder.2.bias": "final_conv.bias",
}


def weights_path() -> str:
    # find_spec does not execute silero_vad/__init__ (which imports torchaudio helpers).
    pkg = importlib.util.find_spec("silero_vad").submodule_search_locations[0]
    return os.path.join(pkg, "data", "silero_vad.jit")


class SileroVAD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cutoff = 129  # n_fft // 2 + 1
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)  # real+imag STFT
        self.conv1 = nn.Conv1d(129, 128, 3, stride=1, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, stride=1, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, audio: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = nn.functional.pad(audio.unsqueeze(1), (0, 64), mode="reflect")
        x = self.stft_conv(x)
        x = torch.sqrt(x[:, : self.cutoff, :] ** 2 + x[:, self.cutoff :, :] ** 2)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x)).squeeze(-1)
        h_next, c_next = self.lstm_cell(x, (h, c))
        prob = torch.sigmoid(self.final_conv(torch.relu(h_next).unsqueeze(-1))).squeeze(1)
        return prob, h_next, c_next


def build() -> SileroVAD:
    scripted = torch.jit.load(weights_path(), map_location="cpu")
    state = {new: scripted.state_dict()[old].detach().clone() for old, new in RENAME.items()}
    model = SileroVAD()
    model.load_state_dict(state, strict=True)
    return model.eval()
