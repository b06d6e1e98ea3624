"""The tensorrt formats: serialized TensorRT engines (`model.plan` + `profile.json`) built from ONNX.

- `tensorrt` from the fp32 ONNX model (or the offline-optimized one);
- `tensorrt-fp16` from onnx-fp16: under strong typing (TensorRT's way since 10.12) the engine runs
  in the precision of the graph it is given, so fp16 comes from the float16 ONNX model that the
  fp16 ONNX targets already verify (same op_block_list, same decisions);
- `tensorrt-int8` from the fp32 ONNX model, quantized explicitly (QDQ, symmetric int8) on the
  model's calibration set first (see `qdq.py` for why not an IInt8 calibrator or onnx-int8).

An engine holds kernels chosen for one GPU model by one TensorRT version, so the steps' keys name
both (`Step.host_components`), and on a host without an NVIDIA GPU (or without TensorRT) `plan`
lists them as blocked with the reason (`Step.host_requirement`) and `build` never starts them.
Engine bytes are not reproducible (the builder times tactics on the GPU); the key, not the bytes,
says what an engine is. TensorRT and onnx are imported inside `_run`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from buildsys.formats import register, register_formats, register_variants
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.onnx.optimized import FLOAT_ONNX
from buildsys.formats.tensorrt.profiles import (
    PLAN,
    EngineOptions,
    ProfileError,
    describe,
    device_components,
    fit_to_graph,
    gpu_requirement,
    profile_problem,
    write_profile,
)

if TYPE_CHECKING:
    from buildsys.config.schema import Model

TENSORRT = register_formats(Format.variants("tensorrt", {
    "fp32": "TensorRT engine (model.plan + profile.json) for one NVIDIA GPU model and TensorRT version, float32.",
    "fp16": "TensorRT engine built from the float16 ONNX model (strongly typed: fp16 kernels).",
    "int8": "TensorRT engine with explicit int8 quantization (QDQ scales calibrated on the model's data).",
}, filename=PLAN, runtime="tensorrt"))


class _EngineFromOnnx(Step):
    """What every engine step shares: options, host binding, profile.json and the build itself."""

    packages: ClassVar[tuple[str, ...]] = ("tensorrt", "onnx")
    extra = "tensorrt"
    toolchain = "tensorrt"  # its own worker: TensorRT and a CUDA context stay loaded between engines
    gpu = True
    Options = EngineOptions

    @classmethod
    def host_requirement(cls) -> str | None:
        return gpu_requirement()

    @classmethod
    def host_components(cls, options: dict[str, Any]) -> dict[str, str]:
        return device_components()

    @classmethod
    def check_config(cls, model: "Model", options: StepOptions, root: Path) -> str | None:
        return profile_problem(model, options)  # type: ignore[arg-type]

    def profile_for(self, ctx: StepContext[EngineOptions], src: Path) -> dict[str, Any]:
        """profile.json of the engine built from `src` (no GPU needed): I/O read from the ONNX graph,
        which the engine keeps, and the optimization profile from the declared shapes and options."""
        import onnx

        from buildsys.formats.serving.triton_signature import onnx_signature

        try:
            proto = onnx.load(str(src), load_external_data=False)
        except Exception as exc:
            raise self.fail(ctx, f"'{src.name}' is not a readable ONNX file: {type(exc).__name__}") from exc
        inputs, outputs = onnx_signature(self, ctx, proto)
        try:
            profile = describe(ctx.model, ctx.options, inputs, outputs, self.precision, device_components())
            fit_to_graph(profile, ctx.options)
        except ProfileError as exc:
            raise self.fail(ctx, str(exc)) from exc
        return profile

    def _run(self, ctx: StepContext[EngineOptions]) -> dict[str, Any]:
        from buildsys.formats.tensorrt.builder import EngineError, build_engine

        src = Path(str(ctx.input_path))
        profile = self.profile_for(ctx, src)
        metrics: dict[str, Any] = {}
        # Intermediate files (the QDQ model) live in a hidden folder of out_dir, gone before returning.
        with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".work-") as work:
            network = self._network(ctx, src, Path(work), metrics)
            try:
                metrics.update(build_engine(network, profile, ctx.out_dir / PLAN, precision=self.precision,
                                            workspace_mb=ctx.options.workspace_mb,
                                            optimization_level=ctx.options.optimization_level))
            except EngineError as exc:
                raise self.fail(ctx, str(exc)) from exc
        write_profile(ctx.out_dir, profile)
        return {**metrics, "device": profile["device"], "batch": profile["batch"]}

    def _network(self, ctx: StepContext[EngineOptions], src: Path, work: Path, metrics: dict[str, Any]) -> Path:
        """The ONNX file TensorRT parses: the input itself, unless a precision rewrites it first."""
        return src


@register_variants({"fp32": FLOAT_ONNX, "fp16": "onnx-fp16"})
class TensorrtFromOnnx(_EngineFromOnnx):
    """Build a TensorRT engine from an ONNX model in the precision its tensors have (fp32, or fp16 from onnx-fp16)."""

    produces = "tensorrt"
    description = "TensorRT engine (model.plan) from ONNX, strongly typed, one optimization profile."


class Int8EngineOptions(EngineOptions):
    """Engine options plus the explicit quantization's."""

    per_channel: bool = Field(default=True, description="One weight scale per output channel (TensorRT's "
                              "recommendation for convolutions and linear layers) instead of one per tensor.")
    calibration_samples: int | None = Field(
        default=None, ge=1, description="Calibrate on at most this many samples of data.calibration (all when unset).")


@register
class TensorrtInt8FromOnnx(_EngineFromOnnx):
    """Quantize an ONNX model to symmetric int8 QDQ on the calibration set, then build its TensorRT engine."""

    name = "tensorrt-int8-from-onnx"
    consumes = FLOAT_ONNX
    produces = "tensorrt-int8"
    precision = "int8"
    packages = ("tensorrt", "onnx", "onnxruntime")  # onnxruntime chooses the scales
    Options = Int8EngineOptions
    description = "TensorRT engine with explicit int8 quantization (ONNX Runtime QDQ calibration on the CPU)."

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        return ("calibration",)

    @classmethod
    def check_config(cls, model: "Model", options: StepOptions, root: Path) -> str | None:
        if model.data.calibration is None:
            return ("tensorrt-int8 needs calibration data to choose its int8 scales: add data.calibration to the "
                    "model (an .npz of representative inputs)")
        return super().check_config(model, options, root)

    def _network(self, ctx: StepContext[Int8EngineOptions], src: Path, work: Path,  # type: ignore[override]
                 metrics: dict[str, Any]) -> Path:
        from buildsys.formats.tensorrt.qdq import quantize_for_tensorrt

        batch = ctx.data("calibration")
        if batch is None:
            raise self.fail(ctx, "tensorrt-int8 needs calibration data: add data.calibration to the model")
        if ctx.options.calibration_samples is not None:
            batch.inputs = {k: v[: ctx.options.calibration_samples] for k, v in batch.inputs.items()}
        out = work / "qdq.onnx"
        try:
            metrics.update(quantize_for_tensorrt(src, out, batch, per_channel=ctx.options.per_channel, work=work))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(ctx, f"int8 QDQ calibration failed: {first}") from exc
        return out
