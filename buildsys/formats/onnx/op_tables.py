"""The ONNX exporters' op tables: the ATen ops torchlib (dynamo) and the TorchScript exporter's symbolics translate, declared for op coverage (planning.coverage)."""

from __future__ import annotations

from buildsys.formats.base import OpTable
from buildsys.formats.registry import register_op_table


def torchlib_ops() -> list[str]:
    """The ATen ops the dynamo ONNX exporter's torchlib translates."""
    import logging

    from torch.onnx._constants import ONNX_MAX_OPSET
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision
    # is not installed. Skipping torchvision::nms": not an op a model here can hold
    # At the highest opset it writes: an op only a later opset translates (rms_norm, 23) is in the table, so
    # the table never lacks what some `opset:` has (a lower opset may still lack it: its refusal says so).
    registry = ONNXRegistry.from_torchlib(ONNX_MAX_OPSET)
    return sorted({str(key).split("::", 1)[1].split(".", 1)[0] for key in registry.functions
                   if str(key).startswith("aten::")})




def symbolic_ops() -> list[str]:
    """The ATen ops the TorchScript ONNX exporter has a symbolic for."""
    import importlib
    import pkgutil

    from torch.onnx._internal import torchscript_exporter
    from torch.onnx._internal.torchscript_exporter import registration

    # The symbolics register themselves when their module is imported; the exporter imports them all.
    for module in pkgutil.iter_modules(torchscript_exporter.__path__):
        if module.name.startswith("symbolic_opset"):
            importlib.import_module(f"{torchscript_exporter.__name__}.{module.name}")
    return sorted({name.split("::", 1)[1] for name in registration.registry.all_functions() if name.startswith("aten::")})




register_op_table(OpTable("onnx-dynamo", ("torch", "onnxscript"), f"{__name__}:torchlib_ops",
                           "the dynamo ONNX exporter's torchlib registry"))
register_op_table(OpTable("onnx-legacy", ("torch",), f"{__name__}:symbolic_ops",
                           "the TorchScript ONNX exporter's symbolic registry"))
