"""The onnx-int8 format: ONNX Runtime post-training quantization, dynamic or static (calibrated)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field

from buildsys.errors import ModelbuildError
from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions

if TYPE_CHECKING:
    from buildsys.config.schema import Model
    from buildsys.data import Batch

ONNX_INT8 = register_format(Format(
    name="onnx-int8", family="onnx", precision="int8", filename="model.onnx", runtime="onnxruntime",
    description="ONNX model quantized to 8-bit integers by ONNX Runtime (about 4x smaller weights).",
))


@register
class OnnxInt8FromOnnx(Step):
    """Quantize an ONNX model to int8: dynamic (weights only, activations at run time) or static (calibrated)."""

    name = "onnx-int8-from-onnx"
    consumes = ("onnx", "onnx-optimized")
    produces = "onnx-int8"
    precision = "int8"
    packages = ("onnxruntime", "onnx")
    toolchain = "onnx"
    description = "onnxruntime.quantization quantize_dynamic / quantize_static."

    class Options(StepOptions):
        method: Literal["dynamic", "static"] = Field(
            default="dynamic", description="'dynamic': weights quantized ahead of time, activation ranges computed "
            "per call (no data needed; best for MatMul/Linear-heavy models). 'static': activation ranges "
            "calibrated on the model's calibration set (fastest inference, needs data.calibration).")
        per_channel: bool = Field(default=False, description="One scale per output channel of each weight "
                                  "(better accuracy for convolutions) instead of one per tensor.")
        weight_type: Literal["int8", "uint8"] = Field(default="int8", description="Element type of quantized weights.")
        activation_type: Literal["int8", "uint8"] = Field(
            default="uint8", description="static only: element type of quantized activations (uint8 activations "
            "with int8 weights is ONNX Runtime's recommended pairing on x86).")
        quant_format: Literal["qdq", "qoperator"] = Field(
            default="qdq", description="static only: 'qdq' inserts QuantizeLinear/DequantizeLinear pairs around "
            "float ops (portable, what TensorRT and most EPs expect); 'qoperator' uses integer operators "
            "(QLinearConv, QLinearMatMul).")
        calibrate_method: Literal["minmax", "entropy", "percentile"] = Field(
            default="minmax", description="static only: how activation ranges are chosen from the calibration "
            "data: observed min/max, KL-divergence (entropy) or the 99.999th percentile (ignores outliers).")
        preprocess: bool = Field(
            default=True, description="Run ONNX Runtime's quantization pre-processing first (symbolic shape "
            "inference and graph optimization), as its documentation recommends; skipped with a note in the "
            "metrics if it fails on this model.")
        calibration_samples: Optional[int] = Field(
            default=None, ge=1, description="static only: use at most this many calibration samples (all when unset).")

    @classmethod
    def data_used(cls, options: "OnnxInt8FromOnnx.Options") -> tuple[str, ...]:  # type: ignore[override]
        return ("calibration",) if options.method == "static" else ()

    @classmethod
    def check_config(cls, model: "Model", options: "OnnxInt8FromOnnx.Options",  # type: ignore[override]
                     root: Path) -> str | None:
        if options.method == "static" and model.data.calibration is None:
            return ("method 'static' needs calibration data: add data.calibration to the model "
                    "(an .npz of representative inputs)")
        return None

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from buildsys.formats.onnx.export import finish, load, save, uses_external_data

        opts = ctx.options
        src = Path(str(ctx.input_path))
        external = uses_external_data(src)
        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        metrics: dict[str, Any] = {"method": opts.method}
        # Intermediate files live in a hidden folder of out_dir that is gone before the step returns.
        with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".work-") as work:
            model_in = src
            if opts.preprocess:
                model_in, note = _preprocess(src, Path(work))
                if note:
                    metrics["preprocess"] = note
            quantized = Path(work) / "quantized.onnx"
            try:
                if opts.method == "static":
                    self._static(ctx, opts, model_in, quantized, types, external)
                else:
                    quantize_dynamic(str(model_in), str(quantized), per_channel=opts.per_channel,
                                     weight_type=types[opts.weight_type], use_external_data_format=external)
            except ModelbuildError:
                raise
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise self.fail(ctx, f"{opts.method} int8 quantization failed: {type(exc).__name__}: {first}") from exc
            proto = load(quantized)
        path = save(proto, ctx.out_dir, external=external)
        metrics.update(finish(self, ctx, path))
        counts: dict[str, int] = {}
        for node in proto.graph.node:
            op = node.op_type
            if "quantize" in op.lower() or op.endswith("Integer") or op.startswith("QLinear"):
                counts[op] = counts.get(op, 0) + 1
        metrics["quantized_ops"] = counts
        return metrics

    def _static(self, ctx: StepContext[Options], opts: Options, model_in: Path, out: Path, types: dict[str, Any],
                external: bool) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

        batch = ctx.data("calibration")
        if batch is None:
            raise self.fail(ctx, "method 'static' needs calibration data: add data.calibration to the model "
                                 "(an .npz of representative inputs)")
        if opts.calibration_samples is not None:
            batch.inputs = {k: v[: opts.calibration_samples] for k, v in batch.inputs.items()}
        quantize_static(
            str(model_in), str(out), _reader(batch, model_in),
            quant_format={"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[opts.quant_format],
            per_channel=opts.per_channel, weight_type=types[opts.weight_type],
            activation_type=types[opts.activation_type],
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[opts.calibrate_method],
            use_external_data_format=external,
        )


def _preprocess(src: Path, work: Path) -> tuple[Path, str]:
    """quant_pre_process into `work`; on failure the original model and a note saying why."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(out))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return src, f"skipped: {type(exc).__name__}: {first}"[:300]
    return out, ""


def _reader(batch: "Batch", model_path: Path) -> Any:
    """A CalibrationDataReader over the model's own calibration set (never downloaded data)."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    proto = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in inits]
    names = [i.name for i in graph_inputs]
    fixed_one = any(i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_value == 1
                    for i in graph_inputs)
    chunk = 1 if fixed_one else 32

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            feeds = next(self._chunks, None)
            return None if feeds is None else {k: v for k, v in feeds.items() if k in names}

        def rewind(self) -> None:
            self._chunks = batch.chunks(chunk)

    return Reader()
