"""The weight layers of an ONNX model and the element type each is stored in (buildsys.formats.quantized_weights).

A weight layer is an op that reads a constant as its weight: MatMul / Gemm (either operand, the other being
computed), Conv / ConvTranspose (input 1), Gather (input 0: an embedding table), and their quantized forms:
MatMulInteger / ConvInteger (input 1), QLinearMatMul / QLinearConv (input 3), MatMulNBits (input 1, `bits`),
GatherBlockQuantized (input 0, `bits`), LSTM / GRU / RNN (inputs 1 and 2: W and R). The constant is found by walking back from the op's input through
ops that only move, reshape or widen it (DequantizeLinear, Transpose, Reshape, Cast, …) to an initializer
or a Constant node; its stored element type is the layer's precision (int8 behind a DequantizeLinear is an
int8 weight; a float initializer is a float weight). Only dtypes and shapes are read: external data is not
loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from buildsys.formats.quantized_weights import SCALE_WIDTH, WeightTensor, record

if TYPE_CHECKING:
    import onnx

#: op type → (kind, the inputs that may hold its weight)
WEIGHT_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "MatMul": ("linear", (1, 0)), "Gemm": ("linear", (1, 0)), "MatMulInteger": ("linear", (1,)),
    "QLinearMatMul": ("linear", (3,)), "MatMulNBits": ("linear", (1,)), "DynamicQuantizeMatMul": ("linear", (1,)),
    "FusedMatMul": ("linear", (1, 0)),
    "Conv": ("conv", (1,)), "ConvTranspose": ("conv", (1,)), "ConvInteger": ("conv", (1,)),
    "QLinearConv": ("conv", (3,)), "FusedConv": ("conv", (1,)),
    "Gather": ("embedding", (0,)), "GatherBlockQuantized": ("embedding", (0,)),
    "LSTM": ("linear", (1, 2)), "GRU": ("linear", (1, 2)), "RNN": ("linear", (1, 2)),
    "DynamicQuantizeLSTM": ("linear", (1, 2)),
}
#: Recurrent ops read two weights (input-to-gates W and recurrent R), each counted as a linear weight (as
#: ExecuTorch's inspector counts aten.lstm's): every candidate input is read, not the first constant found.
EVERY_INPUT = ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM")
#: Ops a weight passes through unchanged in meaning on its way to the layer (the first input is followed).
PASS_THROUGH = ("DequantizeLinear", "Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Flatten")
MEASURED_ON = "the ONNX file's initializers (the stored element type of each weight behind its op)"


def _dtype_name(elem_type: int) -> str:
    """ONNX's name of an element type, lower case, floats by width: 'int8', 'uint4', 'float32', 'float16'."""
    import onnx

    name = onnx.TensorProto.DataType.Name(elem_type).lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


def weight_layers(model: "onnx.ModelProto") -> list[WeightTensor]:
    """Every weight layer of `model`'s main graph, in node order (see the module doc)."""
    import math

    graph = model.graph
    constants: dict[str, tuple[int, int]] = {t.name: (t.data_type, math.prod(t.dims)) for t in graph.initializer}
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in graph.initializer}
    producers: dict[str, Any] = {}
    for node in graph.node:
        for out in node.output:
            producers[out] = node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            t = node.attribute[0].t
            constants[node.output[0]] = (t.data_type, math.prod(t.dims))
    found: list[WeightTensor] = []
    for node in graph.node:
        kind_inputs = WEIGHT_INPUTS.get(node.op_type)
        if kind_inputs is None:
            continue
        kind, candidates = kind_inputs
        for index in candidates:
            behind = _constant_behind(node.input[index] if index < len(node.input) else "", producers, constants)
            if behind is None:
                continue
            name, quantized_as = behind
            elem_type, elements = constants[name]
            if kind == "embedding" and shapes.get(name, [0])[-1:] == [SCALE_WIDTH]:
                break  # one value per row: the per-row scales of an int8 table (torch/embedding.py)
            dtype = _dtype_name(quantized_as if quantized_as is not None else elem_type)
            bits = next((a.i for a in node.attribute if a.name == "bits"), None)
            if node.op_type in ("MatMulNBits", "GatherBlockQuantized") and bits:  # packed in uint8
                dtype, elements = f"int{bits}", elements * 8 // bits
            if elements > 1:
                shown = node.name if name.startswith("onnx::") and node.name else ""  # the exporter's made-up name
                found.append(WeightTensor(name, kind, int(elements), dtype, (node.name,) if node.name else (), shown))
            if node.op_type not in EVERY_INPUT:
                break
    return found


def _constant_behind(name: str, producers: dict[str, Any],
                     constants: dict[str, tuple[int, int]]) -> tuple[str, int | None] | None:
    """The initializer or Constant output that `name` is, or is a reshaped / dequantized / cast view of, and
    the element type a QuantizeLinear on the way gives it (a float weight quantized when the session loads:
    eager QAT's export), or None."""
    quantized_as = None
    for _ in range(8):  # a weight passes a few such ops at most; an activation never ends at a constant
        if name in constants:
            return name, quantized_as
        node = producers.get(name)
        if node is None or not node.input or node.op_type not in (*PASS_THROUGH, "QuantizeLinear"):
            return None
        if node.op_type == "QuantizeLinear":  # its zero point's type is the stored one (ONNX's default: uint8)
            zero = constants.get(node.input[2]) if len(node.input) > 2 else None
            quantized_as = zero[0] if zero else 2  # TensorProto.UINT8
        name = node.input[0]
    return None


def measure(path: Path, asked: str, kept: Iterable[str] = ()) -> dict[str, Any]:
    """The `quantized_weights` fact of the ONNX file at `path` quantized to `asked`, the layers named in `kept`
    (keep_float: node names) left out of the share."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return record(weight_layers(model), asked, MEASURED_ON, kept)
