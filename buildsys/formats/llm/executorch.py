"""The `llm-executorch` format: a decoder LM with an explicit static KV cache as an XNNPACK-lowered .pte.

A .pte has static shapes, so the program takes one token per call (prefill feeds the prompt token
by token; a second method with a prefill chunk is later work) and the caches as fixed-size inputs
and outputs. Lowered like the `executorch` family (program.py): torch.export, XNNPACK partitioner,
to_executorch, stack traces dropped so the bytes are reproducible; a program with an operator the
runtime has no kernel for is refused here, naming it. The int8 member quantizes first, by its `scheme`:
`dynamic` (default) with PT2E and XNNPACKQuantizer's dynamic scheme (int8 per-channel weights of every
linear layer, activations quantized per call); `weight-only` and `8da4w` (int4 grouped weights, int8
dynamic activations) as ExecuTorch's own LLM export does them (quantize.py). Embeddings, norms and the
cache stay float32 in all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from buildsys.formats import register, register_formats
from buildsys.formats.base import Format, StepContext, StepOptions
from buildsys.formats.llm.export import LlmExportStep

if TYPE_CHECKING:
    from buildsys.config.schema import Model

LLM_PTE = register_formats(Format.variants("llm-executorch", {
    "fp32": "Decoder LM (task: text-generation) as an ExecuTorch program (.pte), float32, lowered to XNNPACK, "
            "one token per call with an explicit static KV cache (llm.json and the tokenizer beside it).",
    "int8": "Decoder LM as an ExecuTorch program (.pte) whose linear layers are quantized, lowered to XNNPACK: "
            "scheme dynamic (default; PT2E XNNPACKQuantizer: per-channel int8 weights, int8 activations quantized "
            "per call), weight-only (int8 per-channel weights, float activations) or 8da4w (int4 weights in "
            "groups, int8 activations quantized per token).",
    "int4": "Decoder LM as an ExecuTorch program (.pte) with int4 weights in groups and int8 activations quantized "
            "per token (8da4w, ExecuTorch's -qmode 8da4w), lowered to XNNPACK: the smallest .pte.",
}, filename="model.pte", runtime="llm-executorch", task="text-generation"))


class _LlmPteFromPyTorch(LlmExportStep):
    """Shared body: load the LM, export its static-cache decoder with one token, (quantize,) lower to XNNPACK."""

    packages = ("torch", "transformers", "executorch", "torchao")
    extra = "executorch"
    version = 3  # 2: a program with an operator the runtime has no kernel for is refused here, naming it;
    # 3: linear layers in disguise (transformers' Conv1D) exported as nn.Linear (formats/torch/linear.py)
    description = "decoder.py's StaticCacheDecoder, torch.export with one token, to_edge_transform_and_lower(XNNPACK)."
    Options = StepOptions

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        import torch

        from buildsys.errors import describe
        from buildsys.formats.executorch.contract import executorch_unavailable
        from buildsys.formats.executorch.lowering import lower
        from buildsys.formats.llm.decoder import example_inputs, static_cache_decoder
        from buildsys.formats.reproducible import exported_program_without_stack_traces

        reason = executorch_unavailable()
        if reason:
            raise self.fail(ctx, reason)
        from buildsys.formats.torch.linear import as_linear

        lm, spec, _ = self._decoder(ctx, tokens=1)
        ctx.extra["as_linear"] = as_linear(lm)  # GPT-2's Conv1D as nn.Linear: the quantizers' linears
        args = example_inputs(spec, 1)
        metrics = self._quantize_module(ctx, lm)
        try:
            program = torch.export.export(static_cache_decoder(lm), args, strict=False)
        except Exception as exc:
            raise self.fail(ctx, f"torch.export of the static-cache decoder failed: {describe(exc)}") from exc
        program, quantized = self._quantize(ctx, program, args)
        metrics.update(quantized)
        if self.precision != "fp32":  # what the program holds, not what the quantizer meant to do
            from buildsys.formats.executorch.weights import measure

            metrics["quantized_weights"] = measure(program.module(), self.precision)
        exported_program_without_stack_traces(program)
        buffer, structure = lower(self, ctx, program)
        (ctx.out_dir / LLM_PTE[self.precision].filename).write_bytes(buffer)
        return {"bytes": len(buffer), **self._ship(ctx, spec), **structure, **metrics}

    def _quantize_module(self, ctx: StepContext, lm: Any) -> dict[str, Any]:
        """Hook of the precision, before export: quantize the transformers module in place; what it did."""
        return {}

    def _quantize(self, ctx: StepContext, program: Any, args: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
        """Hook of the precision, after export: the program to lower and what quantizing it did."""
        return program, {}


@register
class LlmExecutorchFromPyTorch(_LlmPteFromPyTorch):
    """Export a causal LM's static-KV-cache decoder with torch.export and lower it to ExecuTorch/XNNPACK."""

    name = "llm-executorch-from-pytorch"
    produces = "llm-executorch"
    precision = "fp32"


def _group_size(only: str = "") -> Any:
    """The `group_size` option of 8da4w's int4 weights, for both quantized members; `only`: the scheme it
    applies to, where the member has several."""
    text = ("input channels that share one int4 scale, a multiple of 32 (XNNPACK's int4 kernels; ExecuTorch's "
            "default for Llama is 128; smaller groups are more accurate and larger). Honoured exactly: a linear layer "
            "whose input width it does not divide is refused, naming it. Unset: 32 where it divides the layer, else "
            "the largest multiple of 32 below it that does, else one scale per output channel (recorded in "
            "deploy.lock as group_sizes).")
    return Field(default=None, ge=32, multiple_of=32,
                 description=f"{only} only: {text}" if only else text[0].upper() + text[1:])


class _Int4Groups(StepOptions):
    """What both quantized members' options share: the group size 8da4w uses (`group_size` or 32)."""

    if TYPE_CHECKING:  # each member declares it (a field here would come first in the member's options)
        group_size: int | None

    @property
    def groups(self) -> int:
        """The group size 8da4w uses."""
        return self.group_size or 32


class LlmPteInt8Options(_Int4Groups):
    """How the int8 member quantizes the decoder."""

    scheme: Literal["dynamic", "weight-only", "8da4w"] = Field(
        default="dynamic", description="'dynamic': PT2E with XNNPACKQuantizer's dynamic scheme, int8 per-channel "
        "weights of every linear layer and int8 activations quantized per call, the linears run by XNNPACK. "
        "'weight-only': int8 per-channel weights of every nn.Linear, float32 activations (ExecuTorch's "
        "-qmode int8; the weights are widened each call by the portable kernels, XNNPACK runs the rest). "
        "'8da4w': int4 weights in groups of `group_size` and int8 activations quantized per token "
        "(ExecuTorch's -qmode 8da4w, torchao Int8DynamicActivationIntxWeightConfig; the smallest program). "
        "Embeddings, norms and the KV cache stay float32 in all three.")
    group_size: int | None = _group_size("8da4w")


@register
class LlmExecutorchInt8FromPyTorch(_LlmPteFromPyTorch):
    """As llm-executorch, with the linear layers quantized first (scheme: dynamic, weight-only or 8da4w)."""

    name = "llm-executorch-int8-from-pytorch"
    produces = "llm-executorch-int8"
    precision = "int8"
    version = 6  # 3: schemes weight-only and 8da4w; the missing-kernel check; 4: Conv1D as nn.Linear (quantized
    # like every linear), quantized_weights measured on the program before lowering; 5: dynamic's scale floor at
    # float32's epsilon (formats/torch/pt2e.finer_scales); 6: dynamic layers delegated one by one first
    # (executorch/lowering.partitioners)
    Options = LlmPteInt8Options
    committed_metrics = ("scheme", "group_size", "group_sizes", "quantized_weights")
    description = ("dynamic: decoder.py's StaticCacheDecoder, torch.export, prepare_pt2e/convert_pt2e with "
                   "XNNPACKQuantizer (dynamic, per channel), torch.export again; weight-only / 8da4w: the "
                   "module's linears quantized first (quantize.py), torch.export; then "
                   "to_edge_transform_and_lower(XNNPACK).")

    @classmethod
    def check_config(cls, model: Model, options: StepOptions, root: Path) -> str | None:
        if getattr(options, "group_size", None) is not None and getattr(options, "scheme", "") != "8da4w":
            return "group_size applies to scheme 8da4w only; remove it or set scheme: 8da4w"
        return None

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.formats.llm.quantize import describe

        return [describe(facts["scheme"], facts.get("group_size"))] if "scheme" in facts else []

    def _quantize_module(self, ctx: StepContext[LlmPteInt8Options], lm: Any) -> dict[str, Any]:
        from buildsys.errors import describe
        from buildsys.formats.llm.quantize import int8_dynamic_int4_weight, int8_weight_only, weight_elements

        opts = ctx.options
        if opts.scheme == "dynamic":
            return {}
        groups: dict[str, int] = {}
        try:
            if opts.scheme == "weight-only":
                quantized = int8_weight_only(lm)
            else:
                groups = int8_dynamic_int4_weight(lm, opts.groups, exact=opts.group_size is not None)
                quantized = sum(groups.values())
        except ValueError as exc:  # a group size the user set that does not fit: refused, naming the option
            raise self.fail(ctx, f"{exc}: set options.{self.produces}.group_size to a divisor of them, or leave it "
                                 "unset to choose one per layer") from exc
        except Exception as exc:
            raise self.fail(ctx, f"{opts.scheme} quantization of the decoder failed: {describe(exc)}") from exc
        if not quantized:  # a "quantized" program that is float32 throughout would pass any check
            raise self.fail(ctx, f"{opts.scheme} quantization quantized none of the decoder's weights "
                                 f"({weight_elements(lm):,} stay float): the model has no linear layer")
        return {"scheme": opts.scheme, **({"group_size": opts.groups, "group_sizes": groups} if groups else {})}

    def _quantize(self, ctx: StepContext[LlmPteInt8Options], program: Any,
                  args: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
        if ctx.options.scheme != "dynamic":
            return program, {}
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
        return quantized, {"scheme": "dynamic"}


class LlmPteInt4Options(_Int4Groups):
    """The int4 member: always 8da4w, only its group size is chosen."""

    group_size: int | None = _group_size()

    @property
    def scheme(self) -> str:
        return "8da4w"


@register
class LlmExecutorchInt4FromPyTorch(LlmExecutorchInt8FromPyTorch):
    """As llm-executorch, with int4 grouped weights and int8 dynamic activations (8da4w): what
    `llm-executorch-int8` with `scheme: 8da4w` builds, as a precision of its own so that `precision: int4`
    asks for it, like `llm-openvino-int4`."""

    name = "llm-executorch-int4-from-pytorch"
    produces = "llm-executorch-int4"
    precision = "int4"
    version = 2  # 2: Conv1D as nn.Linear (quantized like every linear), quantized_weights measured on the program
    Options = LlmPteInt4Options  # type: ignore[assignment]
    description = ("decoder.py's StaticCacheDecoder with its linears quantized by torchao "
                   "Int8DynamicActivationIntxWeightConfig (int4 groups; quantize.py), torch.export, "
                   "to_edge_transform_and_lower(XNNPACK).")

    @classmethod
    def check_config(cls, model: Model, options: StepOptions, root: Path) -> str | None:
        return None
