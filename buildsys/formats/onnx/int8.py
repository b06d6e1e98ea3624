"""The onnx-int8 format: ONNX Runtime post-training quantization, dynamic or static (calibrated)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, SearchingOptions, Step, StepContext
from buildsys.formats.hidden_imports import hidden
from buildsys.formats.onnx.optimized import FLOAT_ONNX
from buildsys.formats.keep_float import searched, sensitive_help

if TYPE_CHECKING:
    from buildsys.config.schema import Model
    from buildsys.config.data import Batch

ONNX_INT8 = register_format(Format(
    name="onnx-int8", family="onnx", precision="int8", filename="model.onnx", runtime="onnxruntime",
    description="ONNX model quantized to 8-bit integers by ONNX Runtime (about 4x smaller weights).",
))


@register
class OnnxInt8FromOnnx(Step):
    """Quantize an ONNX model to int8: dynamic (weights only, activations at run time) or static (calibrated)."""

    name = "onnx-int8-from-onnx"
    version = 5  # 2: an input that already carries QDQ (a QAT model) is kept, not quantized again; 3: the share of
    # weights in int8 measured on the file (quantized_weights); 4: transposed initializers folded before quantizing;
    # 5: a kept QDQ's full-range int8 weights stored as uint8 (weights.unsigned_weights)
    consumes = FLOAT_ONNX
    produces = "onnx-int8"
    precision = "int8"
    packages = ("onnxruntime", "onnx")
    toolchain = "onnx"
    description = "onnxruntime.quantization quantize_dynamic / quantize_static."
    #: Accuracy repair (docs/repair.md): tried in this order after a route's int8 check misses.
    repairs = {"keep-float": {"keep_float": "sensitive"}, "per-channel": {"per_channel": True},
               "entropy": {"method": "static", "calibrate_method": "entropy"}}
    committed_metrics = ("repair", "method", "quantized_weights")  # method: its activations' scheme
    keeps_learned = ("pt2e", "eager")  # QDQ with learned scales in its input is kept (buildsys.formats.torch.qat)

    class Options(SearchingOptions):
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
        reduce_range: Optional[bool] = Field(
            default=None, description="Quantize weights to 7 bits. ONNX Runtime's x86 kernels for uint8 "
            "activations x int8 weights saturate on CPUs without VNNI (AVX2-only, e.g. AMD EPYC before Zen 4): "
            "the example's digits CNN falls to cosine 0.78 there with 8-bit weights, 0.9996 with 7. Default: on "
            "for 'static' (its fused QLinear kernels are the ones that saturate), off for 'dynamic'.")

        keep_float: Union[Literal["sensitive"], tuple[str, ...]] = Field(
            default=(), description="Nodes (by ONNX node name) left in float, their inputs unquantized "
            f"(ONNX Runtime's nodes_to_exclude). {sensitive_help('layer')} Usually set by accuracy repair, not by "
            "hand; a list pins the layers.")


    @classmethod
    def data_used(cls, options: "OnnxInt8FromOnnx.Options") -> tuple[str, ...]:  # type: ignore[override]
        return tuple(dict.fromkeys((("calibration",) if options.method == "static" else ()) + searched(options)))

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.planning.repair import describe

        return describe(facts.get("repair"))

    @classmethod
    def check_config(cls, model: "Model", options: "OnnxInt8FromOnnx.Options",  # type: ignore[override]
                     root: Path) -> str | None:
        if (options.method == "static" or options.keep_float == "sensitive") and model.data.calibration is None:
            which = "method 'static'" if options.method == "static" else "keep_float 'sensitive'"
            return (f"{which} needs calibration data: add data.calibration to the model "
                    "(an .npz of representative inputs)")
        return None

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from buildsys.formats.keep_float import pinned, quantizer_failures
        from buildsys.formats.onnx.sensitivity import search
        from buildsys.formats.onnx.onnxfile import (MODEL_FILE, finish, load, readable_copy, save,
                                                    transposed_weights_folded, uses_external_data)
        from buildsys.formats.onnx.weights import measure
        from buildsys.formats.quantized_weights import kept_float

        opts = ctx.options
        src = Path(str(ctx.input_path))
        external = uses_external_data(src)
        from buildsys.formats.torch.qat import KEPT, onnx_qdq

        already = onnx_qdq(src)  # QDQ with learned scales (a QAT model, buildsys.formats.torch.qat): kept, never re-calibrated
        if already:
            from buildsys.formats.onnx.weights import unsigned_weights

            proto = load(src)
            unsigned = unsigned_weights(proto)  # the same values, in kernels that cannot saturate without VNNI
            carried = {**finish(self, ctx, save(proto, ctx.out_dir, external=external)), "method": "qat",
                       "calibration_samples": 0, "quantized_ops": already, "qat": KEPT, "unsigned_weights": unsigned}
            return {**carried, "quantized_weights": measure(ctx.out_dir / MODEL_FILE, self.precision)}
        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        reduce_range = opts.reduce_range if opts.reduce_range is not None else opts.method == "static"
        metrics: dict[str, Any] = {"method": opts.method, "reduce_range": reduce_range}
        # Intermediate files live in a hidden folder of out_dir that is gone before the step returns.
        with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".work-") as work:
            model_in = src
            if opts.preprocess:
                model_in, note = _preprocess(src, Path(work), external)
                if note:
                    metrics["preprocess"] = note
            if model_in == src:
                model_in = readable_copy(src, Path(work) / "in")
            model_in = _without_initializer_shapes(model_in, Path(work) / "clean", private=model_in != src)
            model_in = transposed_weights_folded(model_in, Path(work) / "unshared", private=model_in != src)
            # With external data the quantizer writes its side file as <output name>.data: straight
            # into out_dir that is model.onnx.data, and the weights are never loaded a second time.
            quantized = ctx.out_dir / MODEL_FILE if external else Path(work) / "quantized.onnx"

            def quantize(keep_float: list[str], only: list[str] | None, out: Path) -> None:
                if opts.method == "static":
                    self._static(ctx, opts, model_in, out, types, external, reduce_range, keep_float, only)
                    return
                with _lean_quantizer(external):
                    quantize_dynamic(str(model_in), str(out), per_channel=opts.per_channel, reduce_range=reduce_range,
                                     weight_type=types[opts.weight_type], use_external_data_format=external,
                                     nodes_to_exclude=keep_float, nodes_to_quantize=only or [])

            with quantizer_failures(self, ctx, f"{opts.method} int8 quantization failed"):
                if opts.keep_float == "sensitive":
                    metrics.update(search(self, ctx, quantize, model_in, quantized, Path(work) / "search"))
                else:
                    quantize(list(opts.keep_float), None, quantized)
                    if opts.keep_float:
                        metrics["repair"] = pinned(opts.keep_float, "int8")
            if external:
                proto = onnx.load(str(quantized), load_external_data=False)
                path = quantized
            else:
                proto = load(quantized)
                path = save(proto, ctx.out_dir, external=False)
        metrics.update(finish(self, ctx, path))
        counts: dict[str, int] = {}
        for node in proto.graph.node:
            op = node.op_type
            if "quantize" in op.lower() or op.endswith("Integer") or op.startswith("QLinear"):
                counts[op] = counts.get(op, 0) + 1
        metrics["quantized_ops"] = counts
        metrics["quantized_weights"] = measure(ctx.out_dir / MODEL_FILE, self.precision, kept_float(metrics, opts))
        return metrics

    def _static(self, ctx: StepContext[Options], opts: Options, model_in: Path, out: Path, types: dict[str, Any],
                external: bool, reduce_range: bool, keep_float: list[str], only: list[str] | None) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

        batch = ctx.data("calibration")
        if batch is None:
            raise self.fail(ctx, "method 'static' needs calibration data: add data.calibration to the model "
                                 "(an .npz of representative inputs)")
        if opts.calibration_samples is not None:
            batch.inputs = {k: v[: opts.calibration_samples] for k, v in batch.inputs.items()}
        quantize_static(
            str(model_in), str(out), calibration_reader(batch, model_in),
            quant_format={"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[opts.quant_format],
            per_channel=opts.per_channel, reduce_range=reduce_range,
            weight_type=types[opts.weight_type],
            activation_type=types[opts.activation_type],
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[opts.calibrate_method],
            use_external_data_format=external, nodes_to_exclude=keep_float, nodes_to_quantize=only or [],
        )


def _preprocess(src: Path, work: Path, external: bool) -> tuple[Path, str]:
    """quant_pre_process into `work`; on failure the original model and a note saying why."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    try:
        if external:
            return _preprocess_by_path(src, work), "by path (external data): basic optimization and ONNX shape inference"
        # its symbolic shape inference imports onnxruntime.tools, whose __init__ imports torch for an export
        # helper it never calls: 1.9 s of an ONNX worker's first int8 step (hidden_imports.py)
        with hidden(("torch",)):
            quant_pre_process(str(src), str(out))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return src, f"skipped: {type(exc).__name__}: {first}"[:300]
    return out, ""


def _preprocess_by_path(src: Path, work: Path) -> Path:
    """quant_pre_process's steps for a model with external data, each reading and writing files.

    quant_pre_process loads the whole model before it optimizes from the file, and its symbolic
    shape inference copies the model in memory and cannot pass protobuf's 2 GB: here ONNX Runtime's
    basic optimization writes its own side file, and ONNX shape inference runs by path.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata

    optimized, out = work / "optimized.onnx", work / "preprocessed.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(optimized)
    so.log_severity_level = 3
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{optimized.name}.data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    so.add_session_config_entry("session.disable_prepacking", "1")  # the session only writes the file
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    onnx.shape_inference.infer_shapes_path(str(optimized), str(out))  # same folder: the side file still resolves
    proto = onnx.load(str(out), load_external_data=False)
    add_pre_process_metadata(proto)
    _untranspose_gemm_weights(proto, work)
    onnx.save_model(proto, str(out))
    return out


def _untranspose_gemm_weights(proto: Any, work: Path) -> None:
    """Store each external Gemm(transB=1) weight transposed, and set transB=0.

    The quantizer turns Gemm into MatMul and, for transB=1, transposes the weight in memory: four
    transient float32 copies of the largest tensor beside the loaded model. Done here, one tensor
    is read at a time, its transpose appended to the (private) side file it came from.
    """
    import numpy as np
    from onnx import helper
    from onnx.external_data_helper import uses_external_data

    inits = {t.name: t for t in proto.graph.initializer}
    uses: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in proto.graph.node:
        attrs = {a.name: a for a in node.attribute}
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (weight is None or "transB" not in attrs or attrs["transB"].i != 1 or uses[weight.name] != 1
                or len(weight.dims) != 2 or not uses_external_data(weight)):
            continue
        info = {e.key: e.value for e in weight.external_data}
        rows, cols = weight.dims
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(weight.data_type))
        matrix = np.fromfile(work / info["location"], dtype=dtype, count=rows * cols,
                             offset=int(info.get("offset", 0))).reshape(rows, cols)
        with open(work / info["location"], "ab") as side:
            side.write(b"\0" * (-side.tell() % 4096))
            offset = side.tell()
            np.ascontiguousarray(matrix.T).tofile(side)
        del matrix, weight.external_data[:]
        for key, value in (("location", info["location"]), ("offset", offset), ("length", rows * cols * dtype.itemsize)):
            weight.external_data.add(key=key, value=str(value))
        weight.dims[:] = [cols, rows]
        attrs["transB"].i = 0


@contextmanager
def _lean_quantizer(active: bool) -> Iterator[None]:
    """While active, the dynamic quantizer keeps one copy of the weights (plus one tensor's work).

    Its `save_and_reload_model_with_shape_infer` deep-copies the model, saves it and loads it back
    (two more copies of every weight, for value_info that only the graph determines): here shapes
    are inferred on the graph alone, in place. Its `quantize_nparray` makes four float32
    temporaries the size of the tensor: here it runs on slices of 16M values (elementwise, so the
    same bytes).
    """
    from onnxruntime.quantization import base_quantizer, onnx_quantizer, quant_utils

    patches = [(onnx_quantizer, "save_and_reload_model_with_shape_infer", _infer_in_place)]
    patches += [(module, "quantize_nparray", _sliced(quant_utils.quantize_nparray))
                for module in (quant_utils, base_quantizer)]
    originals = [(module, name, getattr(module, name, None)) for module, name, _ in patches]
    if not active or any(original is None for *_, original in originals):
        yield
        return
    for module, name, replacement in patches:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def _sliced(quantize: Any, step: int = 1 << 24) -> Any:
    def sliced(q_type: int, arr: Any, scale: Any, zero_point: Any, low: Any = None, high: Any = None) -> Any:
        import numpy as np

        if arr.size <= step or np.size(scale) != 1 or np.size(zero_point) != 1:
            return quantize(q_type, arr, scale, zero_point, low, high)
        flat = arr.reshape(-1)
        parts = [quantize(q_type, flat[i:i + step], scale, zero_point, low, high) for i in range(0, flat.size, step)]
        return np.concatenate(parts).reshape(arr.shape)

    return sliced


def _infer_in_place(model: Any) -> Any:
    """`model` with value_info inferred from a weightless copy of its graph (initializers as dims)."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    skeleton = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions)
    graph = skeleton.graph
    for field in ("node", "input", "output", "value_info"):
        getattr(graph, field).extend(getattr(model.graph, field))
    for t in model.graph.initializer:
        graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    add_infer_metadata(model)
    return model


def _without_initializer_shapes(path: Path, work: Path, private: bool) -> Path:
    """The model without value_info entries for its initializers (the dynamo exporter writes them).

    The quantizer turns Gemm(transB=1) into MatMul with a transposed weight and then re-runs shape
    inference, which fails on the weight's stale shape ("Inferred shape and existing shape differ").
    Only the graph is rewritten: a side file is referenced, never loaded. `private`: `path` is this
    step's own file and may be rewritten in place.
    """
    import onnx

    from buildsys.formats.onnx.onnxfile import MODEL_FILE, readable_copy

    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    keep = [v for v in proto.graph.value_info if v.name not in inits]
    if len(keep) == len(proto.graph.value_info):
        return path
    if not private:
        copy = readable_copy(path, work, force=True)
        path = copy if copy != path else work / MODEL_FILE  # no side file: a new file in work
        work.mkdir(parents=True, exist_ok=True)
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    onnx.save_model(proto, str(path))  # external tensors keep their references to the side file
    return path


def calibration_reader(batch: "Batch", model_path: Path) -> Any:
    """A CalibrationDataReader over the model's own calibration set (never downloaded data), in chunks of 32,
    or of 1 for a graph whose batch axis is fixed to 1 (TensorRT's QDQ step reads it too)."""
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
