"""The openvino-int8 format: NNCF post-training int8 quantization of an OpenVINO IR.

Plain mode calibrates activation ranges on the model's calibration set (`nncf.quantize`). With
`max_accuracy_drop` it runs NNCF's accuracy-aware mode (`nncf.quantize_with_accuracy_control`):
after quantizing, it measures top-1 accuracy of the first output on the labelled validation set
and reverts the layers that cost most back to float until the drop is within the budget.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from buildsys.formats import register
from buildsys.formats.base import SearchingOptions, Step, StepContext, StepOptions
from buildsys.formats.openvino.ir import XML, cpu_config, telemetry_off
from buildsys.storage.keys import HostBinding
from buildsys.formats.keep_float import searched, sensitive_help

if TYPE_CHECKING:
    from buildsys.config.schema import Model
    from buildsys.config.data import Batch

#: The committed `scheme` fact of a weight-only IR, in words (a static IR has none: its lock entry is unchanged).
WEIGHT_ONLY = "weight-only: int8 weights (NNCF weight compression), float activations and compute"
NEEDS_CALIBRATION = ("NNCF post-training quantization needs calibration data: add data.calibration to the model "
                     "(an .npz of representative inputs)")


@register
class OpenVinoInt8FromOpenVino(Step):
    """Quantize a float32 OpenVINO IR to int8 with NNCF, calibrated on the model's calibration set."""

    name = "openvino-int8-from-openvino"
    version = 5  # 2: an IR that already holds FakeQuantize (a QAT model) is kept, not re-quantized;
                 # 3: keep_float 'sensitive' (the one keep-float search, NNCF's ignored_scope); 4: the share of
                 # weights in int8 measured on the IR (quantized_weights); 5: the layers accuracy control
                 # reverted left out of that share (`scheme: weight-only` is new and keyed only where set)
    consumes = ("openvino",)
    produces = "openvino-int8"  # registered with its fp32/fp16 siblings in convert.py
    precision = "int8"
    packages = ("openvino", "nncf")
    extra = "openvino"
    toolchain = "openvino"
    description = "nncf.quantize (or nncf.quantize_with_accuracy_control) of the float32 IR."
    #: Accuracy repair (docs/repair.md): tried in this order after a route's int8 check misses.
    #: 8-bit-weights: NNCF's own overflow fix (first layer only) instead of 7-bit weights everywhere, TFLite's
    #: weight grid (benchmarks/int8_quantizers.py: 14-25 % less range error); the verdict is keyed by the CPU class.
    #: weight-only: NNCF's int8 weight compression with float activations, the last resort as TFLite's
    #: dynamic and weight-only and ExecuTorch's dynamic are (an activation int8 cannot hold is left float).
    repairs = {"transformer": {"model_type": "transformer"}, "8-bit-weights": {"overflow_fix": False},
               "mixed": {"preset": "mixed"}, "keep-float": {"keep_float": "sensitive"},
               "weight-only": {"scheme": "weight-only"}}
    scheme_repairs = ("weight-only",)  # float activations: after the other routes to static int8
    committed_metrics = ("repair", "scheme", "quantized_weights")
    keeps_learned = ("pt2e", "eager")  # an IR holding FakeQuantize from a QAT model's QDQ ONNX is kept (buildsys.formats.torch.qat)

    class Options(SearchingOptions):
        scheme: Literal["static", "weight-only"] = Field(
            default="static", description="'static': int8 weights and activations, activation ranges calibrated "
            "on data.calibration (nncf.quantize). 'weight-only': int8 weights, float activations "
            "(nncf.compress_weights, INT8_ASYM: per-channel weights of every MatMul, convolution and embedding, "
            "widened by the CPU plugin as it runs; no calibration). Tried by accuracy repair last.")
        preset: Literal["performance", "mixed"] = Field(
            default="performance", description="'performance': symmetric int8 weights and activations (fastest "
            "on CPU). 'mixed': asymmetric activations (better for activations that are not centred on zero, "
            "e.g. after non-ReLU nonlinearities).")
        overflow_fix: bool = Field(
            default=True, description="7-bit weights in every layer (NNCF's overflow fix): avoids the saturation of "
            "int8 kernels on x86 CPUs without VNNI (AVX2-only); false applies it to the first layer only, "
            "NNCF's default.")
        fast_bias_correction: bool = Field(
            default=True, description="NNCF's fast bias correction; false runs the slower full bias correction, "
            "sometimes more accurate.")
        calibration_samples: int | None = Field(
            default=None, ge=1, description="Use at most this many calibration samples (all when unset).")
        max_accuracy_drop: float | None = Field(
            default=None, ge=0, le=1, description="Accuracy-aware mode: the largest allowed absolute drop in top-1 "
            "accuracy of the first output (kind: scores) on the labelled validation set, against the float32 "
            "IR; NNCF reverts layers to float until it holds. Unset: plain post-training quantization.")
        model_type: Literal["default", "transformer"] = Field(
            default="default", description="'transformer': NNCF's transformer scheme (ModelType.TRANSFORMER: "
            "SmoothQuant moves activation outliers into the weights, and the ops that lose most in int8 in "
            "attention blocks stay float). Tried by accuracy repair after a missed check (docs/repair.md).")
        keep_float: Union[Literal["sensitive"], tuple[str, ...]] = Field(
            default=(), description="Operations of the IR (by friendly name) left in float (NNCF's ignored_scope "
            f"names; an unknown name is an error). {sensitive_help('operation')}")

        @model_serializer(mode="wrap")
        def _without_unset_repair(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
            data = handler(self)
            if isinstance(data, dict):  # keys of nodes without them stay what they were
                if data.get("model_type") == "default":
                    data.pop("model_type", None)
                if data.get("scheme") == "static":
                    data.pop("scheme", None)
                if not data.get("keep_float"):
                    data.pop("keep_float", None)
                if data.get("repair_goal") is None:
                    data.pop("repair_goal", None)
            return data

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        control = ("validation",) if getattr(options, "max_accuracy_drop", None) is not None else ()
        return tuple(dict.fromkeys(("calibration", *control, *searched(options))))

    @classmethod
    def host_binding(cls, options: dict[str, Any], data_sets: tuple[str, ...]) -> HostBinding:
        # Accuracy control runs the int8 model on this CPU's kernels and keeps layers in float where
        # they lose accuracy: without VNNI the CPU plugin's int8 kernels saturate, and a first
        # measurement reverted every layer of the test CNN.
        if options.get("max_accuracy_drop") is not None:
            return HostBinding.CPU_CLASS
        return super().host_binding(options, data_sets)

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.planning.repair import describe

        return describe(facts.get("repair"))

    @classmethod
    def check_config(cls, model: Model, options: StepOptions, root: Path) -> str | None:
        if model.data.calibration is None:
            return NEEDS_CALIBRATION
        if getattr(options, "max_accuracy_drop", None) is not None:
            return _labels_problem(model, root)
        return None

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        from buildsys.formats.keep_float import pinned, quantizer_failures
        from buildsys.formats.openvino.convert import save_ir
        from buildsys.formats.openvino.weights import measure
        from buildsys.formats.quantized_weights import kept_float

        opts: Any = ctx.options
        with telemetry_off():
            import nncf
            import openvino as ov

            core = ov.Core()
            model = core.read_model(str(ctx.input_path))
            learned = sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
            if learned:
                # The IR came from a QAT model's QDQ ONNX (buildsys.formats.torch.qat): its FakeQuantize ops hold the learned
                # scales, which the CPU plugin runs as int8. NNCF would re-calibrate them: it is kept instead.
                from buildsys.formats.torch.qat import KEPT

                return {**save_ir(self, ctx, model, fp16=False), "calibration_samples": 0, "preset": "qat", "qat": KEPT,
                        "quantized_weights": measure(ctx.out_dir / XML, self.precision)}
            batch = ctx.data("calibration")  # read only now: a QAT model's IR above needs none
            if batch is None:
                raise self.fail(ctx, NEEDS_CALIBRATION)
            samples = min(len(batch), opts.calibration_samples or len(batch))
            calibration = nncf.Dataset(list(_samples(batch, samples)))
            kwargs: dict[str, Any] = {
                "subset_size": samples, "fast_bias_correction": opts.fast_bias_correction,
                "preset": {"performance": nncf.QuantizationPreset.PERFORMANCE,
                           "mixed": nncf.QuantizationPreset.MIXED}[opts.preset]}
            if opts.model_type == "transformer":
                kwargs["model_type"] = nncf.ModelType.TRANSFORMER
            if opts.keep_float and opts.keep_float != "sensitive":
                kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(opts.keep_float))
            # 7-bit weights in every layer (NNCF's default fixes the first only): the CPU plugin's
            # uint8 x int8 kernels saturate on x86 CPUs without VNNI, as ONNX Runtime's do (onnx-int8's
            # reduce_range); accuracy-aware mode then reverted every layer of the test CNN on such a host.
            overflow = nncf.OverflowFix.ENABLE if opts.overflow_fix else nncf.OverflowFix.FIRST_LAYER
            advanced = nncf.AdvancedQuantizationParameters(overflow_fix=overflow)
            metrics: dict[str, Any] = {"calibration_samples": samples, "preset": opts.preset,
                                       "overflow_fix": opts.overflow_fix, "model_type": opts.model_type}
            with quantizer_failures(self, ctx, "NNCF int8 quantization failed"):
                if opts.scheme == "weight-only":
                    quantized = _compress_weights(nncf, model, kwargs.get("ignored_scope"))
                    metrics = {"scheme": WEIGHT_ONLY}
                elif opts.keep_float == "sensitive":
                    quantized = self._search(ctx, nncf, model, calibration, advanced, kwargs, metrics)
                elif opts.max_accuracy_drop is None:
                    quantized = nncf.quantize(model, calibration, advanced_parameters=advanced, **kwargs)
                else:
                    validation = self._validation(ctx)
                    quantized = nncf.quantize_with_accuracy_control(
                        model, calibration, nncf.Dataset(validation), _top1(ctx.model.outputs[0].name),
                        max_drop=opts.max_accuracy_drop, drop_type=nncf.DropType.ABSOLUTE,
                        advanced_quantization_parameters=advanced, **kwargs)
                    metric = _top1(ctx.model.outputs[0].name)
                    metrics["validation_accuracy"] = {
                        "fp32": round(metric(core.compile_model(model, "CPU", cpu_config()), validation)[0], 6),
                        "int8": round(metric(core.compile_model(quantized, "CPU", cpu_config()), validation)[0], 6)}
            if opts.keep_float and opts.keep_float != "sensitive":
                metrics["repair"] = pinned(opts.keep_float, "int8")
            metrics.update(save_ir(self, ctx, quantized, fp16=False))
        if metrics["fake_quantize"] == 0 and opts.scheme == "static":
            raise self.fail(ctx, "NNCF quantized no layer (no FakeQuantize in the result): the model has no "
                                 "operation NNCF quantizes, or max_accuracy_drop reverted them all (raise it)")
        accuracy = metrics.get("validation_accuracy")
        if accuracy and accuracy["fp32"] - accuracy["int8"] > opts.max_accuracy_drop + 1e-9:
            raise self.fail(ctx, f"NNCF could not hold the accuracy drop within max_accuracy_drop "
                                 f"{opts.max_accuracy_drop}: top-1 {accuracy['fp32']:.4f} (fp32 IR) -> "
                                 f"{accuracy['int8']:.4f} (int8); raise it or add calibration data")
        metrics["quantized_weights"] = measure(ctx.out_dir / XML, self.precision, kept_float(metrics, opts),
                                               reverted=accuracy is not None)  # accuracy control's own choice
        return metrics

    def _search(self, ctx: StepContext, nncf: Any, model: Any, calibration: Any, advanced: Any,
                kwargs: dict[str, Any], metrics: dict[str, Any]) -> Any:
        """keep_float 'sensitive': the one keep-float search with NNCF's ignored_scope (openvino/sensitivity.py)."""
        import tempfile

        from buildsys.formats.openvino.sensitivity import search

        def quantize(ignored: list[str]) -> Any:
            scope = {"ignored_scope": nncf.IgnoredScope(names=ignored)} if ignored else {}
            return nncf.quantize(model, calibration, advanced_parameters=advanced, **kwargs, **scope)

        with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".work-") as work:
            quantized, found = search(ctx, quantize, Path(str(ctx.input_path)), Path(work))
        metrics.update(found)
        return quantized

    def _validation(self, ctx: StepContext) -> list[tuple[dict[str, Any], int]]:
        """(feeds, label) per sample of the labelled validation set (checked at plan time where possible)."""
        batch = ctx.data("validation")
        if batch is None or batch.labels is None:
            raise self.fail(ctx, _labels_problem(ctx.model, ctx.root) or
                            "max_accuracy_drop needs labels in the validation set")
        return [(feeds, int(label)) for feeds, label in zip(_samples(batch, len(batch)), batch.labels)]


def _compress_weights(nncf: Any, model: Any, ignored: Any) -> Any:
    """int8 weights, float activations: NNCF's weight compression of every weight layer (INT8_ASYM, per output
    channel; INT8 modes compress every layer, the first and last included), less the names `ignored` keeps float."""
    scope = {"ignored_scope": ignored} if ignored is not None else {}
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, **scope)


def _samples(batch: Batch, count: int) -> Any:
    """The first `count` samples, one per item: an IR exported with fixed shapes takes a batch of 1."""
    return (feeds for _, feeds in zip(range(count), batch.chunks(1)))


def _top1(output: str) -> Any:
    """NNCF's validation function: top-1 accuracy of `output` vs the labels, and the per-sample hits
    (NNCF ranks the layers to revert by how much each changes them)."""
    def metric(compiled: Any, items: Any) -> tuple[float, list[float]]:
        port = compiled.output(output)
        hits = [float(int(compiled(feeds)[port].reshape(-1).argmax()) == label) for feeds, label in items]
        return (sum(hits) / len(hits) if hits else 0.0), hits

    return metric


def _labels_problem(model: Model, root: Path) -> str | None:
    """Why max_accuracy_drop cannot be measured for `model` (from config and .npz headers), or None."""
    first = model.outputs[0]
    if first.kind != "scores":
        return (f"max_accuracy_drop measures top-1 accuracy of the first output, but '{first.name}' is "
                f"kind '{first.kind}': declare it kind: scores, or leave max_accuracy_drop out")
    spec = model.data.validation
    if spec is None:
        return ("max_accuracy_drop needs a labelled validation set: add data.validation to the model "
                "(an .npz with the inputs and a 'labels' array of class indices)")
    if spec.path is None:
        return None  # a callable: its labels are known only when it runs (checked then)
    path = root / spec.path
    if path.suffix == ".npy":
        return (f"max_accuracy_drop needs labels, but {spec.path} is an .npy (inputs only): use an .npz with "
                f"a '{spec.labels}' array of class indices")
    from buildsys.config.data import peek_shapes

    try:
        arrays = peek_shapes(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # missing or unreadable: the data checks report it
    if spec.labels not in arrays:
        return (f"max_accuracy_drop needs labels, but {spec.path} has no array named '{spec.labels}' "
                f"(has: {', '.join(sorted(arrays))}): add one, or name it with data.validation.labels")
    return None
