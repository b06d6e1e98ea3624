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

Everything heavy (torch, torchao, executorch) is imported inside the functions: the registry imports
every module of a family when modelbuild starts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer


@lru_cache(maxsize=1)
def _float_scalars_quantizer() -> type:
    """XNNPACKQuantizer whose scalar-to-constant rewrite leaves integer arithmetic alone."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.utils import get_new_attr_name_with_prefix

    class FloatScalarsQuantizer(XNNPACKQuantizer):
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


def quantizer(*, per_channel: bool, dynamic: bool) -> XNNPACKQuantizer:
    """The XNNPACK quantizer for the whole program: symmetric int8, static or dynamic activations."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic)
    return _float_scalars_quantizer()().set_global(config)


def with_recurrent_cells_decomposed(program: Any) -> Any:
    """The exported program with its recurrent cells as linears and pointwise ops (nothing else decomposed)."""
    import torch
    from torch._export.utils import _get_decomp_for_cia

    cells = (torch.ops.aten.lstm_cell.default, torch.ops.aten.gru_cell.default,
             torch.ops.aten.rnn_tanh_cell.default, torch.ops.aten.rnn_relu_cell.default)
    return program.run_decompositions({op: _get_decomp_for_cia(op) for op in cells})


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
