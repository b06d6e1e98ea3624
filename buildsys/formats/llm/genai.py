"""The `llm-genai` format: a decoder LM laid out for ONNX Runtime GenAI (decoder ONNX, genai_config.json, tokenizer).

Unlike `llm-onnx` (a static cache of our own), the decoder here takes GenAI's growing cache: the
past keys and values of every layer in, the presents (past + this call's) out, an attention mask
over all positions and explicit position ids (genai_layout.py). The transformers model runs
unchanged with a `Cache` whose layers start from the given pasts and concatenate, and an explicit
additive mask (key j visible to query i iff j <= past + i and attention_mask[j] is 1), so nothing
depends on state outside the inputs and torch.export gives one program for every past length.
Works for any architecture transformers builds on its generic cache (checked: Llama with RoPE and
GQA, GPT-2); GenAI's own model builder (which writes fused contrib ops) does not take GPT-2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, StepContext, StepOptions
from buildsys.formats.llm.export import LlmExportStep
from buildsys.formats.llm.genai_layout import CONFIG_FILE, genai_config, io_names, ship_flat_tokenizer

if TYPE_CHECKING:
    import torch

LLM_GENAI = register_format(Format(
    name="llm-genai", filename="model.onnx", runtime="onnxruntime-genai", task="text-generation",
    description="Decoder LM (task: text-generation) for ONNX Runtime GenAI: the decoder ONNX in GenAI's I/O "
                "convention (input_ids, attention_mask, position_ids, past_key_values.N.* → logits, present.N.*), "
                "genai_config.json and the tokenizer beside it; og.Model loads the directory.",
))


def growing_cache_decoder(lm: "torch.nn.Module", layers: int) -> "torch.nn.Module":
    """`lm` as `(input_ids, attention_mask, position_ids, pasts) → (logits, *presents)` (see the module doc);
    `pasts` is a tuple of 2 × layers tensors, key then value per layer."""
    import torch
    from transformers.cache_utils import Cache, DynamicLayer

    class PastLayer(DynamicLayer):
        """A dynamic layer that starts from the given past (DynamicLayer.update concatenates, functionally)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor):
            super().__init__()
            self.keys, self.values = keys, values
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

    class GrowingCacheDecoder(torch.nn.Module):
        def __init__(self, lm: torch.nn.Module):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                    pasts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            cache: list[Any] = [PastLayer(pasts[2 * i], pasts[2 * i + 1]) for i in range(layers)]
            seq, total = input_ids.shape[1], attention_mask.shape[1]
            query = torch.arange(seq).unsqueeze(1) + (total - seq)
            visible = (torch.arange(total).unsqueeze(0) <= query).unsqueeze(0) & (attention_mask[:, None, :] > 0)
            mask = torch.zeros(visible.shape, dtype=pasts[0].dtype).masked_fill(~visible, torch.finfo(pasts[0].dtype).min)
            out = self.lm(input_ids=input_ids, attention_mask=mask[:, None], position_ids=position_ids,
                          past_key_values=Cache(layers=cache), use_cache=True)
            return (out.logits, *[t for layer in cache for t in (layer.keys, layer.values)])

    return GrowingCacheDecoder(lm).eval()


def _special_ids(lm: Any) -> tuple[int | None, list[int], int | None]:
    """bos, eos (a list: some models have several) and pad, from the generation config, else the model config."""
    sources = [getattr(lm, "generation_config", None), lm.config]

    def first(name: str) -> Any:
        return next((getattr(s, name) for s in sources if getattr(s, name, None) is not None), None)

    eos = first("eos_token_id")
    eos_list = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])]
    bos, pad = first("bos_token_id"), first("pad_token_id")
    return (None if bos is None else int(bos)), eos_list, (None if pad is None else int(pad))


@register
class LlmGenaiFromPyTorch(LlmExportStep):
    """Export a causal LM's growing-cache decoder to ONNX in GenAI's I/O convention, with genai_config.json."""

    name = "llm-genai-from-pytorch"
    produces = "llm-genai"
    packages = ("torch", "transformers", "onnx", "onnxscript")
    version = 3  # 2: special tokens the model lacks left out (GenAI refuses null); 3: GPT-2 as type decoder
    description = "genai.py's growing-cache decoder, torch.onnx.export(dynamo=True), genai_config.json, tokenizer."

    class Options(StepOptions):
        opset: int = Field(default=18, ge=18, description="ONNX opset of the torch.export-based exporter.")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import torch

        lm, spec, gen = self._decoder(ctx)
        inputs, outputs = io_names(spec.layers)
        # Example sizes above 1 (torch.export specialises 0 and 1); past may be 0 at run time (GenAI's first call).
        batch, seq, past = 2, min(3, gen.max_seq_len), 4
        pasts = tuple(torch.zeros(batch, spec.kv_heads, past, spec.head_dim) for _ in range(2 * spec.layers))
        args = (torch.zeros(batch, seq, dtype=torch.long), torch.ones(batch, past + seq, dtype=torch.long),
                torch.arange(past, past + seq).repeat(batch, 1), pasts)
        dims = {"batch": torch.export.Dim("batch", min=1, max=1024),
                "seq": torch.export.Dim("seq", min=1, max=gen.max_cache_len),
                "total": torch.export.Dim("total", min=1, max=gen.max_cache_len),
                "past": torch.export.Dim("past", min=0, max=gen.max_cache_len - 1)}
        shapes = ({0: dims["batch"], 1: dims["seq"]}, {0: dims["batch"], 1: dims["total"]},
                  {0: dims["batch"], 1: dims["seq"]}, tuple({0: dims["batch"], 2: dims["past"]} for _ in pasts))
        path = ctx.out_dir / LLM_GENAI.filename
        self._export_onnx(ctx, growing_cache_decoder(lm, spec.layers), args, path, "GenAI decoder", input_names=inputs,
                          output_names=outputs, dynamic_shapes=shapes)
        bos, eos, pad = _special_ids(lm)
        hf: Any = lm.config
        config = genai_config(model_type=str(hf.model_type), filename=LLM_GENAI.filename, layers=spec.layers,
                              kv_heads=spec.kv_heads, heads=int(hf.num_attention_heads), head_dim=spec.head_dim,
                              hidden=int(hf.hidden_size), vocab=spec.vocab, context=gen.max_cache_len,
                              bos=bos, eos=eos, pad=pad)
        import json

        (ctx.out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        try:
            shipped = ship_flat_tokenizer(ctx.root / gen.tokenizer, ctx.out_dir)
        except ValueError as exc:
            raise self.fail(ctx, f"{exc}: rename it (generation.tokenizer)") from exc
        return {"bytes": path.stat().st_size, "genai_type": config["model"]["type"], "config": CONFIG_FILE,
                "tokenizer": shipped, "layers": spec.layers, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim}
