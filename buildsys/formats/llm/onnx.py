"""The `llm-onnx` format: a decoder LM with an explicit static KV cache, exported for ONNX Runtime.

The sequence axis of `tokens` and `cache_position` is dynamic (up to `max_seq_len`), so a prompt is
prefilled in one call and decoding feeds one token; the caches are fixed-size inputs and outputs.
Exported with the torch.export-based exporter (dynamo=True), which takes the explicit mask and
functional cache writes of decoder.py as they are.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, StepContext, StepOptions
from buildsys.formats.llm.contract import INPUTS, OUTPUTS
from buildsys.formats.llm.export import LlmExportStep

LLM_ONNX = register_format(Format(
    name="llm-onnx", filename="model.onnx", runtime="llm-onnxruntime", task="text-generation",
    description="Decoder LM (task: text-generation) as ONNX with an explicit static KV cache "
                "(tokens, cache_position, k_cache, v_cache → logits, caches; llm.json beside it), for ONNX Runtime.",
))


@register
class LlmOnnxFromPyTorch(LlmExportStep):
    """Export a causal LM's static-KV-cache decoder to ONNX (torch.export-based exporter)."""

    name = "llm-onnx-from-pytorch"
    produces = "llm-onnx"
    packages = ("torch", "transformers", "onnx", "onnxscript")
    description = "decoder.py's StaticCacheDecoder, torch.onnx.export(dynamo=True) with a dynamic sequence axis."

    class Options(StepOptions):
        opset: int = Field(default=18, ge=18, description="ONNX opset of the torch.export-based exporter.")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import torch

        from buildsys.formats.llm.decoder import example_inputs, static_cache_decoder

        lm, spec, gen = self._decoder(ctx)
        seq = torch.export.Dim("seq", min=1, max=gen.max_seq_len)
        path = ctx.out_dir / LLM_ONNX.filename
        self._export_onnx(ctx, static_cache_decoder(lm), example_inputs(spec, min(2, gen.max_seq_len)), path,
                          "static-cache decoder", input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_shapes=({1: seq}, {0: seq}, None, None))
        return {"bytes": path.stat().st_size, **self._ship(ctx, spec)}
