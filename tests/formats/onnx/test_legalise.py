"""Types the exporters write that ONNX's schemas forbid are cast legal (buildsys/formats/onnx/legalise.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from buildsys.formats.onnx.legalise import legalise, legalise_model


class CountsUnmasked(torch.nn.Module):
    """A running count of a bool mask, as transformers' mask utilities write it: torch promotes to int64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (~(x > 0)).cumsum(-1) * x + (x > 1).sum(-1, keepdim=True)


@pytest.mark.parametrize("shape", [(2, 5), (3, 4, 7)])
def test_legacy_export_of_a_bool_cumsum_loads_and_matches_torch(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "model.onnx"
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(CountsUnmasked(), (x,), str(path), dynamo=False, opset_version=18, input_names=["x"])
    with pytest.raises(Exception, match="CumSum"):  # as exported, ONNX Runtime refuses the file
        ort.InferenceSession(str(path))
    assert legalise(path) == {"CumSum": 1}
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, CountsUnmasked()(x).numpy(), rtol=1e-6)
    assert legalise(path) == {}  # a legal file is left as it is


@pytest.mark.parametrize("dtype,np_dtype", [(TensorProto.INT8, np.int8), (TensorProto.UINT8, np.uint8),
                                            (TensorProto.INT16, np.int16)])
def test_a_narrow_int_is_widened_and_cast_back(dtype: int, np_dtype: type) -> None:
    # CumSum's T has no 8- or 16-bit ints: computed in int32 and returned in the graph's own dtype.
    graph = helper.make_graph(
        [helper.make_node("CumSum", ["x", "axis"], ["y"])], "g",
        [helper.make_tensor_value_info("x", dtype, [2, 3])], [helper.make_tensor_value_info("y", dtype, [2, 3])],
        [helper.make_tensor("axis", TensorProto.INT64, [], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    assert legalise_model(model) == {"CumSum": 1}
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Cast", "CumSum", "Cast"]
    x = np.arange(6, dtype=np_dtype).reshape(2, 3)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert got.dtype == np_dtype and (got == np.cumsum(x, 1).astype(np_dtype)).all()


def test_legal_and_foreign_ops_are_untouched() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gelu", ["r"], ["y"], domain="com.microsoft")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    before = model.SerializeToString()
    assert legalise_model(model) == {} and model.SerializeToString() == before
