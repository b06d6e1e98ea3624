"""Rewrites on models they were not written against: other STFT settings and other uses of diff and roll,
exported by the legacy ONNX exporter (which refuses the originals) and run in ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from buildsys import rewrites

ort = pytest.importorskip("onnxruntime")


class HammingPowerFrontend(torch.nn.Module):
    """A log-power spectrogram unlike the tests' spotter: Hamming window, center=False, normalized,
    n_fft 400 / hop 160, |X|² through .abs(), then a conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hamming_window(400))
        self.head = torch.nn.Conv1d(201, 8, 3)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wav, n_fft=400, hop_length=160, win_length=400, window=self.window, center=False,
                          normalized=True, onesided=True, return_complex=True)
        return self.head(torch.log(spec.abs() ** 2 + 1e-6))


class ShiftAndDifference(torch.nn.Module):
    """roll over two dims at once, diff with a prepend."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, shifts=(3, -2), dims=(1, 2)) + torch.diff(x, dim=-1, prepend=x[..., :1])


def _onnx(module: torch.nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17)
    return buf.getvalue()


@pytest.mark.parametrize(("model", "shape", "names", "refusal"), [
    (HammingPowerFrontend, (2, 16000), ["stft", "complex"], "STFT does not currently support complex types"),
    (ShiftAndDifference, (2, 5, 7), ["roll", "diff"], "aten::diff"),
])
def test_a_rewritten_model_the_rewrite_was_not_written_for_exports_and_matches(
        model: type[torch.nn.Module], shape: tuple[int, ...], names: list[str], refusal: str) -> None:
    torch.manual_seed(0)
    module, x = model().eval(), torch.randn(*shape)
    with pytest.raises(Exception, match=refusal):
        _onnx(module, x)  # what the rewrite is for
    want = module(x).detach().numpy()
    session = ort.InferenceSession(_onnx(rewrites.apply(module, names), x))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max()) + 1e-6
