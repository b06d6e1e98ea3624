"""What the `llm-genai` step and the ONNX Runtime GenAI runtime agree on: GenAI's I/O names and its config.

ONNX Runtime GenAI (`onnxruntime-genai`) loads a directory: `genai_config.json` (the decoder's file,
I/O names, cache geometry, special tokens, search defaults), the decoder ONNX, and the tokenizer
(`tokenizer.json` with a `tokenizer_config.json` naming its class; GenAI encodes text with its own
implementation, onnxruntime-extensions). The decoder follows GenAI's convention for decoder-only
models (as its model builder writes them): `input_ids`, `attention_mask` [batch, past + seq],
`position_ids`, `past_key_values.N.key/value` [batch, kv_heads, past, head_dim] → `logits`,
`present.N.key/value` [batch, kv_heads, past + seq, head_dim]; GenAI grows the cache itself
(`past_present_share_buffer: false`). Neutral ground: the step and the runtime import it, it imports neither.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

CONFIG_FILE = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
INPUTS = ("input_ids", "attention_mask", "position_ids")
OUTPUT = "logits"
PAST = ("past_key_values.%d.key", "past_key_values.%d.value")
PRESENT = ("present.%d.key", "present.%d.value")
#: model.type values GenAI 0.18 runs with this I/O; any other architecture is written as "decoder", GenAI's
#: generic type (the graph carries the architecture; the type only picks GenAI's I/O handling). Not "gpt2":
#: GenAI's gpt2 type expects another input set ("Model input was not found" on this graph; "decoder" runs it).
KNOWN_TYPES = ("llama", "mistral", "qwen2", "phi3", "gemma", "granite", "olmo")
#: Written when the model's tokenizer ships none: GenAI refuses a tokenizer without one, and this class
#: makes it read tokenizer.json as Hugging Face tokenizers' fast tokenizer.
DEFAULT_TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast"}


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """The decoder's input and output names, in the order the exported function takes and returns them."""
    past = [name % i for i in range(layers) for name in PAST]
    present = [name % i for i in range(layers) for name in PRESENT]
    return [*INPUTS, *past], [OUTPUT, *present]


def genai_config(*, model_type: str, filename: str, layers: int, kv_heads: int, heads: int, head_dim: int,
                 hidden: int, vocab: int, context: int, bos: int | None, eos: list[int], pad: int | None) -> dict[str, Any]:
    """genai_config.json for a decoder-only model whose graph has the I/O of `io_names` (schema as
    GenAI's model builder writes it: builders/base.py make_genai_config)."""
    # GenAI's parser takes no nulls: a special token the model lacks is left out (GenAI's defaults apply).
    special = {name: value for name, value in (("bos_token_id", bos), ("pad_token_id", pad),
                                                ("eos_token_id", eos if len(eos) != 1 else eos[0])) if value not in (None, [])}
    return {
        "model": {
            **special, "context_length": context, "type": model_type if model_type in KNOWN_TYPES else "decoder", "vocab_size": vocab,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename, "head_size": head_dim, "hidden_size": hidden, "num_attention_heads": heads,
                "num_hidden_layers": layers, "num_key_value_heads": kv_heads,
                "inputs": {"input_ids": INPUTS[0], "attention_mask": INPUTS[1], "position_ids": INPUTS[2],
                           "past_key_names": PAST[0], "past_value_names": PAST[1]},
                "outputs": {"logits": OUTPUT, "present_key_names": PRESENT[0], "present_value_names": PRESENT[1]},
            },
        },
        # Greedy by default: an application that sets nothing gets what the check measured.
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def ship_flat_tokenizer(src: Path, out_dir: Path) -> list[str]:
    """Copy the model's tokenizer (tokenizer.json, or every file of its directory) beside genai_config.json,
    where GenAI looks for it, adding DEFAULT_TOKENIZER_CONFIG if it has no tokenizer_config.json. Returns the names."""
    # A single file is GenAI's tokenizer.json whatever its name; a directory's files keep theirs, none may
    # take the name of a file the artifact already has.
    files = {f.name: f for f in sorted(src.iterdir()) if f.is_file()} if src.is_dir() else {"tokenizer.json": src}
    clash = sorted(set(files) & {p.name for p in out_dir.iterdir()})
    if clash:
        raise ValueError(f"the tokenizer directory {src} holds {', '.join(clash)}, a file of the GenAI artifact itself")
    names = []
    for name, f in files.items():
        shutil.copyfile(f, out_dir / name)
        names.append(name)
    if TOKENIZER_CONFIG not in names:
        (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(DEFAULT_TOKENIZER_CONFIG, indent=2) + "\n")
        names.append(TOKENIZER_CONFIG)
    return sorted(names)
