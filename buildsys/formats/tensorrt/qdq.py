"""Explicit int8 quantization for TensorRT: a QDQ ONNX model calibrated on the model's own data (CPU).

Why explicit (QDQ) and not an IInt8 calibrator: TensorRT deprecated implicit quantization (the
calibrator API and the INT8 builder flag) in 10.x, and the registry's current TensorRT is 11;
QDQ is the path it keeps. The scales are chosen here with ONNX Runtime's static quantizer on the
model's calibration set, in the form TensorRT accepts: int8 weights *and* activations, symmetric
(zero point 0), QuantizeLinear/DequantizeLinear pairs. onnx-int8's defaults (dynamic, or uint8
asymmetric activations) are what ONNX Runtime runs best and TensorRT rejects, which is why the
int8 engine is not built from onnx-int8. All of this runs on the CPU, so it is tested on hosts
without a GPU; onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buildsys.config.data import Batch

#: What TensorRT's explicit quantization needs of every QuantizeLinear/DequantizeLinear: int8 with a
#: zero point of 0 (symmetric), and float biases (TensorRT fuses them itself; ONNX Runtime's default
#: int32 bias DequantizeLinear is not an int8 Q/DQ it accepts).
TENSORRT_QDQ = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def quantize_for_tensorrt(src: Path, out: Path, batch: "Batch", *, per_channel: bool, work: Path) -> dict[str, Any]:
    """Write the symmetric int8 QDQ model of `src` to `out`, calibrated (min/max) on `batch`; metrics."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from buildsys.formats.onnx.int8 import calibration_reader
    from buildsys.formats.onnx.onnxfile import uses_external_data

    external = uses_external_data(src)
    model_in, note = _preprocess(src, work, external)
    quantize_static(str(model_in), str(out), calibration_reader(batch, model_in), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external,
                    extra_options=dict(TENSORRT_QDQ))
    problems = qdq_problems(out)
    if problems:
        raise ValueError(f"the quantized model is not one TensorRT accepts: {'; '.join(problems[:3])}")
    metrics: dict[str, Any] = {"calibration_samples": len(next(iter(batch.inputs.values())))}
    if note:
        metrics["preprocess"] = note
    metrics["quantize_linear"] = _count(out, "QuantizeLinear")
    return metrics


def _preprocess(src: Path, work: Path, external: bool) -> tuple[Path, str]:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimization) into `work`;
    on failure the original model and a note saying why (quantization works without it)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    # Symbolic shape inference copies the model in memory (protobuf's 2 GB limit): skipped with external data.
    kwargs: dict[str, Any] = {"skip_symbolic_shape": True, "save_as_external_data": True} if external else {}
    try:
        quant_pre_process(str(src), str(out), **kwargs)
    except Exception as exc:  # noqa: BLE001 - optional step: any failure falls back to the original model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return src, f"skipped: {type(exc).__name__}: {first}"[:300]
    return out, ""


def qdq_problems(path: Path) -> list[str]:
    """Why a QDQ model does not fit TensorRT's explicit quantization: ops it has no int8 form for
    (dynamic or integer-operator quantization), non-int8 or non-zero zero points. [] when it fits."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    consts = {o: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant" and n.attribute
              for o in n.output if n.attribute[0].name == "value"}
    problems = []
    for node in proto.graph.node:
        if node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger") or node.op_type.startswith("QLinear"):
            problems.append(f"{node.op_type} ({node.name}) is not explicit QDQ quantization")
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = inits.get(node.input[2]) or consts.get(node.input[2])
            if zero is None:
                continue
            if zero.data_type != onnx.TensorProto.INT8:
                problems.append(f"{node.op_type} {node.name}: zero point of type "
                                f"{onnx.TensorProto.DataType.Name(zero.data_type)}, TensorRT needs INT8")
            elif np.any(numpy_helper.to_array(zero) != 0):
                problems.append(f"{node.op_type} {node.name}: non-zero zero point (TensorRT needs symmetric scales)")
    return problems


def _count(path: Path, op: str) -> int:
    import onnx

    return sum(1 for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == op)
