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


#: The weight input of each op ONNX Runtime fuses with its DequantizeLinear into an integer kernel (QLinearConv,
#: QGemm, QLinearMatMul): the weights whose int8 × uint8 products can saturate (see `unsigned_weights`).
INTEGER_KERNEL_WEIGHTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
#: Largest |int8 weight| ONNX Runtime's reduce_range writes (7-bit weights, [-64, 64]): its pairwise products with
#: uint8 activations fit a 16-bit sum; learned 8-bit weights do not.
SEVEN_BITS = 64


def unsigned_weights(model: "onnx.ModelProto") -> int:
    """Store `model`'s symmetric int8 QDQ weights (zero point 0, values past 7 bits) as uint8 at zero point 128:
    the same dequantized values, which ONNX Runtime then runs in its uint8 × uint8 kernels. Its x86 kernels for
    uint8 activations × int8 weights add pairs of products in 16 bits (`vpmaddubsw`), which saturate on CPUs
    without VNNI (AVX2-only): a quantization-aware trained digits CNN, whose learned weights use all of
    [-127, 127], agreed with its own fake-quant outputs on 94.5 % of top-1 classes there and on 100 % once stored
    unsigned (mean |error| 0.155 → 0.00003), in the same QLinearConv / QGemm kernels. Post-training int8 avoids
    the saturation with 7-bit weights instead (OnnxInt8FromOnnx's reduce_range), which learned weights cannot
    be re-rounded to. Returns how many weights were rewritten; `model` is changed in place."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewritten: list[str] = []
    replaced: set[str] = set()  # the int8 zero points of the rewritten weights
    for name, tensor in list(inits.items()):
        users = consumers.get(name, [])
        if tensor.data_type != TensorProto.INT8 or not users or any(
                u.op_type != "DequantizeLinear" or u.input[0] != name or len(u.input) < 3 or u.input[2] not in inits
                for u in users):
            continue
        zeros = [numpy_helper.to_array(inits[u.input[2]]) for u in users]
        feeds_kernel = any(consumer.op_type in INTEGER_KERNEL_WEIGHTS and list(consumer.input).index(u.output[0]) ==
                           INTEGER_KERNEL_WEIGHTS[consumer.op_type]
                           for u in users for consumer in consumers.get(u.output[0], []))
        values = numpy_helper.to_array(tensor)
        if not feeds_kernel or any(z.any() for z in zeros) or np.abs(values.astype(np.int16)).max() <= SEVEN_BITS:
            continue
        tensor.CopyFrom(numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8), name))
        for user, zero in zip(users, zeros):
            replaced.add(user.input[2])
            unsigned = f"{user.input[2]}_uint8"  # a zero point may be shared with activations: a new one
            if unsigned not in inits:
                inits[unsigned] = numpy_helper.from_array(np.full(zero.shape, 128, np.uint8), unsigned)
                graph.initializer.append(inits[unsigned])
            user.input[2] = unsigned
        rewritten.append(name)
    stale = [info for info in graph.value_info if info.name in rewritten]  # their element type was int8
    for info in stale:
        graph.value_info.remove(info)
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for unused in [t for t in graph.initializer if t.name in replaced and t.name not in used]:
        graph.initializer.remove(unused)  # an int8 zero point no node reads any more
    return len(rewritten)
