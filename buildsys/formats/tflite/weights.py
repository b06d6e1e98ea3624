"""The weight layers of a TFLite flatbuffer and the element type each is stored in
(buildsys.formats.quantized_weights), read from the flatbuffer's tensor types with LiteRT's own schema
(`ai_edge_litert`, in both TFLite extras).

A weight layer is an operator that reads a constant tensor (one with a buffer) as its weight:
FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, CONV_3D (input 1), BATCH_MATMUL (either
operand), EMBEDDING_LOOKUP (input 1), GATHER (input 0: an embedding table) and the fused recurrent kernels
(UNIDIRECTIONAL_SEQUENCE_LSTM and its kin: every gate's input and recurrent matrix, as linear weights). A constant behind a
DEQUANTIZE (float16 or int8 weights widened at load) counts with its stored type. Every subgraph is read
(an LLM flatbuffer's prefill and decode signatures share their weights: each buffer counts once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from buildsys.formats.quantized_weights import SCALE_WIDTH, WeightTensor, record

#: operator → (kind, the inputs that may hold its weight)
WEIGHT_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "FULLY_CONNECTED": ("linear", (1,)), "BATCH_MATMUL": ("linear", (1, 0)),
    "CONV_2D": ("conv", (1,)), "DEPTHWISE_CONV_2D": ("conv", (1,)), "TRANSPOSE_CONV": ("conv", (1,)),
    "CONV_3D": ("conv", (1,)), "CONV_3D_TRANSPOSE": ("conv", (1,)),
    "EMBEDDING_LOOKUP": ("embedding", (1,)), "GATHER": ("embedding", (0,)),
    # fused recurrent kernels: input-to-gate weights, then recurrent weights (each gate its own tensor)
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("linear", tuple(range(1, 9))), "LSTM": ("linear", tuple(range(1, 9))),
    "BIDIRECTIONAL_SEQUENCE_LSTM": ("linear", (*range(1, 9), *range(18, 26))),
    "UNIDIRECTIONAL_SEQUENCE_RNN": ("linear", (1, 2)), "RNN": ("linear", (1, 2)),
}
#: Recurrent kernels read several weights each (every gate's input and recurrent matrices): all are read.
EVERY_INPUT = ("UNIDIRECTIONAL_SEQUENCE_LSTM", "LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN",
               "RNN")
MEASURED_ON = "the flatbuffer's tensor types (each weight's stored type behind its operator)"


def weight_layers(flatbuffer: bytes) -> list[WeightTensor]:
    """Every weight layer of every subgraph (see the module doc); a buffer two layers share counts once."""
    import math

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))

    def has_data(tensor: Any) -> bool:
        buffer = model.buffers[tensor.buffer]
        return bool((buffer.data is not None and len(buffer.data)) or (getattr(buffer, "size", 0) or 0))

    found: list[WeightTensor] = []
    for graph in model.subgraphs:
        producers = {out: op for op in graph.operators for out in op.outputs}
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            if name not in WEIGHT_INPUTS:
                continue
            kind, candidates = WEIGHT_INPUTS[name]
            for index in candidates:
                if index >= len(op.inputs) or op.inputs[index] < 0:
                    continue
                tensor_index = int(op.inputs[index])
                source = producers.get(tensor_index)
                if source is not None and ops.get(model.operatorCodes[source.opcodeIndex].builtinCode) == "DEQUANTIZE":
                    tensor_index = int(source.inputs[0])  # float16 / int8 stored, widened at load
                tensor = graph.tensors[tensor_index]
                if not has_data(tensor):
                    continue
                shape = [int(d) for d in tensor.shape] if tensor.shape is not None else []
                if kind == "embedding" and shape and shape[-1] == SCALE_WIDTH:
                    continue  # one value per row: the per-row scales of an int8 table (torch/embedding.py)
                label = _name(tensor)
                # the op's scope (its output tensor names, ';'-joined: how ai-edge-quantizer's keep_float names
                # it), then the buffer (last: what a weight shared by two ops is deduplicated by)
                scope = "".join(f"{_name(graph.tensors[i])};" for i in op.outputs if i >= 0)
                found.append(WeightTensor(label or f"buffer {tensor.buffer}", kind, math.prod(shape),
                                          types.get(tensor.type, str(tensor.type)), (scope, f"buffer {tensor.buffer}")))
                if name not in EVERY_INPUT:
                    break
    return _each_buffer_once(found)


def _name(tensor: Any) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or "")


def _each_buffer_once(found: list[WeightTensor]) -> list[WeightTensor]:
    """One entry per buffer: the first linear use of a shared buffer (a tied embedding and output head is a
    linear weight), else its first use."""
    by_buffer: dict[str, WeightTensor] = {}
    for w in found:
        key = w.aliases[-1]
        if key not in by_buffer or (w.kind == "linear" and by_buffer[key].kind != "linear"):
            by_buffer[key] = w
    return list(by_buffer.values())


def measure(path: Path, asked: str, kept: Iterable[str] = ()) -> dict[str, Any]:
    """The `quantized_weights` fact of the .tflite at `path` quantized to `asked`, the layers named in `kept`
    (keep_float: tensor names or op scopes) left out of the share."""
    return record(weight_layers(path.read_bytes()), asked, MEASURED_ON, kept)
