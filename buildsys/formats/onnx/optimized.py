"""The onnx-optimized format: an ONNX model rewritten by ONNX Runtime's offline graph optimizer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions

ONNX_OPTIMIZED = register_format(Format(
    name="onnx-optimized", filename="model.onnx", runtime="onnxruntime",
    description="ONNX model with ONNX Runtime's graph optimizations applied offline (faster session start).",
))


@register
class OnnxOptimizedFromOnnx(Step):
    """Apply ONNX Runtime's graph optimizations once and save the result (SessionOptions.optimized_model_filepath)."""

    name = "onnx-optimized-from-onnx"
    consumes = ("onnx",)
    produces = "onnx-optimized"
    packages = ("onnxruntime", "onnx")
    toolchain = "onnx"
    description = "ONNX Runtime offline graph optimization."

    class Options(StepOptions):
        level: Literal["basic", "extended", "all"] = Field(
            default="extended", description="'basic': constant folding and redundant-node removal (portable "
            "ONNX). 'extended': plus fusions into ONNX Runtime contrib ops (com.microsoft domain: runs only "
            "in ONNX Runtime). 'all': plus hardware-specific layout optimizations (NCHWc) tied to this "
            "machine's CPU: the file should only be run where it was optimized.")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import onnxruntime as ort

        from buildsys.formats.onnx.onnxfile import SIDE_FILE, finish, uses_external_data

        opts = ctx.options
        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[opts.level]
        so.optimized_model_filepath = str(ctx.out_dir / ONNX_OPTIMIZED.filename)
        so.log_severity_level = 3  # 'all' warns that the result is hardware specific: the option says so
        if uses_external_data(ctx.input_path):  # type: ignore[arg-type]
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", SIDE_FILE)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            ort.InferenceSession(str(ctx.input_path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(ctx, f"ONNX Runtime could not optimize the model: {first}") from exc
        metrics = finish(self, ctx, ctx.out_dir / ONNX_OPTIMIZED.filename)
        return {**metrics, "level": opts.level}
