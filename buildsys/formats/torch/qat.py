"""Quantization-aware-trained (QAT) sources: recognised from the graph, referenced by their own fake-quant
outputs, lowered with their learned quantization parameters (docs/quantization.md, "QAT sources").

A QAT model arrives as a PyTorch factory that returns the module `prepare_qat_pt2e` made (a
`torch.fx.GraphModule` holding fake-quant modules), its trained state in `weights:` like any other
state_dict (scales and zero points included). Nothing in deploy.yaml says "QAT": the fake-quant modules in
the graph say it, and every consumer asks this module:

- the reference (the `torch-eager` runtime, `source.load_module`) runs the QAT model as trained: eval
  behaviour, observers frozen, fake quantization on. Those are the outputs its int8 artifacts must match;
  the float weights without fake quantization are a different model.
- the steps that export the module (pt2, ONNX, TorchScript: `formats.torch.rewritten.load_rewritten`) get
  `convert_pt2e` of it: quantize/dequantize ops with the learned scales around float weights
  (`fold_quantize=False`, the form litert-torch lowers; ExecuTorch folds them, see `fold_weights`).
- the int8 steps see quantize/dequantize in what they are given (`is_quantized_program`, or QDQ in an ONNX
  / FakeQuantize in an OpenVINO IR) and lower it without calibrating: re-calibration would throw the
  training away.

Eager-mode QAT (`torch.ao.quantization.prepare_qat`) is recognised too. Its converted modules are fbgemm/qnnpack
kernels no exporter here lowers, so it is never converted: the ONNX export gets it with each FakeQuantize module
replaced by the plain fake-quant call of its learned scale and zero point (`eager_exportable`), which the TorchScript
exporter writes as QuantizeLinear/DequantizeLinear (opset 13+); ONNX int8 and OpenVINO int8 keep those. The
steps that need a PT2E graph (pt2 for ExecuTorch and litert-torch, TorchScript) refuse it, saying to re-train with
prepare_qat_pt2e.

The planner (torch-free) knows a model is QAT from the op analysis (`buildsys.planning.coverage_probe` records `qat` and
`qat_flow`): an int8 step that keeps learned quantization of that flow (`Step.keeps_learned`) then needs no
calibration data (`plan_problem`).

Neutral ground like `buildsys.formats.torch.loading`: torch and torchao are imported inside the functions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError

if TYPE_CHECKING:
    from pathlib import Path

    import torch


#: Marks a module this file has prepared for reference (fake quantization on, observers frozen).
_MARK = "_modelbuild_qat"

#: The ATen-graph ops of PT2E's reference quantized representation (what convert_pt2e leaves).
QDQ_TARGETS = ("quantized_decomposed.quantize_per_tensor", "quantized_decomposed.dequantize_per_tensor",
               "quantized_decomposed.quantize_per_channel", "quantized_decomposed.dequantize_per_channel")


#: What an int8 step's metrics say when its input already carried the learned quantization.
KEPT = "the input already carries its learned quantization (QDQ / FakeQuantize): kept as it is, not re-quantized"


@dataclass(frozen=True)
class QatInfo:
    """What the graph says: how many fake-quant modules, and which flow made them ('pt2e' or 'eager')."""

    fake_quant: int
    flow: str

    def describe(self) -> str:
        return (f"quantization-aware trained ({self.fake_quant} fake-quant modules, "
                f"{'PT2E prepare_qat_pt2e' if self.flow == 'pt2e' else 'eager prepare_qat'})")


def _fake_quant_types() -> tuple[type, ...]:
    """The fake-quant base classes a module of the model can be an instance of: only those of modules already
    imported, since an object of a class can exist only once its module is. Importing torchao's to test
    against would cost every reference and export step about 1.8 s (it pulls in torch._dynamo)."""
    types: list[type] = []
    for module, name in (("torchao.quantization.pt2e.fake_quantize", "FakeQuantizeBase"),
                         ("torch.ao.quantization.fake_quantize", "FakeQuantizeBase")):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


def recognise(module: "torch.nn.Module") -> QatInfo | None:
    """A QatInfo when `module` carries fake-quant modules, else None (a float model)."""
    import torch

    types = _fake_quant_types()
    count = sum(1 for m in module.modules() if types and isinstance(m, types))
    if not count:
        return None
    return QatInfo(count, "pt2e" if isinstance(module, torch.fx.GraphModule) else "eager")


def as_trained(module: "torch.nn.Module") -> "torch.nn.Module":
    """A QAT module in the state its training left it to be used: eval behaviour (PT2E graphs need
    `move_exported_model_to_eval`: `.eval()` is refused by an exported graph and would not reach its batch
    norm and dropout ops), observers frozen (a reference run must not move the learned scales), fake quantization on.
    A float module is returned as it is."""
    info = recognise(module)
    if info is None:
        return module

    if info.flow == "pt2e":
        from torchao.quantization.pt2e import move_exported_model_to_eval

        move_exported_model_to_eval(module)
        _allow_eval(module)
    types = _fake_quant_types()
    for sub in module.modules():
        if isinstance(sub, types):
            sub.disable_observer()  # type: ignore[operator]
            sub.enable_fake_quant()  # type: ignore[operator]
    setattr(module, _MARK, info)
    return module


def _allow_eval(module: "torch.nn.Module") -> None:
    """Let callers that put any module in eval mode (`module.eval()`, `.train(False)`) do so on an exported
    graph, which refuses both (NotImplementedError): PT2E's own eval switch, returning the module like
    nn.Module does (torchao's `allow_exported_model_train_eval` returns None). Training mode stays refused:
    a build never trains."""
    import types

    from torchao.quantization.pt2e import move_exported_model_to_eval

    def _eval(self: Any) -> Any:
        move_exported_model_to_eval(self)
        return self

    def _train(self: Any, mode: bool = True) -> Any:
        if mode:
            raise NotImplementedError("a QAT model is built as trained: modelbuild never puts it in training mode")
        return _eval(self)

    module.eval = types.MethodType(_eval, module)  # type: ignore[method-assign]
    module.train = types.MethodType(_train, module)  # type: ignore[method-assign]


def info_of(module: Any) -> QatInfo | None:
    """The QatInfo `as_trained` attached, if any."""
    info = getattr(module, _MARK, None)
    return info if isinstance(info, QatInfo) else None


#: Why a step that needs a PT2E graph refuses an eager QAT model, and the fix.
EAGER_REFUSED = ("eager-mode QAT has no PT2E graph: re-train it with torchao's prepare_qat_pt2e for this format "
                 "(eager QAT reaches ONNX int8 and OpenVINO int8 only, through its QDQ ONNX export; "
                 "docs/quantization.md)")


def quantized(module: "torch.nn.Module", *, step: str = "", fold: bool = False,
              eager: bool = False) -> "torch.nn.Module":
    """The module an exporter should see: a PT2E QAT model converted with its learned parameters
    (`convert_pt2e`), a float model as it is. Weights stay float behind their quantize ops (the form
    litert-torch lowers), or with `fold` are stored as int8 (what an ONNX file should hold). An eager QAT
    model is refused (StepError, EAGER_REFUSED) unless the caller can export fake quantization (`eager`: the
    TorchScript ONNX exporter), which gets `eager_exportable` of it."""
    import copy

    info = info_of(module) or recognise(module)
    if info is None:
        return module
    if info.flow != "pt2e":
        if eager:
            return eager_exportable(module)
        raise StepError(f"the model is {info.describe()}: {EAGER_REFUSED}" + (f" (step {step})" if step else ""))
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(copy.deepcopy(as_trained(module)), fold_quantize=fold)
    setattr(converted, _MARK, info)
    return converted


def is_quantized_program(graph_module: Any) -> bool:
    """Whether a graph already holds quantize/dequantize ops (a converted QAT model): quantizing it again
    would re-calibrate what training learned."""
    return any(n.op == "call_function" and str(n.target).startswith(QDQ_TARGETS) for n in graph_module.graph.nodes)


def fold_weights(graph_module: Any) -> Any:
    """Quantize the float weights behind their quantize ops once, at build time (what `convert_pt2e` does by
    default): ExecuTorch has no out-variant kernel for a quantize op left on a constant."""
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint

    constant_fold(graph_module, _quant_node_constraint)
    return graph_module


def onnx_qdq(path: "Path") -> dict[str, int]:
    """The QuantizeLinear/DequantizeLinear nodes (by type) an ONNX file already holds ({} for a float model):
    the learned scales of a QAT model's export, which no step may quantize again."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts if counts.get("QuantizeLinear") else {}


def eager_exportable(module: "torch.nn.Module") -> "torch.nn.Module":
    """A copy of an eager QAT module (as trained) whose FakeQuantize modules are replaced by the plain
    `torch.fake_quantize_per_tensor_affine` / `_per_channel_affine` call of their learned scale and zero point:
    the same numbers (observers frozen, fake quantization on), in the ops the TorchScript ONNX exporter writes
    as QuantizeLinear/DequantizeLinear (opset 13+). torch's default QAT fake-quant (FusedMovingAvgObsFakeQuantize)
    runs `fused_moving_avg_obs_fake_quant`, which no exporter has a symbolic for."""
    import copy

    import torch

    info = info_of(module) or recognise(module)
    trained = as_trained(copy.deepcopy(module))
    types = _fake_quant_types()

    class LearnedFakeQuant(torch.nn.Module):
        scale: "torch.Tensor"
        zero_point: "torch.Tensor"

        def __init__(self, fq: Any) -> None:
            super().__init__()
            try:
                scale, zero_point = fq.scale.detach().clone().float(), fq.zero_point.detach().clone().int()
                self.quant_min, self.quant_max = int(fq.quant_min), int(fq.quant_max)
                self.axis = int(fq.ch_axis) if fq.is_per_channel else None
            except AttributeError as exc:
                raise StepError(f"{type(fq).__name__} does not hold a learned scale and zero point the ONNX export "
                                f"can write ({exc}); use torch.ao.quantization's FakeQuantize") from exc
            self.register_buffer("scale", scale)
            self.register_buffer("zero_point", zero_point)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            if self.axis is not None:
                return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis,
                                                              self.quant_min, self.quant_max)
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min, self.quant_max)

    for parent in list(trained.modules()):
        for name, child in list(parent.named_children()):
            if types and isinstance(child, types):
                setattr(parent, name, LearnedFakeQuant(child))
    setattr(trained, _MARK, info)
    return trained


def fold_onnx_weights(path: "Path") -> int:
    """Store the weights of a QDQ ONNX file as int8 (uint8) initializers: each QuantizeLinear of a float
    initializer, with a constant scale and zero point, replaced by its result (what the TorchScript exporter
    leaves of an eager QAT model's weight fake-quant: float weights behind QuantizeLinear). The same numbers
    (round half to even and saturation, as QuantizeLinear computes them); the file about a quarter of the
    weights' size. Returns how many weights were folded; rewrites `path` when any was."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}

    def const(name: str) -> Any:
        name = aliases.get(name, name)
        return numpy_helper.to_array(inits[name]) if name in inits else None

    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    folded = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[0] not in inits:
            continue
        weight, scale, zero = const(node.input[0]), const(node.input[1]), const(node.input[2])
        if weight is None or scale is None or zero is None or weight.dtype != np.float32:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.size > 1:
            shape[axis] = -1
        info = np.iinfo(zero.dtype)
        q = np.rint(weight / scale.reshape(shape)) + zero.astype(np.int32).reshape(shape)
        graph.initializer.append(numpy_helper.from_array(np.clip(q, info.min, info.max).astype(zero.dtype),
                                                         node.output[0]))
        graph.node.remove(node)
        uses[node.input[0]] -= 1
        if not uses[node.input[0]]:  # the float weight is gone from the file
            graph.initializer.remove(inits.pop(node.input[0]))
        folded += 1
    if folded:
        onnx.save(model, str(path))
    return folded
