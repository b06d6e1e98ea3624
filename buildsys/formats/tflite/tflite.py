"""The TFLite formats: fp32, fp16 weights and int8 (dynamic range or full integer), from the SavedModel.

tf.lite.TFLiteConverter does the work; onnx2tf's own .tflite outputs are not used because its int8
mode downloads calibration images. Full int8 calibrates on the model's own calibration set, moved to
the artifact's layout (layout.json, which every .tflite carries next to it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Union

from pydantic import Field, model_validator

from buildsys.formats import register, register_formats, register_variants
from buildsys.formats.base import TENSORFLOW_IMPORT_PROBES, Format, SearchingOptions, Step, StepContext, StepOptions
from buildsys.formats.keep_float import searched
from buildsys.formats.prune_search import PruningOptions, PruningStep
from buildsys.lowering import Answer, Symptom

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

_LAYOUT_NOTE = " Inputs are channels last unless the SavedModel kept the source layout (see layout.json)."
TFLITE = register_formats(Format.variants(
    "tflite", {
        "fp32": "TensorFlow Lite flatbuffer, float32, run with the LiteRT interpreter." + _LAYOUT_NOTE,
        "fp16": "TensorFlow Lite with float16 weights (half the size; float32 I/O, GPU delegates compute in "
                "fp16)." + _LAYOUT_NOTE,
        "int8": "TensorFlow Lite with int8 weights: dynamic range, or full integer calibrated on the model's "
                "calibration set (float or int8 I/O)." + _LAYOUT_NOTE,
    }, filename="model.tflite", runtime="litert", layout="channels_last"))
FLATBUFFER = TFLITE["fp32"].filename

SELECT_TF_OPS = Field(
    default=False, description="Allow TensorFlow ops that TFLite has no builtin for (the Flex delegate: the app "
    "must link tensorflow-lite-select-tf-ops, several MB). False makes such ops a build error naming them.")


class TfliteOptions(StepOptions):
    """Options every TFLite step shares."""

    select_tf_ops: bool = SELECT_TF_OPS


class _FromSavedModel(Step):
    """Shared body: convert the upstream SavedModel, write model.tflite and carry layout.json along."""

    consumes = ("saved_model",)
    #: The recurrent loop onnx2tf made holds TensorList ops the converter cannot lower (a Conv1d+GRU model): onnx2tf
    #: unrolls it instead (an option of the SavedModel stop), or litert-torch lowers the torch.export program.
    symptoms = (
        Symptom((r"TensorList\w+",), Answer.of(
            "onnx2tf rnn-unroll", {"enable_rnn_unroll": True}, at="saved_model", why="TFLite cannot lower the "
            "TensorList ops of the loop onnx2tf made of a recurrent layer; onnx2tf unrolls it over the static length")),
        Symptom((r"TensorList\w+",), Answer.of(
            "litert-torch", via=("pt2",), why="litert-torch lowers the recurrent layer from the torch.export program, "
            "without TensorFlow's loop")),
    )
    packages = ("tensorflow", "ai-edge-litert")
    extra = "tflite"
    toolchain = "tf"
    probed_imports = TENSORFLOW_IMPORT_PROBES

    def _configure(self, ctx: StepContext[TfliteOptions], converter: Any, layout: dict[str, Any] | None) -> dict[str, Any]:
        """Set precision-specific converter fields; returns metrics to report."""
        return {}

    def _inspect(self, ctx: StepContext[TfliteOptions], flatbuffer: bytes) -> None:
        """Refuse a flatbuffer that converted but cannot be right (see the int8 step)."""

    def _run(self, ctx: StepContext[TfliteOptions]) -> dict[str, Any]:
        import tensorflow as tf

        from buildsys.formats.tflite.layout import SIGNATURE, copy_layout

        opts = ctx.options
        src = Path(str(ctx.input_path))
        layout = copy_layout(src.parent, ctx.out_dir)
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(src), signature_keys=[SIGNATURE])
        except Exception as exc:
            raise self.fail(ctx, f"TFLiteConverter could not read the SavedModel: {type(exc).__name__}: "
                                 f"{_first_line(exc)}") from exc
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if opts.select_tf_ops:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter.target_spec.supported_ops = ops
        metrics = self._configure(ctx, converter, layout)
        try:
            flatbuffer = converter.convert()
        except Exception as exc:
            raise self.fail(ctx, conversion_failure(exc)) from exc
        self._inspect(ctx, flatbuffer)
        path = ctx.out_dir / FLATBUFFER
        path.write_bytes(flatbuffer)
        return {**metrics, "bytes": len(flatbuffer), "select_tf_ops": opts.select_tf_ops,
                "tensor_dtypes": tensor_dtypes(flatbuffer)}


class TfliteFloatOptions(TfliteOptions, PruningOptions):
    """The float TFLite formats' options: TFLite's, and post-training pruning (`sparsity`)."""


@register_variants({"fp32": "saved_model", "fp16": "saved_model"})
class TfliteFromSavedModel(PruningStep, _FromSavedModel):
    """Convert the SavedModel to a TFLite flatbuffer with float32 (fp32) or float16 (fp16) weights.

    float16 weights are dequantized to float32 on the CPU and kept in fp16 by GPU delegates. With `sparsity`,
    the weights are pruned by magnitude and stored sparse where TFLite does (buildsys/formats/tflite/prune.py)."""

    produces = "tflite"
    description = "tf.lite.TFLiteConverter.from_saved_model: float32, or Optimize.DEFAULT with supported_types " \
                  "[float16] for fp16; with sparsity, magnitude pruning and the EXPERIMENTAL_SPARSITY encoding."
    Options = TfliteFloatOptions
    version = 2  # 2: an fp16 flatbuffer's share of weights in float16 (quantized_weights), judged by its floor
    committed_metrics = (*PruningStep.committed_metrics, "quantized_weights")

    def _run(self, ctx: StepContext[TfliteFloatOptions]) -> dict[str, Any]:  # type: ignore[override]
        metrics = super()._run(ctx)  # type: ignore[arg-type]  # its own Options, a TfliteOptions
        path = ctx.out_dir / FLATBUFFER
        if ctx.options.sparsity is not None:
            from buildsys.formats.tflite.prune import prune_output

            metrics = {**metrics, **prune_output(self, ctx, path), "tensor_dtypes": tensor_dtypes(path.read_bytes())}
        if self.precision == "fp16":  # the converter keeps some weights float32 (ops with no float16 path)
            from buildsys.formats.tflite.weights import measure

            metrics["quantized_weights"] = measure(path, self.precision)
        return metrics

    def _configure(self, ctx: StepContext, converter: Any, layout: dict[str, Any] | None) -> dict[str, Any]:
        if self.precision == "fp32":
            return {}
        import tensorflow as tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        return {"weights": "float16"}


@register
class TfliteInt8FromSavedModel(_FromSavedModel):
    """Quantize the SavedModel to int8 TFLite: dynamic range (weights) or full integer (calibrated)."""

    name = "tflite-int8-from-saved-model"
    produces = "tflite-int8"
    precision = "int8"
    _peak = 0.0  # largest |value| in the calibration data, to explain an unusable range
    description = "TFLiteConverter with Optimize.DEFAULT; full int8 adds a representative dataset built from " \
                  "the model's calibration set in the artifact's layout."
    # 2: keep_float and weight-only (ai-edge-quantizer), the `scheme` fact; a SavedModel of a QAT model's QDQ
    # graph is refused (re-calibrating would lose its scales); 3: the share of weights in int8 measured on the
    # flatbuffer (quantized_weights)
    version = 3
    #: Full int8 is tried first; int8 weights with float activations are the fallback route for
    #: models whose activations do not survive int8 (recurrent state, flat classifier logits).
    alternatives = {"dynamic": {"mode": "dynamic"}}
    #: Accuracy repair (docs/repair.md), tried in this order after a route's int8 check misses; a recipe
    #: may change a mode a platform preset chose (not one the user wrote). `dynamic` is skipped where
    #: the route's `dynamic` alternative is a candidate already.
    repairs = {"keep-float": {"keep_float": "sensitive"}, "dynamic": {"mode": "dynamic"},
               "weight-only": {"mode": "weight-only"}}
    scheme_repairs = ("dynamic", "weight-only")  # float activations: after the other full-int8 routes
    committed_metrics = ("repair", "scheme", "quantized_weights")

    class Options(TfliteOptions, SearchingOptions):
        mode: Literal["full", "dynamic", "weight-only"] = Field(
            default="full", description="'full': weights and activations int8, activation ranges calibrated on "
            "data.calibration (what NPUs, DSPs and the Edge TPU need; fastest on CPU). 'dynamic': int8 weights "
            "only, activations quantized on the fly per call (no data needed, less speed-up). 'weight-only': "
            "int8 weights dequantized to float at load, float activations and compute (ai-edge-quantizer on "
            "the float file; the size of int8, the accuracy of float; the repair recipe `weight-only`).")
        keep_float: Union[Literal["sensitive"], tuple[str, ...]] = Field(
            default=(), description="full only: ops left in float, named by ai-edge-quantizer scope (their output "
            "tensor names, ';'-joined with a trailing ';'); the float file is then quantized by ai-edge-quantizer "
            "(static int8; `io` says the element type of inputs and outputs). 'sensitive': measure each op's int8 "
            "cost on the calibration set and keep the fewest most sensitive in float that meet the target's "
            "tolerance (docs/repair.md); bounded, its result recorded in deploy.lock. Usually set by accuracy "
            "repair; a list pins the ops.")
        io: Literal["float", "int8"] = Field(
            default="float", description="full only: element type of the model's inputs and outputs. 'int8' "
            "removes the float↔int8 conversions at the edges (the app quantizes with the input's scale and "
            "zero point); 'float' keeps float32 I/O.")
        calibration_samples: int | None = Field(
            default=None, ge=1, description="full only: calibrate on at most this many samples (all when unset).")

        @model_validator(mode="after")
        def _io_needs_full(self) -> "TfliteInt8FromSavedModel.Options":
            if self.io == "int8" and self.mode != "full":
                raise ValueError("io: int8 needs mode: full (dynamic range keeps float inputs and outputs)")
            if self.keep_float and self.mode != "full":
                raise ValueError("keep_float needs mode: full (the other schemes keep activations float already)")
            return self


    @classmethod
    def data_used(cls, options: "TfliteInt8FromSavedModel.Options") -> tuple[str, ...]:  # type: ignore[override]
        return tuple(dict.fromkeys((("calibration",) if options.mode == "full" else ()) + searched(options)))

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.planning.repair import describe

        scheme = [f"int8 scheme: {facts['scheme']}"] if facts.get("scheme") else []
        return [*scheme, *describe(facts.get("repair"))]

    @classmethod
    def check_config(cls, model: "Model", options: "TfliteInt8FromSavedModel.Options",  # type: ignore[override]
                     root: Path) -> str | None:
        if options.mode != "full":
            return None
        if model.data.calibration is None:
            return ("full int8 needs calibration data: add data.calibration to the model (an .npz of "
                    "representative inputs named after them), or set mode: dynamic for int8 weights only")
        floats = [i.name for i in model.inputs if i.dtype.startswith("float")]
        if options.io == "int8" and len(floats) != len(model.inputs):
            others = ", ".join(i.name for i in model.inputs if i.name not in floats)
            return f"io: int8 needs float inputs to quantize, but {others} is not float; use io: float"
        return None

    # ctx.options is built from this step's own Options (a TfliteOptions subclass): narrower than the base says
    def _configure(self, ctx: StepContext[Options], converter: Any,  # type: ignore[override]
                   layout: dict[str, Any] | None) -> dict[str, Any]:
        import tensorflow as tf

        from buildsys.formats.tflite.aeq import uses_aeq

        opts = ctx.options
        if layout and layout.get("quantized_source"):
            raise self.fail(ctx, "the SavedModel comes from an ONNX graph that already carries quantize/dequantize "
                                 "with learned scales (a quantization-aware-trained model): the TFLite converter "
                                 "would re-quantize it from the calibration set and lose them; the litert-torch "
                                 "route (via: [pt2]) lowers them as they are")
        if uses_aeq(opts):
            return {}  # float: ai-edge-quantizer quantizes the file in _run
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if opts.mode == "dynamic":
            return {"mode": "dynamic"}
        samples = self._calibration(ctx, layout)
        converter.representative_dataset = samples
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if opts.select_tf_ops:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter.target_spec.supported_ops = ops
        if opts.io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return {"mode": "full", "io": opts.io, "calibration_samples": samples.count}

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:  # type: ignore[override]  # as _configure
        from buildsys.formats.tflite.aeq import requantize, scheme, uses_aeq
        from buildsys.formats.tflite.layout import read_layout

        metrics = super()._run(ctx)  # type: ignore[arg-type]  # its own Options, a TfliteOptions
        if uses_aeq(ctx.options):
            path = ctx.out_dir / FLATBUFFER
            layout = read_layout(ctx.out_dir)
            samples = list(self._calibration(ctx, layout)()) if ctx.options.mode == "full" else None
            requantize(self, ctx, path, samples, layout, metrics)
            flatbuffer = path.read_bytes()
            metrics.update(bytes=len(flatbuffer), tensor_dtypes=tensor_dtypes(flatbuffer))
        from buildsys.formats.quantized_weights import kept_float
        from buildsys.formats.tflite.weights import measure

        return {**metrics, "scheme": scheme(ctx.options),
                "quantized_weights": measure(ctx.out_dir / FLATBUFFER, self.precision, kept_float(metrics, ctx.options))}

    def _inspect(self, ctx: StepContext[Options], flatbuffer: bytes) -> None:  # type: ignore[override]  # as _configure
        # A calibrated range of ±3.4e38 (a float32-minimum padding constant, or an inf in the data)
        # leaves every value in that tensor, and after it, quantized to one level: fail, saying why.
        if ctx.options.mode != "full":
            return
        huge = [(name, scale) for name, scale in _scales(flatbuffer) if scale > 1e10]
        if huge:
            name, scale = next((h for h in huge if "pad" in h[0].lower()), huge[0])
            if self._peak > 1e10:
                hint = f"the calibration data holds values up to {self._peak:.3g}: fix or drop those samples"
            else:
                hint = ("a constant at the float32 limit in the graph (e.g. a -3.4e38 padding value) reaches "
                        "the activations; mode: dynamic avoids activation calibration")
            raise self.fail(ctx, f"full int8 calibration produced an unusable range in {len(huge)} tensor(s), "
                                 f"e.g. '{name[:80]}' (scale {scale:.3g}); {hint}")

    def _calibration(self, ctx: StepContext[Options], layout: dict[str, Any] | None) -> "Representative":
        """The calibration set checked against the signature and moved to the artifact's layout."""
        import numpy as np

        from buildsys.config.data import shape_problem

        opts = ctx.options
        try:
            batch = ctx.data("calibration")
        except Exception as exc:
            raise self.fail(ctx, f"the calibration data could not be loaded: {type(exc).__name__}: "
                                 f"{_first_line(exc)}") from exc
        if batch is None or len(batch) == 0:
            raise self.fail(ctx, "full int8 needs calibration data: add data.calibration to the model, or set "
                                 "mode: dynamic")
        for inp in ctx.model.inputs:
            problem = shape_problem(inp, tuple(batch.inputs[inp.name].shape))
            if problem:
                raise self.fail(ctx, f"{batch.origin}: {problem}")
        records = {i["name"]: i for i in (layout or {}).get("inputs", [])}
        feeds = []
        for inp in ctx.model.inputs:
            record = records.get(inp.name, {})
            perm = record.get("perm", list(range(len(inp.shape))))
            fixed = record.get("shape", [None])[0]
            feeds.append((record.get("key", inp.name), perm, fixed if isinstance(fixed, int) else 1))
        arrays = {k: v[: opts.calibration_samples] for k, v in batch.inputs.items()}
        self._peak = max((float(np.nanmax(np.abs(v))) for v in arrays.values() if v.dtype.kind == "f" and v.size),
                         default=0.0)
        return Representative(arrays, [(inp.name, *feed) for inp, feed in zip(ctx.model.inputs, feeds)])


class Representative:
    """A re-iterable representative dataset: dicts keyed by signature input, in the artifact's layout."""

    def __init__(self, arrays: dict[str, "np.ndarray"], feeds: list[tuple[str, str, list[int], int]]) -> None:
        self.arrays = arrays
        self.feeds = feeds  # (input name, signature key, perm, samples per call)
        self.count = len(next(iter(arrays.values())))

    def __call__(self) -> Iterator[dict[str, "np.ndarray"]]:
        import numpy as np

        from buildsys.formats.tflite.layout import to_artifact

        step = max(f[3] for f in self.feeds)
        for start in range(0, self.count - step + 1, step):
            sample = {}
            for name, key, perm, _ in self.feeds:
                chunk = self.arrays[name][start : start + step]
                sample[key] = to_artifact(chunk.astype(np.float32) if chunk.dtype.kind == "f" else chunk, perm)
            yield sample


def _scales(flatbuffer: bytes) -> list[tuple[str, float]]:
    """(tensor name, largest quantization scale) for every quantized tensor of a flatbuffer."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        details = Interpreter(model_content=flatbuffer).get_tensor_details()
    except Exception:
        return []
    out = []
    for d in details:
        scales = d.get("quantization_parameters", {}).get("scales")
        if scales is not None and len(scales):
            out.append((d["name"], float(max(scales))))
    return out


def tensor_dtypes(flatbuffer: bytes) -> dict[str, int]:
    """Count of the flatbuffer's tensors per element type: shows what quantization really did.

    Dynamic-range int8 leaves weights under 1024 elements in float32 (a TFLite rule), so a small
    model can come out with no int8 tensor at all; this makes that visible in the metrics.
    """
    counts: dict[str, int] = {}
    try:
        from ai_edge_litert.interpreter import Interpreter

        details = Interpreter(model_content=flatbuffer).get_tensor_details()
    except Exception:  # Flex ops or a missing LiteRT: the metric is optional
        return counts
    for d in details:
        name = getattr(d["dtype"], "__name__", str(d["dtype"]))
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def conversion_failure(exc: BaseException) -> str:
    """One line saying why TFLiteConverter failed, naming the ops it could not lower when it says so."""
    import re

    text = str(exc)
    flex = sorted(set(re.findall(r"\btf\.(\w+)\(", text)))
    if "not supported by the native TFLite runtime" in text or ("select tf ops" in text.lower() and flex):
        names = ", ".join(flex) or "see the node's log"
        return (f"TFLite has no builtin kernel for the TensorFlow op(s) {names}; rewrite that part of the "
                "model, or set select_tf_ops: true (needs the Flex delegate in the app)")
    failed = re.findall(r"'(tfl?\.\w+)' op", text)
    if failed:
        return f"TFLiteConverter failed on op(s) {', '.join(sorted(set(failed)))}: {_first_line(exc)[:300]}"
    return f"TFLiteConverter failed: {type(exc).__name__}: {_first_line(exc)[:300]}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""

