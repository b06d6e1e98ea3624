"""buildsys.formats.onnx.weights.unsigned_weights: full-range symmetric int8 QDQ weights re-stored as uint8 at zero
point 128 compute the same numbers as the fake-quant graph in ONNX Runtime's fused integer kernels; 7-bit weights
(reduce_range) and weights with a zero point are left as they are."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _qdq_conv(weights: np.ndarray, weight_zero: int = 0) -> Any:
    """x (uint8 QDQ) → Conv(DequantizeLinear(int8 weights, per-channel scales)) → y (uint8 QDQ), like a QAT export."""
    from onnx import TensorProto, helper, numpy_helper

    channels = weights.shape[0]
    inits = [numpy_helper.from_array(weights.astype(np.int8), "w"),
             numpy_helper.from_array(np.full(channels, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.full(channels, weight_zero, np.int8), "w_zero"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
             numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "y_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wf"], axis=0),
             helper.make_node("Conv", ["xf", "wf"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["conv", "y_scale", "y_zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: Any, x: np.ndarray, optimized: bool) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimized:  # QDQ run as written: float ops between exact quantize/dequantize (the fake-quant numbers)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_full_range_weights_become_uint8_with_the_same_values_in_fused_kernels() -> None:
    from onnx import TensorProto

    from buildsys.formats.onnx.weights import unsigned_weights

    rng = np.random.default_rng(0)
    weights = rng.choice([-127, -120, 120, 127], size=(8, 16, 3, 3))  # large products: where 16-bit sums saturate
    x = rng.uniform(0.8, 1.0, (2, 16, 6, 6)).astype(np.float32)
    model = _qdq_conv(weights)
    want = _run(model, x, optimized=False)
    assert unsigned_weights(model) == 1
    stored = {t.name: t for t in model.graph.initializer}
    assert stored["w"].data_type == TensorProto.UINT8 and "w_zero" not in stored  # its int8 zero point is gone
    onnx.checker.check_model(model, full_check=True)
    assert np.array_equal(_run(model, x, optimized=False), want)  # the same dequantized values
    np.testing.assert_allclose(_run(model, x, optimized=True), want, atol=0.05 + 1e-6)  # at most one output step


@pytest.mark.parametrize("weights, zero", [(np.full((8, 16, 3, 3), 64), 0), (np.full((8, 16, 3, 3), 100), 3)],
                         ids=["seven-bit", "asymmetric"])
def test_seven_bit_and_asymmetric_weights_are_left_as_they_are(weights: np.ndarray, zero: int) -> None:
    from buildsys.formats.onnx.weights import unsigned_weights

    model = _qdq_conv(weights, zero)
    before = model.SerializeToString()
    assert unsigned_weights(model) == 0
    assert model.SerializeToString() == before
