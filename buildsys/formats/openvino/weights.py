"""The weight layers of an OpenVINO IR and the element type each is stored in
(buildsys.formats.quantized_weights), read from the element types of the IR's weight constants.

A weight layer is an op that reads a constant as its weight: MatMul (either operand), Convolution,
GroupConvolution and their backprop-data forms (input 1), Gather (input 0: an embedding table). Walking
back from that input through the decompression NNCF and the frontends write (Convert, Subtract of a zero
point, Multiply by a scale, Reshape, Transpose, …) reaches the Constant; its element type is the stored
precision (u4 behind Convert → Subtract → Multiply is an int4 weight). A float Constant behind a
FakeQuantize (weights the CPU plugin quantizes when it loads the model) counts at the FakeQuantize's
levels (256: 8 bits).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from buildsys.formats.quantized_weights import WeightTensor, record

if TYPE_CHECKING:
    import openvino

#: op type → (kind, the inputs that may hold its weight)
WEIGHT_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "MatMul": ("linear", (1, 0)), "Convolution": ("conv", (1,)), "GroupConvolution": ("conv", (1,)),
    "ConvolutionBackpropData": ("conv", (1,)), "GroupConvolutionBackpropData": ("conv", (1,)),
    "Gather": ("embedding", (0,)),
    "LSTMSequence": ("linear", (4, 5)), "GRUSequence": ("linear", (3, 4)), "RNNSequence": ("linear", (3, 4)),
    "LSTMCell": ("linear", (3, 4)), "GRUCell": ("linear", (2, 3)), "RNNCell": ("linear", (2, 3)),
}
#: Recurrent ops read two weights (W and R), each counted as a linear weight: every candidate input is read.
EVERY_INPUT = ("LSTMSequence", "GRUSequence", "RNNSequence", "LSTMCell", "GRUCell", "RNNCell")
#: Ops a weight passes through on its way to its layer (input 0 is followed).
PASS_THROUGH = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "FakeQuantize")
#: OpenVINO's element type names → the labels of buildsys.formats.quantized_weights.
TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8", "u8": "uint8",
         "i4": "int4", "u4": "uint4", "nf4": "nf4", "u2": "uint2", "i2": "int2"}
MEASURED_ON = "the IR's weight constants (each weight's element type behind its decompression)"


def _constant_behind(output: Any) -> tuple[Any, int | None] | None:
    """(the Constant op, bits of a FakeQuantize passed on the way or None) that `output` decompresses."""
    bits = None
    for _ in range(8):
        op = output.get_node()
        kind = op.get_type_name()
        if kind == "Constant":
            return op, bits
        if kind not in PASS_THROUGH:
            return None
        if kind == "FakeQuantize":
            bits = max(1, math.ceil(math.log2(int(op.get_attributes().get("levels", 256)))))
        output = op.input_value(0)
    return None


def weight_layers(model: "openvino.Model") -> list[WeightTensor]:
    """Every weight layer of the IR (see the module doc), in topological order."""
    found: list[WeightTensor] = []
    for op in model.get_ordered_ops():
        spec = WEIGHT_INPUTS.get(op.get_type_name())
        if spec is None:
            continue
        kind, candidates = spec
        for index in candidates:
            if index >= op.get_input_size():
                continue
            behind = _constant_behind(op.input_value(index))
            if behind is None:
                continue
            constant, bits = behind
            elements = math.prod(int(d) for d in constant.get_output_shape(0))
            stored = constant.get_output_element_type(0).get_type_name()
            dtype = TYPES.get(stored, stored)
            if bits is not None and dtype.startswith("float"):
                dtype = f"int{bits}"  # quantized by the plugin at load, run as integers
            if elements > 1:
                name = constant.get_friendly_name()
                if re.fullmatch(r"[A-Z][A-Za-z]*_\d+", name):  # a pass's own name (Transpose_307): say whose weight
                    name = f"{op.get_friendly_name()} weight"
                found.append(WeightTensor(name, kind, elements, dtype, (op.get_friendly_name(),)))
            if op.get_type_name() not in EVERY_INPUT:
                break
    return found


def int4_group_sizes(model: "openvino.Model") -> dict[str, int]:
    """The group sizes of the IR's int4 weights, as layers per size: NNCF stores a grouped weight
    [out, groups, group size] and a per-channel one [out, in] ('per-channel')."""
    sizes: dict[str, int] = {}
    for op in model.get_ordered_ops():
        spec = WEIGHT_INPUTS.get(op.get_type_name())
        for index in spec[1] if spec else ():
            behind = _constant_behind(op.input_value(index)) if index < op.get_input_size() else None
            if behind is None:
                continue
            constant = behind[0]
            if constant.get_output_element_type(0).get_type_name() in ("i4", "u4", "nf4"):
                shape = [int(d) for d in constant.get_output_shape(0)]
                key = str(shape[-1]) if len(shape) == 3 else "per-channel"
                sizes[key] = sizes.get(key, 0) + 1
            break
    return dict(sorted(sizes.items()))


def measure(path: Path, asked: str, kept: Iterable[str] = (), reverted: bool = False) -> dict[str, Any]:
    """The `quantized_weights` fact of the IR at `path` (its .xml) quantized to `asked`, the layers named in
    `kept` (keep_float: op names) left out of the share, and with `reverted` (NNCF's accuracy control ran)
    the float layers it reverted."""
    from buildsys.formats.openvino.ir import telemetry_off

    with telemetry_off():
        import openvino as ov

        model = ov.Core().read_model(str(path))
    return record(weight_layers(model), asked, MEASURED_ON, kept, reverted=reverted)
