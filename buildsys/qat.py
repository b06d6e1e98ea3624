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

Eager-mode QAT (`torch.ao.quantization.prepare_qat`) is recognised too, and refused with the reason: its
converted modules are fbgemm/qnnpack kernels no exporter here lowers.

Neutral ground like `buildsys.source`: torch and torchao are imported inside the functions.
"""

from __future__ import annotations

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
    types: list[type] = []
    try:
        from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

        types.append(FakeQuantizeBase)
    except ImportError:  # torchao missing: only torch's own classes can be there
        pass
    try:
        from torch.ao.quantization import FakeQuantizeBase as TorchFakeQuantizeBase

        types.append(TorchFakeQuantizeBase)
    except ImportError:  # removed from torch in favour of torchao
        pass
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
    import torch

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


def quantized(module: "torch.nn.Module", *, step: str = "", fold: bool = False) -> "torch.nn.Module":
    """The module an exporter should see: a PT2E QAT model converted with its learned parameters
    (`convert_pt2e`), a float model as it is. Weights stay float behind their quantize ops (the form
    litert-torch lowers), or with `fold` are stored as int8 (what an ONNX file should hold)."""
    import copy

    info = info_of(module) or recognise(module)
    if info is None:
        return module
    if info.flow != "pt2e":
        raise StepError(f"the model is {info.describe()}: eager-mode QAT converts to fbgemm/qnnpack modules that no "
                        "exporter here lowers; train it with torchao's prepare_qat_pt2e instead (docs/quantization.md)"
                        + (f" (step {step})" if step else ""))
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
