"""buildsys.formats.onnx.shape_constants: at a static shape, the TorchScript exporter's shape arithmetic (an LSTM's
zero initial state expanded to the batch read off the input) is folded to initializers, with the same outputs in
ONNX Runtime; at a dynamic batch the graph comes out unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


class _Sensor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(9, 16, 5, padding=2)
        self.lstm = torch.nn.LSTM(16, 24, batch_first=True)

    def forward(self, window: "torch.Tensor") -> "torch.Tensor":
        out, _ = self.lstm(torch.relu(self.conv(window.transpose(1, 2))).transpose(1, 2))
        return out[:, -1]


def _export(path: Path, dynamic: bool) -> "onnx.ModelProto":
    torch.manual_seed(0)
    torch.onnx.export(_Sensor().eval(), (torch.zeros(1, 12, 9),), str(path), input_names=["window"],
                      output_names=["state"], dynamo=False, opset_version=17,
                      dynamic_axes={"window": {0: "batch"}} if dynamic else None)
    return onnx.load(str(path))


def _run(model: "onnx.ModelProto", x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"window": x})[0]


def test_a_static_batch_folds_the_initial_state_to_constants(tmp_path: Path) -> None:
    from buildsys.formats.onnx.shape_constants import fold_static_shapes

    model = _export(tmp_path / "static.onnx", dynamic=False)
    assert "Expand" in {n.op_type for n in model.graph.node}  # the zero state, expanded to the batch
    x = np.random.default_rng(0).standard_normal((1, 12, 9)).astype(np.float32)
    want = _run(model, x)
    assert fold_static_shapes(model) > 0
    assert not {n.op_type for n in model.graph.node} & {"Shape", "Expand", "Concat", "Unsqueeze"}
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    initial = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert not initial[lstm.input[5]].any() and initial[lstm.input[5]].shape == (1, 1, 24)  # zeros, an initializer
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_array_equal(_run(model, x), want)


def test_a_dynamic_batch_is_left_as_it_is(tmp_path: Path) -> None:
    from buildsys.formats.onnx.shape_constants import fold_static_shapes

    model = _export(tmp_path / "dynamic.onnx", dynamic=True)
    before = model.SerializeToString()
    assert fold_static_shapes(model) == 0
    assert model.SerializeToString() == before
