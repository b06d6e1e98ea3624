"""buildsys.formats.coreml.uniform_constants: coremltools' TorchScript frontend writes a GRU as a while loop whose
output buffer starts as a folded constant of zeros; the pipeline every Core ML conversion runs (coreml/passes.py)
computes it with a `fill` instead of storing it, and the program computes the same outputs (MIL reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.coreml


class _Gru(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gru = torch.nn.GRU(6, 24, batch_first=True)
        self.head = torch.nn.Linear(24, 3)

    def forward(self, x0: "torch.Tensor") -> "torch.Tensor":
        out, _ = self.gru(x0)
        return self.head(out[:, -1])


def _package(path: Path, pipeline: object) -> Path:
    example = torch.zeros(1, 40, 6)
    mlmodel = ct.convert(torch.jit.trace(_Gru().eval(), example), convert_to="mlprogram",
                         inputs=[ct.TensorType(name="x0", shape=(1, 40, 6), dtype=np.float32)], skip_model_load=True,
                         compute_precision=ct.precision.FLOAT16, minimum_deployment_target=ct.target.iOS16,
                         pass_pipeline=pipeline)
    mlmodel.save(str(path))
    return path


def test_a_gru_loops_zero_buffer_is_filled_not_stored(tmp_path: Path) -> None:
    from buildsys.formats.coreml.mil import MilProgram
    from buildsys.formats.coreml.passes import pipeline

    stored = _package(tmp_path / "stored.mlpackage", ct.PassPipeline())
    filled = _package(tmp_path / "filled.mlpackage", pipeline(recurrent_weights_fp16=False))
    ops = {p: [op.op_type for op in MilProgram.load(p).operations()] for p in (stored, filled)}
    assert "fill" not in ops[stored] and ops[filled].count("fill") == 1

    def weight_file(package: Path) -> int:
        return (package / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size

    # the buffer: [41, 1, 24] zeros in float16, 1,968 bytes (and its 64-byte alignment)
    assert weight_file(stored) - weight_file(filled) >= 41 * 24 * 2
    feeds = {"x0": np.random.default_rng(0).standard_normal((1, 40, 6)).astype(np.float32)}
    want, got = (MilProgram.load(p).evaluate(feeds).outputs for p in (stored, filled))
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
