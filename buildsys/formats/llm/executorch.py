"""The `llm-executorch` format: a decoder LM with an explicit static KV cache as an XNNPACK-lowered .pte.

A .pte has static shapes, so the program takes one token per call (prefill feeds the prompt token
by token; a second method with a prefill chunk is later work) and the caches as fixed-size inputs
and outputs. Lowered like the `executorch` family (program.py): torch.export, XNNPACK partitioner,
to_executorch, stack traces dropped so the bytes are reproducible. The int8 member quantizes first
with PT2E and XNNPACKQuantizer's dynamic scheme (int8 per-channel weights of every linear layer,
activations quantized per call; embeddings, norms and the cache stay float32).
"""

from __future__ import annotations

from typing import Any

from buildsys.formats import register, register_formats
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.llm.contract import SPEC_FILE, ship_tokenizer

LLM_PTE = register_formats(Format.variants("llm-executorch", {
    "fp32": "Decoder LM (task: text-generation) as an ExecuTorch program (.pte), float32, lowered to XNNPACK, "
            "one token per call with an explicit static KV cache (llm.json and the tokenizer beside it).",
    "int8": "Decoder LM as an ExecuTorch program (.pte) whose linear layers are int8 (PT2E, XNNPACKQuantizer "
            "dynamic: per-channel int8 weights, int8 activations quantized per call), lowered to XNNPACK.",
}, filename="model.pte", runtime="llm-executorch", task="text-generation"))


class _LlmPteFromPyTorch(Step):
    """Shared body: load the LM, export its static-cache decoder with one token, (quantize,) lower to XNNPACK."""

    consumes = ("pytorch",)
    packages = ("torch", "transformers", "executorch", "torchao")
    extra = "executorch"
    toolchain = "torch"
    description = "decoder.py's StaticCacheDecoder, torch.export with one token, to_edge_transform_and_lower(XNNPACK)."
    Options = StepOptions

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        return ("tokenizer",)  # shipped beside the artifact: its bytes are part of the output

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        import torch
        from executorch.exir import to_edge_transform_and_lower

        from buildsys.errors import describe
        from buildsys.formats.executorch.contract import XNNPACK, executorch_unavailable
        from buildsys.formats.executorch.recurrent import control_flow_xnnpack_partitioner
        from buildsys.formats.llm.decoder import cache_spec, example_inputs, load_lm, static_cache_decoder
        from buildsys.formats.reproducible import exported_program_without_stack_traces

        reason = executorch_unavailable()
        if reason:
            raise self.fail(ctx, reason)
        gen = ctx.model.generation
        assert gen is not None  # the format's task: planning refuses other models
        lm = load_lm(ctx.model, ctx.root, ctx.model_name, self.name)
        spec = cache_spec(lm, gen.max_cache_len, 1)
        args = example_inputs(spec, 1)
        try:
            program = torch.export.export(static_cache_decoder(lm), args, strict=False)
        except Exception as exc:
            raise self.fail(ctx, f"torch.export of the static-cache decoder failed: {describe(exc)}") from exc
        program, metrics = self._quantize(ctx, program, args)
        exported_program_without_stack_traces(program)
        try:
            lowered = to_edge_transform_and_lower(program, partitioner=[control_flow_xnnpack_partitioner()]).to_executorch()
        except Exception as exc:
            raise self.fail(ctx, f"lowering to ExecuTorch failed: {describe(exc)}") from exc
        (ctx.out_dir / LLM_PTE[self.precision].filename).write_bytes(lowered.buffer)
        spec.write(ctx.out_dir)
        shipped = ship_tokenizer(ctx.model, ctx.root, ctx.out_dir)
        plan = lowered.executorch_program.execution_plan[0]
        return {"bytes": len(lowered.buffer), "cache": list(spec.cache_shape), "spec": SPEC_FILE, "tokenizer": shipped,
                "xnnpack_delegates": sum(1 for d in plan.delegates if d.id == XNNPACK),
                "portable_operators": sorted({op.name for op in plan.operators}), **metrics}

    def _quantize(self, ctx: StepContext, program: Any, args: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
        """Hook of the precision: the program to lower and what quantizing it did."""
        return program, {}


@register
class LlmExecutorchFromPyTorch(_LlmPteFromPyTorch):
    """Export a causal LM's static-KV-cache decoder with torch.export and lower it to ExecuTorch/XNNPACK."""

    name = "llm-executorch-from-pytorch"
    produces = "llm-executorch"
    precision = "fp32"


@register
class LlmExecutorchInt8FromPyTorch(_LlmPteFromPyTorch):
    """As llm-executorch, with the linear layers quantized to int8 (PT2E, XNNPACK dynamic scheme) first."""

    name = "llm-executorch-int8-from-pytorch"
    produces = "llm-executorch-int8"
    precision = "int8"
    description = ("decoder.py's StaticCacheDecoder, torch.export, prepare_pt2e/convert_pt2e with XNNPACKQuantizer "
                   "(dynamic, per channel), torch.export again, to_edge_transform_and_lower(XNNPACK).")

    def _quantize(self, ctx: StepContext, program: Any, args: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        from buildsys.errors import describe
        from buildsys.formats.executorch.quantize import int8_weights, quantizer

        try:
            prepared = prepare_pt2e(program.module(), quantizer(per_channel=True, dynamic=True))
            with torch.no_grad():
                prepared(*args)  # dynamic: one call records the weights' observers
            converted = convert_pt2e(prepared)
            quantized = torch.export.export(converted, args, strict=False)
        except Exception as exc:
            raise self.fail(ctx, f"PT2E int8 quantization (dynamic) of the decoder failed: {describe(exc)}") from exc
        int8, total = int8_weights(converted)
        if not int8:
            raise self.fail(ctx, f"PT2E int8 quantization quantized none of the decoder's weights ({total:,} stay float)")
        return quantized, {"scheme": "dynamic", "int8_weights": round(int8 / total, 4)}
