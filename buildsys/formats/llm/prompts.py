"""A text-generation model's evaluation data: prompts and held text, tokenized into the fixed signature.

Each sample pairs one prompt with one window of held text (`max_seq_len` tokens; the shorter list
is cycled), both right-padded with PAD, so that the reference and every check see the same ids.
Runs in workers (it imports `tokenizers`); the planner only hashes the files (inputs.generation_files).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from buildsys.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.data import Batch
    from buildsys.config.schema import Model

#: Padding of the id rows (no tokenizer gives a negative id).
PAD = -1


def tokenizer_file(root: Path, rel: str) -> Path:
    """The tokenizer.json a `tokenizer:` setting names (the file, or the one in a directory)."""
    path = root / rel
    return path / "tokenizer.json" if path.is_dir() else path


def _encoder(root: Path, rel: str) -> Callable[[str], list[int]]:
    """Text → ids with the model's tokenizer (no special tokens: the prompt is the text as written)."""
    from tokenizers import Tokenizer

    path = tokenizer_file(root, rel)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise DataError(f"{rel}: not a tokenizer.json that Hugging Face tokenizers can load: {exc}",
                        hint="give the tokenizer.json the model was trained with (or its directory)") from exc
    return lambda text: list(tokenizer.encode(text, add_special_tokens=False).ids)


def prompt_batch(model: "Model", root: Path) -> "Batch":
    """The prompts and held-text windows of `model` as a Batch of padded id rows."""

    from buildsys.config.data import Batch

    gen = model.generation
    assert gen is not None  # eval_batch calls this only for text-generation models
    encode = _encoder(root, gen.tokenizer)
    lines = [line.strip() for line in (root / gen.prompts).read_text(encoding="utf-8").splitlines()]
    prompts = [encode(line) for line in lines if line]
    if not prompts:
        raise DataError(f"{gen.prompts}: no prompt (one per line)", hint="write at least one non-blank line")
    room = gen.max_cache_len - gen.new_tokens
    for i, ids in enumerate(prompts):
        if not 1 <= len(ids) <= room:
            raise DataError(f"{gen.prompts}: prompt {i + 1} has {len(ids)} tokens; with new_tokens {gen.new_tokens} "
                            f"it must have 1 to {room} to fit max_cache_len {gen.max_cache_len}",
                            hint="shorten the prompt or raise generation.max_cache_len")
    held = encode((root / (gen.held_text or gen.prompts)).read_text(encoding="utf-8"))
    windows = [held[s:s + gen.max_seq_len] for s in range(0, len(held), gen.max_seq_len)]
    windows = [w for w in windows if len(w) >= 2]  # a window of one token predicts nothing
    if not windows:
        raise DataError(f"{gen.held_text or gen.prompts}: fewer than 2 tokens of held text",
                        hint="the NLL needs a text to predict")
    n = max(len(prompts), len(windows))
    inputs = {"prompt_ids": _padded([prompts[i % len(prompts)] for i in range(n)]),
              "text_ids": _padded([windows[i % len(windows)] for i in range(n)])}
    return Batch(inputs, None, f"generation: {len(prompts)} prompt(s) of {gen.prompts}, {len(windows)} window(s) "
                               f"of {gen.held_text or gen.prompts}")


def _padded(rows: list[list[int]]) -> "np.ndarray":
    import numpy as np

    out = np.full((len(rows), max(len(r) for r in rows)), PAD, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out
