"""The weight layers of a torch.fx graph about to be lowered to ExecuTorch, and the element type each is
stored in (buildsys.formats.quantized_weights): the program before lowering, since a .pte's XNNPACK
payloads are opaque flatbuffers of the delegate.

A weight layer is a linear (`aten.linear`, `addmm`, `mm`, `matmul`), convolution or embedding op whose
weight argument is a constant (a `get_attr` of the graph module); a recurrent layer or cell (`aten.lstm`, `gru`,
`rnn_*` and their cells) is one linear weight per matrix it reads. Walking back from that argument through
the ops that only dequantize, cast or move it (PT2E's `quantized_decomposed.dequantize_per_*`, torchao's
`dequantize_affine`, a tensor subclass's inner data, `to`, `t`, `permute`, `view`, …) reaches the constant;
its dtype is the stored type, and a dequantize op's `quant_min`/`quant_max` give the bits actually used
(torchao stores int4 values in int8 with the range [-8, 7]: an int4 weight).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from buildsys.formats.quantized_weights import SCALE_WIDTH, WeightTensor, record
from buildsys.formats.torch.linear import RECURRENT_KINDS

if TYPE_CHECKING:
    import torch

#: op name (`aten.linear.default` → 'aten.linear') → (kind, index of its weight argument)
WEIGHT_ARGS: dict[str, tuple[str, int]] = {
    "aten.linear": ("linear", 1), "aten.addmm": ("linear", 2), "aten.mm": ("linear", 1), "aten.matmul": ("linear", 1),
    "aten.conv1d": ("conv", 1), "aten.conv2d": ("conv", 1), "aten.conv3d": ("conv", 1),
    "aten.convolution": ("conv", 1), "aten.conv_transpose1d": ("conv", 1), "aten.conv_transpose2d": ("conv", 1),
    "aten.conv_transpose3d": ("conv", 1), "aten.embedding": ("embedding", 0),
}
#: Ops a weight passes through on its way to its layer (their first tensor argument is followed).
PASS_THROUGH = ("aten.t", "aten.permute", "aten.transpose", "aten.view", "aten.reshape", "aten._unsafe_view",
                "aten.to", "aten._to_copy", "aten.clone", "aten.contiguous", "aten.expand", "aten.unsqueeze",
                "aten.squeeze", "aten.alias", "export.access_subclass_inner_tensor",
                "quantized_decomposed.dequantize_per_channel", "quantized_decomposed.dequantize_per_tensor",
                "quantized_decomposed.dequantize_per_channel_group", "torchao.dequantize_affine")
#: Recurrent ops, whose weights are linear maps (counted as linear): the layers take them as one flat list
#: (argument 2: per layer and direction w_ih, w_hh and, with biases, b_ih, b_hh), the cells as arguments 2 and 3.
#: A quantizer with no pattern for them leaves them float, and the share must say so.
RECURRENT_LAYERS = tuple(f"aten.{kind}" for kind in RECURRENT_KINDS)
RECURRENT_CELLS = tuple(f"aten.{kind}_cell" for kind in RECURRENT_KINDS)
MEASURED_ON = "the program before lowering (each weight's stored dtype and quantization range)"


def _op(node: Any) -> str:
    """'aten.linear' for a node calling aten.linear.default; '' for anything else."""
    if node.op != "call_function":
        return ""
    name = str(node.target)
    return name.rsplit(".", 1)[0] if name.count(".") >= 2 else name


def _range_bits(node: Any) -> int | None:
    """Bits of a dequantize op's quant_min..quant_max range (16 levels: 4), or None if it has none."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    values = {a.name: (node.args[i] if i < len(node.args) else node.kwargs.get(a.name))
              for i, a in enumerate(schema.arguments)}
    low, high = values.get("quant_min"), values.get("quant_max")
    if not isinstance(low, int) or not isinstance(high, int) or high <= low:
        return None
    return max(1, math.ceil(math.log2(high - low + 1)))


def _constant(graph_module: "torch.fx.GraphModule", target: str) -> Any:
    value: Any = graph_module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _weight_behind(graph_module: "torch.fx.GraphModule", arg: Any) -> tuple[str, int, str] | None:
    """(constant name, elements, stored dtype) of the constant `arg` is a view or dequantization of."""
    import torch

    bits = None
    node = arg
    for _ in range(12):
        if not isinstance(node, torch.fx.Node):
            return None
        if node.op == "get_attr":
            value = _constant(graph_module, str(node.target))
            if not isinstance(value, torch.Tensor):
                return None
            inner = getattr(value, "qdata", value)  # a torchao tensor subclass: its stored data
            dtype = str(inner.dtype).removeprefix("torch.")
            if bits is not None and not inner.dtype.is_floating_point:
                dtype = f"{'u' if dtype.startswith('u') else ''}int{bits}"
            return str(node.target), int(inner.numel()), dtype
        op = _op(node)
        if op not in PASS_THROUGH:
            return None
        bits = _range_bits(node) or bits
        node = next((a for a in node.args if isinstance(a, torch.fx.Node)), None)
    return None


def weight_layers(graph_module: "torch.fx.GraphModule") -> list[WeightTensor]:
    """Every weight layer of the graph module (see the module doc), in graph order."""
    from buildsys.formats.executorch.quantize import module_path

    found = []
    for node in graph_module.graph.nodes:
        for kind, arg in _weight_args(graph_module, node):
            weight = _weight_behind(graph_module, arg)
            if weight is None or weight[1] <= 1:
                continue
            name, elements, dtype = weight
            found.append(WeightTensor(name, kind, elements, dtype, (node.name, module_path(node))))
    return found


def _weight_args(graph_module: "torch.fx.GraphModule", node: Any) -> list[tuple[str, Any]]:
    """(kind, argument) of each weight `node` reads: one for a linear, convolution or embedding op, every
    matrix of a recurrent layer's or cell's parameters (biases are not weights)."""
    op = _op(node)
    if op in RECURRENT_LAYERS or op in RECURRENT_CELLS:
        params = (node.args[2] if isinstance(node.args[2], (list, tuple)) else ()) if op in RECURRENT_LAYERS \
            else node.args[2:4]
        return [("linear", p) for p in params if _rank(graph_module, p) >= 2]
    kind_arg = WEIGHT_ARGS.get(op)
    if kind_arg is None or len(node.args) <= kind_arg[1]:
        return []
    if kind_arg[0] == "embedding" and _last_dim(graph_module, node.args[0]) == SCALE_WIDTH:
        return []  # one value per row: the per-row scales of an int8 table (torch/embedding.py)
    return [(kind_arg[0], node.args[kind_arg[1]])]


def _last_dim(graph_module: "torch.fx.GraphModule", arg: Any) -> int | None:
    value: Any = _constant(graph_module, str(arg.target)) if getattr(arg, "op", None) == "get_attr" \
        else getattr(arg, "meta", {}).get("val")
    return int(value.shape[-1]) if hasattr(value, "shape") and len(value.shape) else None


def _rank(graph_module: "torch.fx.GraphModule", arg: Any) -> int:
    """Dimensions of a constant (or of a traced value) a node reads; 0 for anything else."""
    value: Any = _constant(graph_module, str(arg.target)) if getattr(arg, "op", None) == "get_attr" \
        else getattr(arg, "meta", {}).get("val")
    return int(value.dim()) if hasattr(value, "dim") else 0


def measure(graph_module: "torch.fx.GraphModule", asked: str, kept: Iterable[str] = ()) -> dict[str, Any]:
    """The `quantized_weights` fact of the program `graph_module` quantized to `asked`, the layers named in
    `kept` (keep_float: node names or module paths) left out of the share."""
    return record(weight_layers(graph_module), asked, MEASURED_ON, kept)
