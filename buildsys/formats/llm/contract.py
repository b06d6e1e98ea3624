"""What the LLM export steps and runtimes agree on: the decoder's I/O names and the cache spec side file.

Every artifact of this family is one function `(tokens, cache_position, k_cache, v_cache) →
(logits, k_cache_out, v_cache_out)`: `tokens` [1, T] int64 ids, `cache_position` [T] int64 their
positions, the caches [layers, 1, kv_heads, max_cache_len, head_dim] float32 in and updated out.
`llm.json` beside the model file says the cache geometry and how many tokens one call takes.
Neutral ground: the steps and the runtimes import it, it imports neither.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buildsys.config.schema import Model

INPUTS = ("tokens", "cache_position", "k_cache", "v_cache")
OUTPUTS = ("logits", "k_cache_out", "v_cache_out")
#: The side file next to every artifact of the family.
SPEC_FILE = "llm.json"
#: The directory beside the model file that holds the tokenizer files the artifact ships with.
TOKENIZER_DIR = "tokenizer"
#: The runtime that computes a text-generation model's reference: PyTorch eager, no KV cache.
REFERENCE_RUNTIME = "llm-pytorch"


@dataclass(frozen=True)
class CacheSpec:
    """The static KV cache an artifact carries, and how many tokens one call of it takes."""

    layers: int
    kv_heads: int
    head_dim: int
    max_cache_len: int
    vocab: int
    #: Most tokens per call: max_seq_len for a dynamic sequence axis (ONNX), 1 for fixed shapes (.pte).
    max_chunk: int

    @property
    def cache_shape(self) -> tuple[int, ...]:
        return (self.layers, 1, self.kv_heads, self.max_cache_len, self.head_dim)

    def write(self, out_dir: Path) -> None:
        (out_dir / SPEC_FILE).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, model_file: Path) -> "CacheSpec":
        """The spec beside an artifact's main file."""
        return cls(**json.loads((Path(model_file).parent / SPEC_FILE).read_text()))


def ship_tokenizer(model: "Model", root: Path, out_dir: Path) -> list[str]:
    """Copy the model's tokenizer (a file, or every file of a directory) into `out_dir/tokenizer/`, so
    the artifact, and every bundle of it, carries what turns text into its ids. Returns the names."""
    assert model.generation is not None
    src = root / model.generation.tokenizer
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    dest = out_dir / TOKENIZER_DIR
    dest.mkdir()
    for f in files:
        rel = f.relative_to(src) if src.is_dir() else Path(f.name)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest / rel)
    return [p.relative_to(dest).as_posix() for p in sorted(dest.rglob("*")) if p.is_file()]
