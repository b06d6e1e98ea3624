"""The deploy.yaml settings of a text-generation model (a decoder LM) and the signature they imply.

A model with `task: text-generation` is judged by generation, not by one forward call: its checks
run prefill, greedy decoding and teacher-forced NLL in the artifact's runtime (formats/llm/). Its
`inputs` and `outputs` are therefore fixed (`SIGNATURE`), filled in here rather than written by hand.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The input and output signature every text-generation model gets: per sample, one prompt and one
#: window of held text (token ids, right-padded with -1), and what generation yields for them.
SIGNATURE: dict[str, list[dict[str, Any]]] = {
    "inputs": [{"name": "prompt_ids", "shape": ["batch", "prompt"], "dtype": "int64"},
               {"name": "text_ids", "shape": ["batch", "text"], "dtype": "int64"}],
    "outputs": [{"name": "prefill_logits", "kind": "scores"},
                {"name": "tokens", "kind": "tokens"},
                {"name": "nll", "kind": "values"}],
}


class TextGeneration(BaseModel):
    """How a decoder LM is exported and judged: cache sizes, prompts, held text and tokenizer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_seq_len: int = Field(default=128, ge=1, description="Most tokens one call of the exported decoder takes (the "
                             "prefill chunk of runtimes with a dynamic sequence axis; programs with fixed shapes take "
                             "one token per call) and the length of each window of held text.")
    max_cache_len: int = Field(default=256, ge=2, description="Positions of the static KV cache the artifact carries: a "
                               "prompt plus its generated tokens must fit in it.")
    prompts: str = Field(description="Text file of prompts, one per line (blank lines skipped), relative to the "
                         "deploy file. Each is prefilled and continued greedily by `new_tokens` tokens.")
    held_text: Optional[str] = Field(default=None, description="Text file the mean negative log-likelihood (NLL) is "
                                     "measured on, teacher-forced, in windows of `max_seq_len` tokens. Unset: the "
                                     "prompts file.")
    new_tokens: int = Field(default=16, ge=1, description="Greedy tokens generated per prompt (no stop at EOS: every "
                            "runtime generates the same count, so token agreement compares like with like).")
    tokenizer: str = Field(description="The tokenizer the model was trained with: a `tokenizer.json` file (Hugging "
                           "Face tokenizers) or a directory holding one, relative to the deploy file. With a "
                           "`source.transformers` directory it defaults to that directory's tokenizer.json.")

    @model_validator(mode="after")
    def _fits(self) -> "TextGeneration":
        if self.max_seq_len > self.max_cache_len:
            raise ValueError(f"max_seq_len {self.max_seq_len} exceeds max_cache_len {self.max_cache_len}")
        return self


def fill_signature(data: Any) -> Any:
    """Before validation of a model: a text-generation model gets `SIGNATURE` as its inputs and outputs
    (giving them by hand is an error: the runtimes produce exactly these)."""
    if not isinstance(data, dict) or data.get("task") != "text-generation":
        return data
    data = _default_tokenizer(data)
    given = [k for k in ("inputs", "outputs") if k in data and _essence(k, data[k]) != _essence(k, SIGNATURE[k])]
    if given:  # a model dumped and validated again (in a worker) carries the fixed signature itself
        raise ValueError(f"a text-generation model has a fixed signature; remove {' and '.join(given)} "
                         "(docs/llm.md lists what its checks compare)")
    return {**data, **SIGNATURE}


def _default_tokenizer(data: dict[str, Any]) -> dict[str, Any]:
    """A transformers directory carries its tokenizer: `generation.tokenizer` defaults to its tokenizer.json
    (the file only, so the artifact ships the tokenizer and not the weights beside it)."""
    source, gen = data.get("source"), data.get("generation")
    if isinstance(source, dict) and isinstance(source.get("transformers"), str) and isinstance(gen, dict) \
            and "tokenizer" not in gen:
        return {**data, "generation": {**gen, "tokenizer": f"{source['transformers'].rstrip('/')}/tokenizer.json"}}
    return data


def _essence(section: str, specs: Any) -> Any:
    keys = ("name", "shape", "dtype") if section == "inputs" else ("name", "kind")
    try:
        return [tuple(spec.get(k) for k in keys) for spec in specs]
    except AttributeError:
        return specs
