"""The onnx-fp16 format: an ONNX model with float16 weights and arithmetic (float32 I/O by default)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions

ONNX_FP16 = register_format(Format(
    name="onnx-fp16", family="onnx", precision="fp16", filename="model.onnx", runtime="onnxruntime",
    description="ONNX model converted to float16 (half the weight size; fast on GPUs and fp16-capable NPUs).",
))


@register
class OnnxFp16FromOnnx(Step):
    """Convert an ONNX model's float32 tensors and ops to float16 (onnxruntime.transformers.float16)."""

    name = "onnx-fp16-from-onnx"
    consumes = ("onnx", "onnx-optimized")
    produces = "onnx-fp16"
    precision = "fp16"
    packages = ("onnxruntime", "onnx")
    toolchain = "onnx"
    description = "float16 conversion with ONNX Runtime's converter."

    class Options(StepOptions):
        keep_io_types: bool = Field(
            default=True, description="Keep float32 inputs and outputs (Cast nodes at the edges), so callers "
            "need no change; false makes the graph's float inputs/outputs float16.")
        op_block_list: Optional[list[str]] = Field(
            default=None, description="Op types left in float32 (e.g. ['Softmax', 'LayerNormalization'] when they "
            "lose too much precision); unset uses the converter's default list.")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import onnx

        from buildsys.formats.onnx.export import finish, load, save, uses_external_data

        convert = _converter()
        opts = ctx.options
        external = uses_external_data(ctx.input_path)  # type: ignore[arg-type]
        proto = load(ctx.input_path)  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {"keep_io_types": opts.keep_io_types}
        if opts.op_block_list is not None:
            kwargs["op_block_list"] = list(opts.op_block_list)
        try:
            converted = convert(proto, **kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(ctx, f"float16 conversion failed: {type(exc).__name__}: {first}") from exc
        _sort_nodes(converted.graph)
        path = save(converted, ctx.out_dir, external=external)
        metrics = finish(self, ctx, path)
        halves = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
        return {**metrics, "float16_initializers": halves}


def _sort_nodes(graph: Any) -> None:
    """Order nodes topologically in place: the converter appends the Casts it adds for float32 I/O at
    the end of the node list, which the ONNX checker rejects (ONNX Runtime itself would re-sort)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # a cycle or an input from an outer scope: keep the rest as it was
            ordered += pending
            break
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _converter() -> Any:
    """ONNX Runtime's copy of the converter, else onnxconverter-common's (same function, same options)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import convert_float_to_float16
        except ImportError:
            from buildsys.errors import MissingToolchain

            raise MissingToolchain("onnxruntime", "server", "float16 conversion (onnx-fp16-from-onnx)") from None
    return convert_float_to_float16
