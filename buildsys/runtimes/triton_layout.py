"""The "triton-layout" runtime: run the model file inside a Triton model repository, as Triton would find it.

No Triton server is involved. `locate` reads the repository the way Triton does (one model directory
with config.pbtxt parsed with Triton's own `ModelConfig` protobuf schema, numeric version directories,
the backend's default file name) and the session
delegates to the ONNX Runtime or TorchScript runtime on that file. Around it, every request and reply
is held to config.pbtxt: shapes against `dims` (and `max_batch_size`), element types against
`data_type`, so a config that Triton would reject fails the check here too.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.runtimes import register
from buildsys.runtimes.base import Runtime, Session

if TYPE_CHECKING:
    import numpy as np
    from google.protobuf.message import Message

    from buildsys.config.schema import Model

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


def model_config_class() -> type["Message"]:
    """Triton's `inference.ModelConfig` message, from the model_config.proto that tritonclient ships.

    The generated module is loaded from its file so that reading a config needs only protobuf, not
    gRPC (importing `tritonclient.grpc` starts the whole gRPC client).
    """
    name = "tritonclient.grpc.model_config_pb2"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.find_spec("tritonclient")
        if spec is None or not spec.submodule_search_locations:
            raise StepError("reading config.pbtxt needs Triton's ModelConfig schema from tritonclient "
                            "(pip install -c constraints.txt --no-deps tritonclient)")
        path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None or not path.is_file():
            raise StepError(f"tritonclient has no {path.name}; reinstall tritonclient")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # one registration of model_config.proto in protobuf's pool
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module.ModelConfig  # type: ignore[no-any-return]


def parse_config(text: str, where: str) -> dict[str, Any]:
    """config.pbtxt text → dict, validated against Triton's ModelConfig schema.

    An unknown field, a bad enum value or a malformed value raises StepError with protobuf's message
    (line:column) and `where` (the file). The dict holds the fields that are set, as protobuf sees
    them: enums by name ("TYPE_FP32"), integers as int, repeated fields as lists, maps as dicts;
    scalars at their default (max_batch_size 0, kind KIND_AUTO) are absent, as they are to Triton.
    """
    from google.protobuf import text_format

    message = model_config_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise StepError(f"{where} is not a valid Triton ModelConfig: {str(exc).rstrip('.')}; fix it or rebuild "
                        "the target") from exc
    return message_dict(message)


def message_dict(message: "Message") -> dict[str, Any]:
    """The set fields of a protobuf message as plain Python values (see `parse_config`)."""
    return {field.name: _field_value(field, value) for field, value in message.ListFields()}


def _field_value(field: Any, value: Any) -> Any:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        inner = entry.fields_by_name["value"]
        return {key: _single(inner, item) for key, item in value.items()}
    if _repeated(field):
        return [_single(field, item) for item in value]
    return _single(field, value)


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.28; `label` is deprecated there
    if flag is not None:
        return bool(flag)
    return bool(field.label == field.LABEL_REPEATED)


def _single(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_MESSAGE:
        return message_dict(value)
    if field.type == field.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    return value


def find_model_dir(path: Path) -> Path:
    """The one model directory (holding config.pbtxt) of a repository, or `path` itself if it is one."""
    from buildsys.steps.triton import CONFIG

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
    from buildsys.steps.triton import CONFIG

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
    from buildsys.steps.triton import CONFIG

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


class TritonSession(Session):
    """The backend's session, with each call checked against config.pbtxt like Triton checks requests."""

    def __init__(self, inner: Session, layout: Layout, model: "Model", input_types: dict[str, str]):
        from buildsys.steps.triton import TRITON_TYPES

        self.inner = inner
        self.model = model
        config = layout.config
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.max_batch = min(inner.max_batch, self.max_batch_size) if self.max_batch_size > 0 else inner.max_batch
        entries_in = config.get("input", [])
        entries_out = config.get("output", [])
        if layout.backend == "pytorch":  # positional: INPUT__i is the signature's i-th input
            self.inputs = {spec.name: _entry(entries_in, f"INPUT__{i}", "input") for i, spec in enumerate(model.inputs)}
            self.outputs = [_entry(entries_out, f"OUTPUT__{i}", "output") for i in range(len(model.outputs))]
        else:
            self.inputs = {name: _entry(entries_in, name, "input") for name in input_types}
            self.outputs = [_entry(entries_out, spec.name, "output") for spec in model.outputs]
        for name, dtype in input_types.items():  # what the model takes must be what config.pbtxt declares
            entry = self.inputs[name]
            if TRITON_TYPES.get(dtype) != entry.get("data_type", INVALID):
                raise StepError(f"config.pbtxt declares input '{entry['name']}' as "
                                f"{entry.get('data_type', INVALID)}, but the model takes {dtype}")

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        for name, entry in self.inputs.items():
            self._conform(entry, feeds[name].shape, "request input")
        outputs = self.inner.run(feeds)
        from buildsys.steps.triton import TRITON_TYPES

        for entry, value in zip(self.outputs, outputs):
            self._conform(entry, value.shape, "model output")
            if TRITON_TYPES.get(str(value.dtype)) != entry.get("data_type", INVALID):
                raise StepError(f"config.pbtxt declares output '{entry['name']}' as "
                                f"{entry.get('data_type', INVALID)}, but the model returns {value.dtype}")
        return outputs

    def _conform(self, entry: dict[str, Any], shape: tuple[int, ...], what: str) -> None:
        """Raise when `shape` is not what Triton would accept for `entry` (dims, reshape, batch)."""
        # With a reshape the model sees the reshaped shape (a per-sample scalar declared as dims [1]).
        dims = list(entry["reshape"].get("shape", [])) if "reshape" in entry else list(entry.get("dims", []))
        sample = list(shape)
        if self.max_batch_size > 0:
            if not sample or sample[0] > self.max_batch_size:
                raise StepError(f"{what} '{entry['name']}' has shape {sample}, which does not fit max_batch_size "
                                f"{self.max_batch_size}")
            sample = sample[1:]
        if len(sample) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, sample)):
            raise StepError(f"{what} '{entry['name']}' has shape {list(shape)}, but config.pbtxt declares dims "
                            f"{entry.get('dims')}" + (" after the batch axis" if self.max_batch_size > 0 else ""))


def _entry(entries: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for entry in entries:
        if entry.get("name") == name:
            return entry
    raise StepError(f"config.pbtxt declares no {what} '{name}' (it declares: "
                    f"{', '.join(str(e.get('name')) for e in entries) or 'none'})")


@register
class TritonLayout(Runtime):
    """A Triton model repository, run through the backend's own runtime on its model file."""

    name = "triton-layout"
    packages = ("onnxruntime", "torch", "tritonclient", "protobuf")

    def unavailable(self) -> str | None:
        from buildsys.runtimes.torch_eager import torch_unavailable

        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install -c constraints.txt 'modelbuild[server]')"
        return torch_unavailable()

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        from buildsys.runtimes import get_runtime

        layout = locate(path)
        if layout.backend == "onnxruntime":
            inner = get_runtime("onnxruntime").load(layout.model_file, model, root)
            input_types = {name: dtype for name, dtype in getattr(inner, "input_types", {}).items() if dtype}
        else:
            inner = get_runtime("torchscript").load(layout.model_file, model, root)
            input_types = {spec.name: spec.dtype for spec in model.inputs}
        return TritonSession(inner, layout, model, input_types)

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        """The repository's structure (config parses, names match, files where Triton looks), on any host."""
        from buildsys.steps.triton import CONFIG

        try:
            layout = locate(path)
        except StepError as exc:
            return {"facts": {}, "problems": [exc.what]}
        config = layout.config
        problems = []
        files = sorted(p.relative_to(layout.model_dir).as_posix() for p in layout.model_dir.rglob("*") if p.is_file())
        if layout.backend == "onnxruntime":
            problems += _missing_side_files(layout.model_file)
        expected = "pytorch" if fmt.endswith("torchscript") else "onnxruntime"
        if layout.backend != expected:
            problems.append(f"format {fmt} is served by Triton's {expected} backend, but {CONFIG} selects "
                            f"{layout.backend}")
        facts = {"model_name": config.get("name", layout.model_dir.name), "backend": layout.backend,
                 "version": layout.version, "max_batch_size": config.get("max_batch_size", 0),
                 "inputs": [{k: e.get(k) for k in ("name", "data_type", "dims")} for e in config.get("input", [])],
                 "outputs": [{k: e.get(k) for k in ("name", "data_type", "dims")} for e in config.get("output", [])],
                 "dynamic_batching": "dynamic_batching" in config, "files": files}
        return {"facts": facts, "problems": problems}


def _missing_side_files(model_file: Path) -> list[str]:
    """External-data files an ONNX model references that are not next to it (the weights are not read)."""
    if importlib.util.find_spec("onnx") is None:
        return []
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    try:
        proto = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:
        return [f"{model_file.name} is not a readable ONNX file: {type(exc).__name__}"]
    missing = {ExternalDataInfo(t).location for t in _get_all_tensors(proto) if uses_external_data(t)}
    return [f"{model_file.parent.name}/{m} (external data of {model_file.name}) is missing"
            for m in sorted(missing) if not (model_file.parent / m).is_file()]
