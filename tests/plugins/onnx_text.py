"""A format from a plugin, with no file of modelbuild changed: ONNX's textual syntax (`onnx.printer`).

`MODELBUILD_PLUGINS=onnx_text` (this directory on PYTHONPATH) registers the `onnx-text` format, the
step that writes it from an ONNX model, and the runtime that parses it back and runs it on ONNX
Runtime, with the same decorators the built-in families use (docs/adding-a-format.md). The text is
readable in a code review; it round-trips float32 weights exactly (`onnx.printer` writes the shortest
decimal that parses back to the same float).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buildsys.errors import StepError
from buildsys.formats import register, register_format, register_runtime
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.runtime import Runtime, Session

ONNX_TEXT = register_format(Format(
    name="onnx-text", family="onnx-text", precision="fp32", filename="model.onnxtxt", runtime="onnx-text-ort",
    description="An ONNX model in ONNX's textual syntax, run by parsing it back onto ONNX Runtime.",
))


@register
class OnnxTextFromOnnx(Step):
    """Print an ONNX model in ONNX's textual syntax."""

    name = "onnx-text-from-onnx"
    consumes = ("onnx",)
    produces = "onnx-text"
    packages = ("onnx",)
    toolchain = "onnx"
    description = "onnx.printer.to_text."

    class Options(StepOptions):
        pass

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import onnx
        import onnx.printer

        text = onnx.printer.to_text(onnx.load(str(ctx.input_path)))
        out = ctx.out_dir / ONNX_TEXT.filename
        out.write_text(text)
        return {"bytes": out.stat().st_size}


@register_runtime
class OnnxTextRuntime(Runtime):
    """Parses the text back to a ModelProto (onnx.parser) and runs it with ONNX Runtime's CPU provider."""

    name = "onnx-text-ort"
    packages = ("onnx", "onnxruntime")

    def load(self, path: Path, model: Any, root: Path) -> Session:
        import onnx.parser
        import onnxruntime as ort

        from buildsys.formats.onnx.runtime import OrtSession

        try:
            proto = onnx.parser.parse_model(Path(path).read_text())
        except Exception as exc:
            raise StepError(f"'{Path(path).name}' is not valid ONNX text: {str(exc).splitlines()[0]}") from exc
        return OrtSession(ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]), model)
