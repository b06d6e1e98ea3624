"""`sparsity:` on the float TFLite formats: magnitude pruning of a converted flatbuffer's weights, then the
converter's own sparse encoding.

Pruning works on the flatbuffer rather than on the SavedModel: onnx2tf's SavedModel holds the weights as graph
constants, and the flatbuffer names exactly the tensors TFLite kernels read as weights (input 1 of CONV_2D,
DEPTHWISE_CONV_2D, TRANSPOSE_CONV and FULLY_CONNECTED; with fp16 weights, the float16 constant behind their
DEQUANTIZE). One conversion then serves every ratio `sparsity: auto` tries. The pruned flatbuffer goes through
`mlir_sparsify`, the pass `tf.lite.Optimize.EXPERIMENTAL_SPARSITY` runs after conversion: it re-encodes a
constant weight in TFLite's sparse format (values plus CSR-style indices) once a tensor is sparse enough, and puts
a DENSIFY op before the kernel, so the interpreter rebuilds the dense tensor at load (memory and speed at
run time are those of the dense model). Measured on examples/digits: nothing is stored sparse below a ratio
of 0.3, some weights from 0.3, every pruned weight from 0.4 (docs/mobile.md); where the encoding would make
the file larger, the pruned flatbuffer is kept dense.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from buildsys.formats.base import Step, StepContext

#: Builtin operators whose input 1 is a weight tensor that TFLite's sparse encoding knows.
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")


def prune_flatbuffer(flatbuffer: bytes, ratio: float, threshold: int) -> tuple[bytes, dict[str, Any]]:
    """`flatbuffer` with each float weight of `WEIGHT_OPS` holding at least `threshold` elements pruned by
    magnitude to `ratio`, sparse-encoded where TFLite does; and the facts: tensors pruned, the share of zeros
    measured over them, tensors stored sparse."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python.convert import mlir_sparsify
    from tensorflow.lite.tools import flatbuffer_utils

    from buildsys.formats.prune_search import magnitude_prune, zero_share

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    done: set[int] = set()  # buffers already pruned (a weight shared by two ops)
    pruned: list[np.ndarray] = []
    for graph in model.subgraphs:
        producers = {out: op for op in graph.operators for out in op.outputs}
        for op in graph.operators:
            if names.get(_code(model, op)) not in WEIGHT_OPS or len(op.inputs) < 2:
                continue
            index = int(op.inputs[1])
            source = producers.get(index)
            if source is not None and names.get(_code(model, source)) == "DEQUANTIZE":
                index = int(source.inputs[0])  # fp16 weights: the float16 constant the DEQUANTIZE reads
            tensor = graph.tensors[index]
            buffer = model.buffers[tensor.buffer]
            if tensor.type not in dtypes or buffer.data is None or tensor.buffer in done:
                continue
            weights = np.frombuffer(bytes(buffer.data), dtype=dtypes[tensor.type])
            if weights.size < max(threshold, 1):
                continue
            weights = magnitude_prune(weights, ratio)
            buffer.data = np.frombuffer(weights.tobytes(), dtype=np.uint8)
            done.add(tensor.buffer)
            pruned.append(weights)
    dense = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    encoded = bytes(mlir_sparsify(dense))
    if len(encoded) >= len(dense):
        # The pass encodes by sparsity level, not by size: float16 weights at 0.3 came out 5 % larger on
        # examples/digits (indices cost more next to 2-byte values). Keep the zeros dense then.
        encoded = dense
    stored = flatbuffer_utils.read_model_from_bytearray(bytearray(encoded))
    sparse = sum(t.sparsity is not None for g in stored.subgraphs for t in g.tensors)
    return encoded, {"pruned_tensors": len(pruned), "measured_sparsity": zero_share(pruned),
                     "sparse_tensors": sparse}


def prune_output(step: "Step", ctx: "StepContext", path: Path) -> dict[str, Any]:
    """Prune the step's converted flatbuffer `path` in place at `sparsity` (or the ratio `auto` finds); returns
    the metrics: the ratio delivered, the sparsity measured on the pruned weights, what is stored sparse, sizes."""
    opts = ctx.options
    dense = path.read_bytes()
    search: dict[str, Any] = {}
    ratio = opts.sparsity
    if ratio == "auto":
        ratio, search = _auto(step, ctx, path)
    try:
        encoded, facts = prune_flatbuffer(dense, ratio, opts.weight_threshold)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise step.fail(ctx, f"pruning to sparsity {ratio:g} failed: {type(exc).__name__}: "
                             f"{text[0][:300] if text else ''}") from exc
    if not facts["pruned_tensors"]:
        raise step.fail(ctx, f"sparsity: no convolution or fully-connected weight has weight_threshold "
                             f"({opts.weight_threshold}) elements or more, so nothing was pruned; lower "
                             "weight_threshold or remove sparsity")
    path.write_bytes(encoded)
    recorded = {"sparsity_search": search} if search else {}
    return {"sparsity": ratio, **facts, "dense_bytes": len(dense), "bytes": len(encoded), **recorded}


def _auto(step: "Step", ctx: "StepContext", path: Path) -> tuple[float, dict[str, Any]]:
    """`sparsity: auto`: each candidate run by the LiteRT interpreter against the model's PyTorch module."""
    from buildsys.formats.prune_search import search, session_outputs
    from buildsys.formats.tflite.layout import read_layout
    from buildsys.formats.tflite.litert import LiteRtSession
    from buildsys.formats.torch.loading import load_module

    dense = path.read_bytes()
    record = read_layout(path.parent)
    batch = ctx.data("validation")
    module = load_module(ctx.model, ctx.root, name=ctx.model_name, step=step.name)

    def prune(ratio: float, out: Path) -> Path:
        out.mkdir(parents=True)
        (out / path.name).write_bytes(prune_flatbuffer(dense, ratio, ctx.options.weight_threshold)[0])
        return out / path.name

    def evaluate(path: Path) -> Any:
        assert batch is not None  # check_config requires it
        return session_outputs(LiteRtSession(path, ctx.model, record), ctx.model, batch)

    with tempfile.TemporaryDirectory(prefix="sparsity-") as tmp:
        return search(step, ctx, module, prune, evaluate, path, Path(tmp))


def _code(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return int(max(code.builtinCode, code.deprecatedBuiltinCode))
