"""PT2E int8 for ExecuTorch's XNNPACK delegate: the quantizer, and what the program must look like first.

Two things stand between XNNPACKQuantizer and real models, both found on the zoo (docs/mobile.md):

- Its `transform_for_annotation` turns the scalar operand of every `aten.add` / `aten.mul` into a
  float32 constant, integer index arithmetic included: BERT's `arange(...) + 0` then yields float
  indices, and the prepared model fails on its first call ("tensors used as indices must be long").
  `quantizer()` converts the scalars of floating-point nodes only.
- torch.export keeps a recurrent cell (`aten.lstm_cell`, `gru_cell`, …) as one op that no annotator
  matches, so a dynamic scheme quantizes none of an LSTMCell's weights. `with_recurrent_cells_decomposed`
  turns just those ops into their two linears, which the dynamic annotator quantizes. The static
  scheme gets the cells whole, so they stay in float there.

Its observers' scale floor is lowered to PyTorch's own (`pt2e.finer_scales`): at XNNPACK's 2^-12 a head
initialised small came out of the .pte as zeros.

Accuracy repair (docs/repair.md) keeps chosen nodes in float: `quantizer(float_nodes=...)` drops their
annotations after XNNPACKQuantizer annotated the graph. Its own ways cannot do it in ExecuTorch 1.5:
`set_module_name(name, None)` asserts a config, and `set_filter_function` is ignored by the `cat`
annotator and by the propagation of shared ranges through view ops, so a kept Linear still reads a
quantized cat. `annotated_units` names what can be kept.

Everything heavy (torch, torchao, executorch) is imported inside the functions: the registry imports
every module of a family when modelbuild starts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import torch
    from torch.fx import Node
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    from buildsys.config.data import Batch
    from buildsys.formats.base import StepContext


@lru_cache(maxsize=1)
def _float_scalars_quantizer() -> type:
    """XNNPACKQuantizer whose scalar-to-constant rewrite leaves integer arithmetic alone."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.utils import get_new_attr_name_with_prefix

    class FloatScalarsQuantizer(XNNPACKQuantizer):
        #: Nodes this predicate holds for stay float (their annotations dropped after annotation).
        float_nodes: Callable[[Node], bool] | None = None

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            from buildsys.formats.torch.pt2e import float_values_only

            model = super().annotate(model)
            dynamic_convs_before_relu(model, self.global_config)
            float_values_only(model)  # integer values (position buckets, indices) stay unquantized
            if self.float_nodes is not None:
                drop_annotations(model, [n for n in model.graph.nodes if self.float_nodes(n)])
            return model

        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in (torch.ops.aten.add.Tensor,
                                                                     torch.ops.aten.mul.Tensor):
                    continue
                val = node.meta.get("val")
                if val is None or not val.dtype.is_floating_point:
                    continue  # index arithmetic: a float constant here would make float indices
                args = []
                for arg in node.args:
                    if isinstance(arg, torch.fx.Node):
                        args.append(arg)
                        continue
                    name = get_new_attr_name_with_prefix("_tensor_constant_")(model)
                    constant = torch.tensor(float(arg))
                    model.register_buffer(name, constant)
                    with model.graph.inserting_before(node):
                        attr = model.graph.create_node("get_attr", name, (), {})
                        attr.meta["val"] = val.fake_mode.from_tensor(constant, static_shapes=True)
                    args.append(attr)
                node.args = tuple(args)
            model.recompile()
            return model

    return FloatScalarsQuantizer


def dynamic_convs_before_relu(model: torch.fx.GraphModule, config: Any) -> None:
    """Under a dynamic config, annotate the convolutions XNNPACKQuantizer skipped because a ReLU reads them.

    Its conv annotator leaves a conv whose one user is a ReLU to the fused `conv_relu` pattern, and that pattern
    is static-only: under the dynamic scheme every Conv + (BN +) ReLU stayed float (a ResNet block: none of its
    convolutions int8, the share floor then refuses the program). The conv annotator is run again with the ReLU
    test switched off; the convolutions it annotated already, and the depthwise and non-2-D ones it declines under
    a dynamic config, are left as they are. The ReLU stays a float op after the dynamic conv (XNNPACK runs both)."""
    from unittest import mock

    import executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils as annotators

    if config is None or config.input_activation is None or not config.input_activation.is_dynamic:
        return
    with mock.patch.object(annotators, "is_relu_node", lambda node: False):  # only this call's ReLU test
        annotators._do_annotate_conv(model, config, None)


def quantizer(*, per_channel: bool, dynamic: bool, float_nodes: Callable[[Node], bool] | None = None,
              fine: bool = True) -> XNNPACKQuantizer:
    """The XNNPACK quantizer for the whole program: symmetric int8, static or dynamic activations; the
    nodes `float_nodes` holds for (see `float_filter`) left in float; `fine`: scales floored at float32's epsilon
    (pt2e.finer_scales), else at XNNPACK's 2^-12."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    from buildsys.formats.torch.pt2e import fast_range_search, finer_scales

    fast_range_search()  # the histogram observers' range search, the same result without torch indexing
    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic)
    config = finer_scales(config) if fine else config
    q = _float_scalars_quantizer()().set_global(config)
    q.float_nodes = float_nodes
    return q


def module_path(node: Node) -> str:
    """The innermost module a node of an exported graph comes from ("" for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return path.removeprefix("L['self'].")


def float_filter(names: Iterable[str]) -> Callable[[Node], bool]:
    """A predicate for the nodes `names` keeps in float: a node by its torch.export name (`linear_5`, as
    the repair record lists them), or every node of a module by its path (`head`, `blocks.0.attn`)."""
    wanted = set(names)

    def keep(node: Node) -> bool:
        path = module_path(node)
        return node.name in wanted or any(path == w or path.startswith(w + ".") for w in wanted if w)

    return keep


def _shared_with(annotation: Any) -> set[Node]:
    """The nodes whose annotations hold the ranges an annotation shares (SharedQuantizationSpec): a node's
    output range is in its own annotation, an edge's (producer, consumer) range in the consumer's."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    out: set[Node] = set()
    for spec in [*annotation.input_qspec_map.values(), annotation.output_qspec]:
        if isinstance(spec, SharedQuantizationSpec):
            target = spec.edge_or_node
            out.add(target[1] if isinstance(target, tuple) else target)
    return out


def drop_annotations(model: torch.fx.GraphModule, nodes: Iterable[Node]) -> None:
    """Leave `nodes` unquantized: drop their annotations, then those of nodes that share a range with a
    dropped one (the view ops that propagation made share their producer's range), until none does."""
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    dropped = {n for n in nodes if n.meta.pop(Q_ANNOTATION_KEY, None) is not None}
    changed = bool(dropped)
    while changed:
        changed = False
        for node in model.graph.nodes:
            annotation = node.meta.get(Q_ANNOTATION_KEY)
            if annotation is not None and _shared_with(annotation) & dropped:
                del node.meta[Q_ANNOTATION_KEY]
                dropped.add(node)
                changed = True


def annotated_units(model: torch.fx.GraphModule) -> list[str]:
    """The names, in graph order, of the nodes the quantizer annotated in a prepared graph that a repair can
    keep in float: those with a range of their own (a Linear, an add, a cat); a view op that only shares its
    producer's range (propagation) goes with its producer."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    out = []
    for node in model.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if node.op != "call_function" or annotation is None:
            continue
        specs = [*annotation.input_qspec_map.values(), annotation.output_qspec]
        if any(s is not None and not isinstance(s, SharedQuantizationSpec) for s in specs):
            out.append(node.name)
    return out


def with_recurrent_cells_decomposed(program: Any) -> Any:
    """The exported program with its recurrent cells as linears and pointwise ops (nothing else decomposed)."""
    from buildsys.formats.torch.linear import recurrent_cell_decompositions

    return program.run_decompositions(recurrent_cell_decompositions())


#: The most recurrent cells (steps x stacked layers x directions, over the whole program) unrolled for XNNPACK.
#: Its lowering is quadratic in them: every unrolled step is its own delegate (the steps' select and split ops
#: are not delegated) and to_backend's work per delegate walks the whole graph. fp32, one 3-layer LSTM-256:
#: 48 s at 60 cells, 107 s at 120, 364 s at 240; Sequencer2D-S's 36 bidirectional LSTMs over 9 steps (648
#: cells) in int8: past the step's 5-minute budget, static and dynamic. Past the bound the layers stay one op
#: (lowered as scan loops) with float weights, and the int8 share counts them.
MAX_UNROLLED_CELLS = 128


def recurrent_weights_as_linears(program: Any, dynamic: bool, max_cells: int | None = None) -> tuple[Any, int]:
    """The exported program as XNNPACKQuantizer can quantize its recurrent weights, and how many layers were
    unrolled: `aten.lstm` / `gru` / `rnn_*` take their weights as a flat list no quantizer pattern reads, so
    layers are unrolled into linears (formats/torch/linear.py) up to `max_cells` cells (the step's
    max_unrolled_cells; unset: MAX_UNROLLED_CELLS); more stay one op with float weights, which the step's int8
    share then counts against it. The dynamic scheme decomposes the
    cells of what is left too (a cell's weights quantized per call)."""
    from buildsys.formats.torch.linear import with_recurrent_layers_unrolled

    program, unrolled = with_recurrent_layers_unrolled(program, max_cells or MAX_UNROLLED_CELLS)
    return (with_recurrent_cells_decomposed(program) if dynamic else program), unrolled


def has_recurrent_layers(program: Any) -> bool:
    """Whether the program still holds a recurrent layer op (one the step did not unroll)."""
    import torch

    from buildsys.formats.torch.linear import RECURRENT_KINDS

    aten = torch.ops.aten
    layers = {getattr(aten, kind).input for kind in RECURRENT_KINDS}
    return any(n.op == "call_function" and n.target in layers for n in program.graph.nodes)


def int8_weights(graph_module: torch.fx.GraphModule) -> tuple[int, int]:
    """(int8 weight elements, all weight elements) of a converted PT2E graph: the constants it holds
    (get_attr) as int8 against those still in floating point; scalars are not weights."""
    import torch

    int8 = total = 0
    for node in graph_module.graph.nodes:
        if node.op != "get_attr":
            continue
        value: Any = graph_module
        for part in node.target.split("."):
            value = getattr(value, part)
        if isinstance(value, torch.Tensor) and value.numel() > 1 and (value.dtype == torch.int8
                                                                       or value.dtype.is_floating_point):
            total += value.numel()
            int8 += value.numel() if value.dtype == torch.int8 else 0
    return int8, total


def unknown_nodes(graph_module: Any, names: list[str]) -> list[str]:
    """The keep_float names that match no node of the exported graph, by name or module path."""
    nodes = list(graph_module.graph.nodes)
    return [name for name in names if not any(float_filter([name])(n) for n in nodes)]


def calibrate(ctx: StepContext, prepared: Any, calibration: Batch, batch: int, limit: int | None) -> int:
    """Run the observers over the calibration set in calls of the program's batch; returns the samples seen."""
    import torch

    from buildsys.config.data import Batch
    from buildsys.formats.executorch.contract import fill
    from buildsys.formats.torch.loading import example_args

    inputs = {k: v[:limit] if limit else v for k, v in calibration.inputs.items()}
    n = len(next(iter(inputs.values())))
    with torch.no_grad():
        for start in range(0, n, batch):
            chunk = fill({k: v[start:start + batch] for k, v in inputs.items()}, batch)
            prepared(*example_args(ctx.model, Batch(chunk, None, calibration.origin)))
    return n
