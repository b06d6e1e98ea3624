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
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.llm.contract import INPUTS, OUTPUTS, SPEC_FILE, ship_tokenizer

LLM_ONNX = register_format(Format(
    name="llm-onnx", filename="model.onnx", runtime="llm-onnxruntime", task="text-generation",
    description="Decoder LM (task: text-generation) as ONNX with an explicit static KV cache "
                "(tokens, cache_position, k_cache, v_cache → logits, caches; llm.json beside it), for ONNX Runtime.",
))


@register
class LlmOnnxFromPyTorch(Step):
    """Export a causal LM's static-KV-cache decoder to ONNX (torch.export-based exporter)."""

    name = "llm-onnx-from-pytorch"
    consumes = ("pytorch",)
    produces = "llm-onnx"
    packages = ("torch", "transformers", "onnx", "onnxscript")
    toolchain = "torch"
    description = "decoder.py's StaticCacheDecoder, torch.onnx.export(dynamo=True) with a dynamic sequence axis."

    class Options(StepOptions):
        opset: int = Field(default=18, ge=18, description="ONNX opset of the torch.export-based exporter.")

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        return ("tokenizer",)  # shipped beside the artifact: its bytes are part of the output

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import torch

        from buildsys.formats.llm.decoder import cache_spec, example_inputs, load_lm, static_cache_decoder

        gen = ctx.model.generation
        assert gen is not None  # the format's task: planning refuses other models
        lm = load_lm(ctx.model, ctx.root, ctx.model_name, self.name)
        spec = cache_spec(lm, gen.max_cache_len, gen.max_seq_len)
        seq = torch.export.Dim("seq", min=1, max=gen.max_seq_len)
        path = ctx.out_dir / LLM_ONNX.filename
        try:
            program = torch.onnx.export(
                static_cache_decoder(lm), example_inputs(spec, min(2, gen.max_seq_len)), dynamo=True,
                input_names=list(INPUTS), output_names=list(OUTPUTS), opset_version=ctx.options.opset,
                dynamic_shapes=({1: seq}, {0: seq}, None, None), external_data=False, verbose=False)
            assert program is not None  # dynamo=True returns the ONNXProgram
            program.save(str(path), external_data=False)
        except Exception as exc:
            from buildsys.errors import describe

            raise self.fail(ctx, f"ONNX export of the static-cache decoder failed: {describe(exc)}") from exc
        import onnx

        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            raise self.fail(ctx, f"the exported ONNX model is invalid: {str(exc).strip().splitlines()[0]}") from exc
        spec.write(ctx.out_dir)
        shipped = ship_tokenizer(ctx.model, ctx.root, ctx.out_dir)
        return {"bytes": path.stat().st_size, "cache": list(spec.cache_shape), "spec": SPEC_FILE, "tokenizer": shipped}
