"""The layout record, layout.json: how a converter moved an artifact's axes, and how to feed and read it.

onnx2tf moves channels last (NCHW → NHWC, NCL → NLC) because that is what TFLite kernels want.
What it did to each input and output is written to `layout.json` next to the SavedModel and copied
along by the TFLite steps. This module is the contract between the steps that write it and the
runtimes (LiteRT, TensorFlow) that read it: both import it, it imports neither.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

LAYOUT_FILE = "layout.json"
SIGNATURE = "serving_default"
# Axis letters for inputs whose signature declares no layout: channels first, as PyTorch has them.
DEFAULT_LETTERS = {1: "N", 2: "NC", 3: "NCL", 4: "NCHW", 5: "NCDHW"}


def channels_last(rank: int) -> list[int]:
    """The permutation onnx2tf applies to a channels-first tensor of `rank` axes (identity below 3)."""
    return [0, *range(2, rank), 1] if rank >= 3 else list(range(rank))


def read_layout(directory: Path) -> dict[str, Any] | None:
    """The layout record next to an artifact, or None when there is none (a foreign file)."""
    path = Path(directory) / LAYOUT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def to_artifact(array: "np.ndarray", perm: list[int]) -> "np.ndarray":
    """An array in the source layout, transposed to the artifact's (contiguous, ready to feed)."""
    import numpy as np

    return np.ascontiguousarray(np.transpose(array, perm)) if perm != sorted(perm) else array


def from_artifact(array: "np.ndarray", perm: list[int]) -> "np.ndarray":
    """An artifact output transposed back to the source layout."""
    import numpy as np

    return np.ascontiguousarray(np.transpose(array, np.argsort(perm))) if perm != sorted(perm) else array


def _fits(want: list[int | str | None], have: list[int | None]) -> bool:
    """Whether a TF shape (None = dynamic) can be the ONNX shape `want` (str/None = dynamic)."""
    return len(want) == len(have) and all(
        not isinstance(w, int) or h is None or w == h for w, h in zip(want, have))


def match_perm(onnx_shape: list[int | str | None], tf_shape: list[int | None], moved: bool) -> list[int]:
    """How the TF tensor's axes map onto the ONNX tensor's: the first permutation that fits the shapes.

    Where both fit (a square [N, 8, 8, 8] tensor) the converter's rule (`moved`) decides.
    """
    rank = len(tf_shape)
    last, same = channels_last(rank), list(range(rank))
    candidates = [last, same] if moved else [same, last]
    for perm in candidates:
        if _fits([onnx_shape[p] for p in perm] if len(onnx_shape) == rank else [], tf_shape):
            return perm
    return candidates[0]


def letters(spec_layout: str | None, rank: int) -> str:
    """The axis letters of a tensor: the signature's layout, else channels first as PyTorch has them."""
    return spec_layout or DEFAULT_LETTERS.get(rank, "".join(chr(ord("A") + i) for i in range(rank)))


def signature_key(name: str) -> str:
    """A TF signature key for an ONNX tensor name (TF rejects characters such as ':' and spaces)."""
    key = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)
    return key if key and key[0].isalpha() else f"t_{key}"


def guess_perm(source: list[Any], artifact: list[int]) -> list[int]:
    """For a file without layout.json: channels last when the shapes say so, else the identity."""
    have = [None if d < 0 else int(d) for d in artifact]
    return match_perm([d if isinstance(d, int) else None for d in source], have, moved=len(source) >= 3)


def copy_layout(src_dir: Path, out_dir: Path) -> dict[str, Any] | None:
    """Copy layout.json from an upstream node's folder into `out_dir` (it travels with the artifact)."""
    src = Path(src_dir) / LAYOUT_FILE
    if not src.is_file():
        return None
    shutil.copyfile(src, Path(out_dir) / LAYOUT_FILE)
    return json.loads(src.read_text())
