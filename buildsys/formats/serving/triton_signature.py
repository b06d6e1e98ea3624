"""The inputs and outputs of a model file as config.pbtxt declares them: read from ONNX, observed on TorchScript.

The Triton layout steps (`triton.py`) write config.pbtxt from the artifact itself, not from the
signature alone. An ONNX model's element types and shapes are read from its graph (ONNX shape
inference fills in outputs that declare none), and so are the external-data files it keeps weights
in. A TorchScript module keeps neither types nor output shapes, so it is run on the example inputs,
and again on one sample more when the signature batches, to tell an axis that follows the batch from
one that happens to equal it. onnx, torch and numpy are imported inside the functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from buildsys.formats.base import Step, StepContext
from buildsys.formats.serving.repository import TRITON_TYPES

if TYPE_CHECKING:
    from buildsys.config.schema import Model


# ONNX TensorProto element types (onnx.TensorProto.FLOAT etc.) by number, to the dtype names of TRITON_TYPES.
ONNX_ELEMENT_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                      8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
                      16: "bfloat16"}


def signature_batches(model: "Model") -> bool:
    """Whether the signature allows Triton batching: every input's first axis is the same dynamic name."""
    firsts = {i.shape[0] for i in model.inputs}
    return len(firsts) == 1 and isinstance(next(iter(firsts)), str)


def external_locations(proto: Any) -> list[str]:
    """Files an ONNX model keeps tensors in (its external data), in first-use order."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    found: dict[str, None] = {}
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            found[ExternalDataInfo(tensor).location] = None
    return list(found)


def onnx_graph_and_files(step: Any, ctx: Any, model_file: str) -> tuple[Any, dict[str, Any]]:
    """The upstream ONNX graph (weights left on disk) and the files an artifact must ship to hold it:
    `model_file` → the model, plus each external-data file next to it. Fails the step, saying why,
    for an unreadable model or a side file that is not beside it."""
    import onnx

    src = Path(str(ctx.input_path))
    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise step.fail(ctx, f"'{src.name}' is not a readable ONNX file: {type(exc).__name__}") from exc
    files = {model_file: src}
    for location in external_locations(proto):
        side = src.parent / location
        if Path(location).is_absolute() or ".." in Path(location).parts or not side.is_file():
            raise step.fail(ctx, f"the ONNX model keeps weights in '{location}', which is not a file next to it")
        files[location] = side
    return proto, files


Tensor = tuple[str, str, list[Optional[int]]]  # (name, dtype, shape with None for a dynamic axis)


def onnx_signature(step: Step, ctx: StepContext, proto: Any) -> tuple[list[Tensor], list[Tensor]]:
    """(name, dtype, shape) of the graph's inputs and the signature's outputs, in signature order.

    Shapes come from the graph (a dim_param or an unset dim is None); outputs without a declared
    shape get one from ONNX shape inference. A None shape means the rank itself is unknown.
    """
    import onnx

    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input if v.name not in inits}
    graph_outputs = {v.name: v for v in graph.output}
    wanted_out = [o.name for o in ctx.model.outputs]
    if not all(n in graph_outputs for n in wanted_out):  # a foreign file: outputs by position
        wanted_out = [v.name for v in graph.output][: len(wanted_out)]
    if any(not _shape(graph_outputs[n]) for n in wanted_out):
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
            graph_outputs.update({v.name: v for v in inferred.graph.output if _shape(v)})
        except Exception:
            pass

    def row(value: Any, what: str) -> Tensor:
        elem = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else 0
        dtype = ONNX_ELEMENT_TYPES.get(elem)
        if dtype is None:
            raise step.fail(ctx, f"the ONNX {what} '{value.name}' is not a plain tensor Triton can describe "
                                 f"(element type {elem})")
        shape = _shape(value)
        if shape is None:
            raise step.fail(ctx, f"the ONNX {what} '{value.name}' has no declared shape, and config.pbtxt needs its "
                                 "rank; export it with shapes (modelbuild's exporters declare them)")
        return value.name, dtype, shape

    order = [i.name for i in ctx.model.inputs if i.name in graph_inputs] + \
            [n for n in graph_inputs if n not in {i.name for i in ctx.model.inputs}]
    return [row(graph_inputs[n], "input") for n in order], [row(graph_outputs[n], "output") for n in wanted_out]


def _shape(value: Any) -> list[int | None] | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim]


def torchscript_outputs(step: Step, ctx: StepContext, src: Path) -> list[Tensor]:
    """Output (OUTPUT__<i>, dtype, shape) from running the module: on the trace batch and on one sample
    more, so that an axis that follows the batch is told apart from one that happens to equal it."""
    import numpy as np
    import torch

    from buildsys.config.data import Batch
    from buildsys.errors import describe
    from buildsys.formats.torch.loading import example_args, outputs_in_order, trace_batch

    try:
        module = torch.jit.load(str(src), map_location="cpu").eval()
    except Exception as exc:
        raise step.fail(ctx, f"'{src.name}' is not a loadable TorchScript file: {type(exc).__name__}") from exc
    first = trace_batch(ctx.model, ctx.example())
    runs = [first]
    if signature_batches(ctx.model):  # one sample more: the axes that follow the batch grow by one
        runs.append(Batch({k: np.concatenate([v, v[:1]], axis=0) for k, v in first.inputs.items()}, None, "probe"))
    observed: list[list[Any]] = []
    for batch in runs:
        try:
            with torch.inference_mode():
                result = module(*example_args(ctx.model, batch))
            observed.append([torch.as_tensor(t) for t in outputs_in_order(result, ctx.model)])
        except Exception as exc:
            raise step.fail(ctx, f"the TorchScript module failed on the example inputs: {describe(exc)}") from exc
    other_dynamic = any(isinstance(d, str) for spec in ctx.model.inputs for d in spec.shape[1:])
    rows = []
    for i, tensors in enumerate(zip(*observed)):
        dtype = str(tensors[0].dtype).removeprefix("torch.")
        if dtype not in TRITON_TYPES:
            raise step.fail(ctx, f"output '{ctx.model.outputs[i].name}' has the type {dtype}, which Triton has no "
                                 "data type for")
        sizes = [list(t.shape) for t in tensors]
        if len({len(s) for s in sizes}) > 1:
            raise step.fail(ctx, f"output '{ctx.model.outputs[i].name}' changes rank with the batch size "
                                 f"({sizes[0]} vs {sizes[1]}); Triton needs a fixed rank")
        shape: list[int | None] = list(sizes[0])
        if shape:
            follows = len(runs) > 1 and [s[0] for s in sizes] == [len(b) for b in runs]
            rest = [None if other_dynamic or len({s[a] for s in sizes}) > 1 else shape[a]
                    for a in range(1, len(shape))]
            shape = [None if follows else shape[0], *rest]
        rows.append((f"OUTPUT__{i}", dtype, shape))
    return rows
