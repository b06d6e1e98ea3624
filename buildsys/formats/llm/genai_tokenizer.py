"""Why ONNX Runtime GenAI's tokenizer encodes a text otherwise than the model's tokenizer.json, in words.

GenAI encodes with its own implementation (onnxruntime-extensions), which reads a tokenizer.json as a
byte-level BPE (GPT-2's kind) whatever its pre-tokenizer says. Measured with onnxruntime-genai 0.18 on BPE
tokenizers trained on the tests' corpus (docs/llm.md#onnx-runtime-genai): it reproduces a byte-level BPE
(`ByteLevel` pre-tokenizer without `add_prefix_space`), with or without added tokens and an NFC/NFKC
normalizer; it does not reproduce the `Whitespace`, `WhitespaceSplit`, `BertPreTokenizer`, `Metaspace` or
`Digits` pre-tokenizers (the spaces they drop come out as id -1, or digits merge), `add_prefix_space`, or
a `Lowercase` normalizer (ignored), and it refuses a Unigram model at load. `unreproduced` names the parts
of a tokenizer.json among those; `mismatch` says where the ids part and what the user can do. Standard
library only.
"""

from __future__ import annotations

from typing import Any

#: Pre-tokenizers GenAI's byte-level BPE reproduces; normalizers it reproduces (on the texts measured).
REPRODUCED_PRE = ("ByteLevel",)
REPRODUCED_NORMALIZERS = ("NFC", "NFKC")
#: Around the first differing position, this many ids either side are shown.
AROUND = 4


def _types(node: Any, key: str) -> list[dict[str, Any]]:
    """The components of a tokenizer.json pre-tokenizer or normalizer, a Sequence's members flattened."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [part for member in node.get(key, []) for part in _types(member, key)]
    return [node]


def unreproduced(tokenizer: dict[str, Any]) -> list[str]:
    """The parts of `tokenizer` (a parsed tokenizer.json) that GenAI's tokenizer does not reproduce, in words."""
    parts = []
    model = (tokenizer.get("model") or {}).get("type")
    if model and model != "BPE":
        parts.append(f"model {model} (GenAI's tokenizer reads BPE vocabularies)")
    for pre in _types(tokenizer.get("pre_tokenizer"), "pretokenizers"):
        if pre.get("type") not in REPRODUCED_PRE:
            parts.append(f"pre-tokenizer {pre.get('type')} (GenAI splits text as GPT-2's byte-level BPE does)")
        elif pre.get("add_prefix_space"):
            parts.append("pre-tokenizer ByteLevel with add_prefix_space (GenAI adds no space before the text)")
    for norm in _types(tokenizer.get("normalizer"), "normalizers"):
        if norm.get("type") not in REPRODUCED_NORMALIZERS:
            parts.append(f"normalizer {norm.get('type')} (not applied by GenAI's tokenizer)")
    return parts


def first_difference(got: list[int], expected: list[int]) -> int:
    """The first position where two id sequences differ (the shorter one's length if one is a prefix)."""
    return next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))


def mismatch(text: str, got: list[int], expected: list[int], parts: list[str], wrong: int, texts: int) -> str:
    """The finding of a check whose GenAI tokenizer encodes `wrong` of `texts` texts otherwise, the first being
    `text` (GenAI's ids `got`, tokenizer.json's `expected`), with the unreproduced `parts` of the tokenizer."""
    at = first_difference(got, expected)
    window = slice(max(0, at - AROUND), at + AROUND + 1)
    why = ("GenAI does not reproduce its " + "; ".join(parts)) if parts else \
        "no part of tokenizer.json is known to differ (added tokens or merges GenAI reads otherwise)"
    return (f"GenAI's tokenizer encodes {wrong} of {texts} texts otherwise than the model's tokenizer.json: the "
            f"first, {text[:60]!r}, parts at token {at} of {len(expected)}: GenAI {got[window]} vs tokenizer.json "
            f"{expected[window]} (ids {window.start}-{window.start + max(len(got[window]), len(expected[window])) - 1}); "
            f"{why}. An application calling og.Tokenizer would feed other ids than those checked: retrain or convert "
            "the tokenizer to a byte-level BPE (pre-tokenizer ByteLevel without add_prefix_space, GPT-2's kind), or "
            "tokenize with Hugging Face tokenizers in the application and feed GenAI the ids (append_tokens)")
