"""The base of the steps that export a decoder LM from its PyTorch source (`task: text-generation`): what they
consume and ship beside the artifact (its tokenizer), the LM loaded with its cache spec, and the ONNX export two
of them share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from buildsys.formats.base import Step, StepContext, StepOptions
from buildsys.formats.llm.contract import SPEC_FILE, CacheSpec, ship_tokenizer

if TYPE_CHECKING:
    from buildsys.config.generation import TextGeneration


class LlmExportStep(Step):
    """A decoder LM exported from its PyTorch source: the tokenizer is shipped beside the artifact (so its bytes
    are an input), the LM is loaded with its cache spec (`_decoder`), and `_ship` writes llm.json and the
    tokenizer. Subclasses set `produces`, `packages`, their toolchain and `_run`."""

    consumes: ClassVar[tuple[str, ...]] = ("pytorch",)
    toolchain: ClassVar[str] = "torch"
    extra: ClassVar[str] = "llm"

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        return ("tokenizer",)  # shipped beside the artifact: its bytes are part of the output

    def _decoder(self, ctx: StepContext[Any], tokens: int | None = None) -> tuple[Any, CacheSpec, "TextGeneration"]:
        """The transformers LM, its cache spec for calls of `tokens` tokens (default: the prefill length) and the
        model's generation settings."""
        from buildsys.formats.llm.decoder import cache_spec, load_lm

        gen = ctx.model.generation
        assert gen is not None  # the format's task: planning refuses other models
        lm = load_lm(ctx.model, ctx.root, ctx.model_name, self.name)
        return lm, cache_spec(lm, gen.max_cache_len, tokens or gen.max_seq_len), gen

    def _ship(self, ctx: StepContext[Any], spec: CacheSpec) -> dict[str, Any]:
        """llm.json (the cache spec) and the tokenizer beside the artifact; what the metrics say of them."""
        spec.write(ctx.out_dir)
        return {"cache": list(spec.cache_shape), "spec": SPEC_FILE,
                "tokenizer": ship_tokenizer(ctx.model, ctx.root, ctx.out_dir)}

    def _export_onnx(self, ctx: StepContext[Any], module: Any, args: tuple[Any, ...], path: Path, what: str,
                     **export: Any) -> None:
        """`module` exported by the torch.export-based ONNX exporter to one file at `path`, checked; a failure is
        the step's, naming `what` was exported. `export`: the exporter's other arguments (names, dynamic shapes)."""
        import onnx
        import torch

        from buildsys.errors import describe

        try:
            program = torch.onnx.export(module, args, dynamo=True, opset_version=ctx.options.opset,
                                        external_data=False, verbose=False, **export)
            assert program is not None  # dynamo=True returns the ONNXProgram
            program.save(str(path), external_data=False)
            onnx.checker.check_model(str(path))
        except Exception as exc:
            raise self.fail(ctx, f"ONNX export of the {what} failed: {describe(exc)}") from exc
