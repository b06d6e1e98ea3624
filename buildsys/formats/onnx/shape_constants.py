"""Fold what a static shape makes constant: `Shape` of a tensor whose shape is fully known, and every node computed
from it and from constants alone, replaced by initializers.

The TorchScript exporter writes shape arithmetic into the graph even where every shape is static: an LSTM's zero
initial state is `Expand(zeros, Concat(1, Gather(Shape(x), 1), hidden))`, the batch read off the input. At a
dynamic batch that is computation; at a static one (a deploy.yaml input of shape [1, 90, 9]) it is a constant that
a converter may refuse to compute (onnx2tf's Expand builds a Keras model of its result and fails: "Output tensors of
a Functional model must be the output of a TensorFlow `Layer`"). Only what a static Shape feeds is folded: a graph
with no static Shape node comes out unchanged, node for node, so models at a dynamic batch convert as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

#: Ops never folded even with constant inputs: random generators (a fresh draw per run), and those whose output
#: is not a function of their inputs' values alone.
UNFOLDABLE = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
#: Largest folded tensor (elements): a shape computation's results are small; a large one would grow the file.
MAX_ELEMENTS = 1 << 16


def fold_static_shapes(model: "onnx.ModelProto") -> int:
    """Fold `model`'s static Shape nodes and what they alone (with constants) compute, in place; returns how many
    nodes were replaced by initializers (0: the model is unchanged)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no shapes known (a model past protobuf's 2 GB): nothing is folded
        return 0
    shapes: dict[str, list[int] | None] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        static = info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims)
        shapes[info.name] = [d.dim_value for d in dims] if static else None
    values: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    folded_outputs: set[str] = set()
    folded: list[Any] = []
    folded_at: list[int] = []  # their indices in graph.node
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type in UNFOLDABLE or node.op_type == "Constant":
            continue
        result: list[Any] | None = None
        if node.op_type == "Shape" and shapes.get(node.input[0]) is not None:
            result = [np.array(shapes[node.input[0]], np.int64)[_shape_slice(node)]]
        elif any(name in folded_outputs for name in node.input) and all(not n or n in values for n in node.input):
            result = _evaluate(node, values, opset)
        if result is None or any(np.asarray(r).size > MAX_ELEMENTS for r in result):
            continue
        for name, value in zip(node.output, result):
            values[name] = np.asarray(value)
            folded_outputs.add(name)
        folded.append(node)
        folded_at.append(index)
    if not folded:
        return 0
    read_by_folded = {name for node in folded for name in node.input}
    for index in reversed(folded_at):
        del graph.node[index]
    needed = _read_names(graph)
    for name in sorted(folded_outputs & needed):
        graph.initializer.append(numpy_helper.from_array(values[name], name))
    for info in [v for v in graph.value_info if v.name in folded_outputs]:
        graph.value_info.remove(info)
    # the Constant nodes and initializers only the folded nodes read
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in read_by_folded - needed]:
        graph.node.remove(node)
    for init in [t for t in graph.initializer if t.name in read_by_folded - needed]:
        graph.initializer.remove(init)
    return len(folded)


def _read_names(graph: Any) -> set[str]:
    """Every name a node of `graph` or of its subgraphs (Loop / If / Scan bodies read outer names) reads, and the
    graph's outputs."""
    from onnx import AttributeProto

    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                names |= _read_names(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    names |= _read_names(sub)
    return names


def _shape_slice(node: Any) -> slice:
    """The dims a Shape node returns (opset 15's start / end attributes)."""
    attrs = {a.name: a.i for a in node.attribute}
    return slice(attrs.get("start", 0), attrs.get("end"))


def _evaluate(node: Any, values: dict[str, Any], opset: int) -> list[Any] | None:
    """The outputs of `node` on constant inputs, by ONNX's reference implementation; None where it cannot run."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [n for n in node.input if n]
    graph = helper.make_graph([node], "fold", [helper.make_tensor_value_info(n, 0, None) for n in inputs],
                              [helper.make_tensor_value_info(n, 0, None) for n in node.output if n])
    try:
        evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
        return list(evaluator.run(None, {n: values[n] for n in inputs}))
    except Exception:  # noqa: BLE001 - an op the reference cannot evaluate stays a node: nothing is lost
        return None
