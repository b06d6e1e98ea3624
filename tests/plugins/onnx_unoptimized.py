"""A plugin runtime with a stand-in, to prove the mechanism Core ML uses on macOS on any host.

The `onnx-unoptimized` format is an ONNX model meant for a runtime that executes the graph as written:
ONNX Runtime with every graph optimization off. Its stand-in is ordinary `onnxruntime` (all
optimizations on), the way the MIL reference interpreter stands in for Apple's runtime. Where the device
runtime runs, the check also runs the stand-in and reports how far apart they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from buildsys.formats import register, register_format, register_runtime
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.runtime import Runtime, Session

ONNX_UNOPTIMIZED = register_format(Format(
    name="onnx-unoptimized", family="onnx-unoptimized", precision="fp32", filename="model.onnx",
    runtime="ort-unoptimized", description="An ONNX model run with ONNX Runtime's graph optimizations off.",
))


@register
class OnnxUnoptimizedFromOnnx(Step):
    """The ONNX model as it is, for a runtime that runs it unoptimized."""

    name = "onnx-unoptimized-from-onnx"
    consumes = ("onnx",)
    produces = "onnx-unoptimized"
    packages = ("onnx",)
    toolchain = "onnx"
    description = "a copy of the ONNX file."

    class Options(StepOptions):
        pass

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        out = ctx.out_dir / ONNX_UNOPTIMIZED.filename
        shutil.copyfile(str(ctx.input_path), out)
        return {"bytes": out.stat().st_size}


@register_runtime
class OrtUnoptimized(Runtime):
    """ONNX Runtime, CPU provider, graph optimizations disabled; `onnxruntime` stands in for it."""

    name = "ort-unoptimized"
    packages = ("onnxruntime",)
    stand_in = "onnxruntime"
    label = "ONNX Runtime with optimizations, not the unoptimized runtime"

    def load(self, path: Path, model: Any, root: Path) -> Session:
        import onnxruntime as ort

        from buildsys.formats.onnx.runtime import OrtSession

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return OrtSession(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), model)
