"""A Triton model repository as Triton reads it: the layout contract the Triton steps write and the runtimes read.

    model_repository/<name>/config.pbtxt
    model_repository/<name>/<version>/model.onnx | model.pt

`locate` finds the one model of a repository the way Triton does (config.pbtxt parsed with Triton's
ModelConfig schema, numeric version directories, the backend's default file name). The Triton steps,
the layout runtime and the server runtime all import this module; it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.errors import StepError
from buildsys.formats.serving.pbtxt import parse_config

REPOSITORY = "model_repository"
CONFIG = "config.pbtxt"
# Triton's data types by numpy / signature dtype name.
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "string": "TYPE_STRING",
}
# Default model file per backend (Triton's `default_model_filename` when the config sets none).
MODEL_FILES = {"onnxruntime": "model.onnx", "pytorch": "model.pt"}
PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}
INVALID = "TYPE_INVALID"  # ModelConfig's data_type when a config leaves it out


@dataclass
class Layout:
    """One model found in a repository: its parsed config, backend, version and model file."""

    config: dict[str, Any]
    backend: str  # "onnxruntime" | "pytorch"
    model_dir: Path
    version: int
    model_file: Path


def find_model_dir(path: Path) -> Path:
    """The one model directory (holding config.pbtxt) of a repository, or `path` itself if it is one."""
    path = Path(path)
    if (path / CONFIG).is_file():
        return path
    found = sorted(p.parent for p in path.glob(f"*/{CONFIG}")) if path.is_dir() else []
    if len(found) != 1:
        raise StepError(f"'{path.name}' should hold exactly one model directory with a {CONFIG}, "
                        f"found {len(found)}" + (f" ({', '.join(p.name for p in found)})" if found else ""))
    return found[0]


def read_config(model_dir: Path) -> dict[str, Any]:
    """The parsed config.pbtxt of a model directory (StepError naming the file when it is not valid)."""
    where = f"{model_dir.name}/{CONFIG}"
    try:
        text = (model_dir / CONFIG).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StepError(f"{where} is not UTF-8 text: {exc}") from exc
    return parse_config(text, where)


def config_backend(config: dict[str, Any]) -> str:
    """The backend a config selects: `backend`, else the one its `platform` implies, else ''."""
    return str(config.get("backend") or PLATFORMS.get(str(config.get("platform", "")), ""))


def locate(path: Path) -> Layout:
    """The model in a repository directory (or in a model directory holding config.pbtxt itself).

    Raises StepError naming what is missing: no or several model directories, a config that is not a
    valid ModelConfig, a name that differs from its directory, an unknown backend, no version directory
    with the file.
    """
    model_dir = find_model_dir(path)
    config = read_config(model_dir)
    if config.get("name", model_dir.name) != model_dir.name:
        raise StepError(f"{model_dir.name}/{CONFIG} names the model '{config['name']}', but Triton needs the "
                        f"name of its directory, '{model_dir.name}'")
    backend = config_backend(config)
    if backend not in MODEL_FILES:
        raise StepError(f"{model_dir.name}/{CONFIG}: backend/platform "
                        f"'{config.get('backend') or config.get('platform')}' is not one modelbuild can run "
                        f"(known: {', '.join(sorted([*MODEL_FILES, *PLATFORMS]))})")
    filename = str(config.get("default_model_filename") or MODEL_FILES[backend])
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()
                       and (p / filename).is_file()), reverse=True)
    if not versions:
        raise StepError(f"{model_dir.name}/ has no version directory (<name>/<number>/) holding {filename}")
    return Layout(config, backend, model_dir, versions[0], model_dir / str(versions[0]) / filename)
