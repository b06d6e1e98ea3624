"""Model data sets: loading (.npz/.npy/callable, seeded synthetic fallback) and plan-time shape checks.

The loaders run in workers and use numpy; `peek_shapes` and `shape_problem` run in the planner
and read only .npy headers, so planning never imports numpy.
"""

from __future__ import annotations

import ast
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import DataSource, InputSpec, Model

from buildsys.errors import DataError

SETS = ("example", "calibration", "validation")


@dataclass
class Batch:
    """Samples along the first axis of every input, with optional integer labels."""

    inputs: dict[str, "np.ndarray"]
    labels: "np.ndarray | None"
    origin: str  # where the samples came from, for reports: "validation: data/val.npz"

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def chunks(self, size: int) -> Iterator[dict[str, "np.ndarray"]]:
        """Yield input dicts of at most `size` samples, in order."""
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}


def load_set(model: "Model", which: str, root: Path) -> Batch | None:
    """Load data set `which` of `model`, cast to the declared dtypes, or None if it is not given."""
    spec: DataSource | None = getattr(model.data, which)
    if spec is None:
        return None
    import numpy as np

    labels = None
    if spec.path is not None:
        path = root / spec.path
        if path.suffix == ".npy":
            if len(model.inputs) != 1:
                raise ValueError(f"{spec.path}: an .npy file can feed only a single-input model")
            arrays = {model.inputs[0].name: np.load(path)}
        else:
            with np.load(path) as archive:
                arrays = {k: archive[k] for k in archive.files}
        origin = f"{which}: {spec.path}"
    else:
        assert spec.callable is not None  # DataSource holds exactly one of path and callable
        arrays = dict(_call(spec.callable, root))
        origin = f"{which}: {spec.callable}()"
    if spec.labels in arrays:
        labels = np.asarray(arrays.pop(spec.labels)).astype(np.int64)
    inputs = {}
    for inp in model.inputs:
        if inp.name not in arrays:
            raise ValueError(f"{origin} has no array named '{inp.name}' (has: {', '.join(sorted(arrays))})")
        inputs[inp.name] = np.ascontiguousarray(arrays[inp.name], dtype=inp.dtype)
    if spec.limit is not None:
        inputs = {k: v[: spec.limit] for k, v in inputs.items()}
        labels = labels[: spec.limit] if labels is not None else None
    batch = Batch(inputs, labels, origin)
    problem = batch_problem(batch, spec.labels)
    if problem:
        raise DataError(f"{origin}: {problem}", hint="fix the data set; no artifact is judged on it")
    return batch


def batch_problem(batch: Batch, labels_name: str = "labels") -> str | None:
    """Why `batch` cannot judge an artifact (samples that disagree in number, labels that do not fit,
    non-finite inputs), or None. Found here, such data is reported as bad data instead of surfacing
    later as an artifact's failed check."""
    import numpy as np

    shapes = {name: value.shape for name, value in batch.inputs.items()}
    if batch.labels is not None:
        shapes[labels_name] = batch.labels.shape
    problem = count_problem(shapes, list(batch.inputs), labels_name)
    if problem:
        return problem
    n = len(batch)
    for name, value in batch.inputs.items():
        if value.dtype.kind == "f":
            bad = ~np.isfinite(value.reshape(n, -1)).all(axis=1) if n else np.zeros(0, bool)
            if bad.any():
                first = int(np.argmax(bad))
                return (f"input '{name}' holds NaN or inf in {int(bad.sum())} of {n} samples (the first: sample {first})")
    return None


def synthetic(model: "Model") -> Batch:
    """Seeded random inputs following the signature: same seed, same samples, on every host."""
    import numpy as np

    rng = np.random.default_rng(model.seed)
    inputs = {}
    for inp in model.inputs:
        shape = (model.samples, *[d if isinstance(d, int) else 1 for d in inp.shape[1:]])
        if inp.dtype.startswith("float"):
            inputs[inp.name] = rng.standard_normal(shape).astype(inp.dtype)
        elif inp.dtype == "bool":
            inputs[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            inputs[inp.name] = rng.integers(0, 10, shape).astype(inp.dtype)
    return Batch(inputs, None, f"synthetic (seed {model.seed}, {model.samples} samples)")


def eval_batch(model: "Model", root: Path, prefer: tuple[str, ...] = ("validation", "example")) -> Batch:
    """The first data set present in `prefer`, else synthetic inputs. (A text-generation model's
    reference reads its prompts and held text instead: formats/llm/prompts.py.)"""
    for which in prefer:
        batch = load_set(model, which, root)
        if batch is not None:
            return batch
    return synthetic(model)


#: The evaluation data of a text-generation model: its prompts, held text and tokenizer (config/generation.py).
GENERATION = "generation"
#: The tokenizer alone: the LLM export steps ship it beside the artifact (formats/llm/).
TOKENIZER = "tokenizer"


def used_set(model: "Model", prefer: tuple[str, ...] = ("validation", "example")) -> str | None:
    """Name of the set `eval_batch` would load (None for synthetic): its digest enters keys. A
    text-generation model evaluates on GENERATION; its export steps trace with ids of their own."""
    if model.task == "text-generation":
        return GENERATION if prefer[0] == "validation" else None
    return next((w for w in prefer if getattr(model.data, w) is not None), None)


#: Data a node declares by purpose, and the sets that serve it in order: tracing takes the example
#: set, else validation; evaluation (the reference) takes validation, else the example set.
PURPOSES = {"example": ("example", "validation"), "evaluation": ("validation", "example")}


def resolve_set(model: "Model", which: str) -> str | None:
    """The data set a node that declares `which` (a set or a purpose) reads, None for synthetic inputs."""
    return used_set(model, PURPOSES[which]) if which in PURPOSES else which


def _call(spec: str, root: Path) -> dict[str, Any]:
    import importlib
    import sys

    module_name, _, attr = spec.partition(":")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return getattr(importlib.import_module(module_name), attr)()


# --- plan-time checks (no numpy) -------------------------------------------------------------


def _npy_header(stream: Any) -> tuple[tuple[int, ...], str]:
    magic = stream.read(8)
    if magic[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy array")
    size_format = "<H" if magic[6] == 1 else "<I"
    (length,) = struct.unpack(size_format, stream.read(struct.calcsize(size_format)))
    header = ast.literal_eval(stream.read(length).decode("latin1"))
    return tuple(header["shape"]), str(header["descr"])


def peek_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes in an .npz/.npy file, read from headers only ('' names the array of an .npy)."""
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            return {"": _npy_header(f)[0]}
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".npy"):
                with archive.open(name) as f:
                    shapes[name[:-4]] = _npy_header(f)[0]
    return shapes


def count_problem(shapes: dict[str, tuple[int, ...]], inputs: list[str], labels: str) -> str | None:
    """Why the arrays of one file disagree on the number of samples (inputs vs each other, labels vs
    inputs), from header shapes alone; None when they agree."""
    counts = {name: shapes[name][0] for name in inputs if shapes.get(name)}
    if len(set(counts.values())) > 1:
        return "the inputs hold different numbers of samples (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")"
    if labels in shapes and counts:
        n = next(iter(counts.values()))
        if shapes[labels] != (n,):
            return (f"'{labels}' has shape {list(shapes[labels])}, but there are {n} samples: labels need one class "
                    f"index per sample, shape [{n}]")
    return None


def shape_problem(inp: "InputSpec", shape: tuple[int, ...]) -> str | None:
    """Why an array of `shape` (samples first) cannot feed `inp`, or None if it can."""
    if len(shape) != len(inp.shape):
        return f"'{inp.name}' has shape {list(shape)} but the model declares {inp.shape} ({len(inp.shape)} axes)"
    for axis, (want, got) in enumerate(zip(inp.shape, shape)):
        if axis > 0 and isinstance(want, int) and want != got:
            return f"'{inp.name}' has shape {list(shape)} but the model declares {inp.shape} (axis {axis}: {got} ≠ {want})"
    return None
