"""The "triton-layout" runtime: run the model file inside a Triton model repository, as Triton would find it.

No Triton server is involved. `repository.locate` reads the repository the way Triton does, and the
session delegates to the ONNX Runtime or TorchScript runtime on that file. Around it, every request and reply
is held to config.pbtxt: shapes against `dims` (and `max_batch_size`), element types against
`data_type`, so a config that Triton would reject fails the check here too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session
from buildsys.formats.serving.repository import CONFIG, INVALID, TRITON_TYPES, Layout, locate

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

class TritonSession(Session):
    """The backend's session, with each call checked against config.pbtxt like Triton checks requests."""

    def __init__(self, inner: Session, layout: Layout, model: "Model", input_types: dict[str, str]):
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


def backend_session(layout: Layout, runtime: str, model: "Model", root: Path,
                    input_types: Callable[[Any], dict[str, str]]) -> Session:
    """The model file of a repository run by `runtime` (its backend's own), each call held to config.pbtxt;
    `input_types` reads what the loaded model takes from its session, by input name (held to `data_type`)."""
    from buildsys.formats import get_runtime

    inner = get_runtime(runtime).load(layout.model_file, model, root)
    return TritonSession(inner, layout, model, input_types(inner))


def _entry(entries: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for entry in entries:
        if entry.get("name") == name:
            return entry
    raise StepError(f"config.pbtxt declares no {what} '{name}' (it declares: "
                    f"{', '.join(str(e.get('name')) for e in entries) or 'none'})")


class TritonRepository(Runtime):
    """A Triton model repository, run as Triton would find it: `locate` reads it the way Triton does and its
    model file runs in the backend's own runtime (`backend_session`). `inspect` reports its structure on any
    host: what `locate` refuses, else the facts of every repository and what `_structure` adds."""

    def locate(self, path: Path) -> Layout:
        """The repository's model, read the way Triton reads it (StepError naming what is missing or wrong)."""
        raise NotImplementedError

    def _structure(self, layout: Layout, model: "Model", fmt: str) -> tuple[dict[str, Any], list[str]]:
        """This backend's facts of a repository that `locate` accepted, and its problems."""
        raise NotImplementedError

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        """The repository's structure (config parses, names match, files where Triton looks), on any host."""
        try:
            layout = self.locate(path)
        except StepError as exc:
            return {"facts": {}, "problems": [exc.what]}
        facts, problems = self._structure(layout, model, fmt)
        config = layout.config
        files = sorted(p.relative_to(layout.model_dir).as_posix() for p in layout.model_dir.rglob("*") if p.is_file())
        return {"facts": {"model_name": config.get("name", layout.model_dir.name), "version": layout.version,
                          "max_batch_size": config.get("max_batch_size", 0), **facts, "files": files},
                "problems": problems}


@register_runtime
class TritonLayout(TritonRepository):
    """A Triton model repository, run through the backend's own runtime on its model file."""

    name = "triton-layout"
    packages = ("onnxruntime", "torch", "tritonclient", "protobuf")

    requires = ("onnxruntime", "torch")

    def locate(self, path: Path) -> Layout:
        return locate(path)

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        layout = self.locate(path)
        if layout.backend == "onnxruntime":
            return backend_session(layout, "onnxruntime", model, root, lambda inner: {
                name: dtype for name, dtype in getattr(inner, "input_types", {}).items() if dtype})
        # A TorchScript module declares no input types: the signature's are what it is fed.
        return backend_session(layout, "torchscript", model, root,
                               lambda inner: {spec.name: spec.dtype for spec in model.inputs})

    def _structure(self, layout: Layout, model: "Model", fmt: str) -> tuple[dict[str, Any], list[str]]:
        """The backend the format needs and the ONNX model's external-data files; the I/O as declared."""
        config = layout.config
        problems = _missing_side_files(layout.model_file) if layout.backend == "onnxruntime" else []
        expected = "pytorch" if fmt.endswith("torchscript") else "onnxruntime"
        if layout.backend != expected:
            problems.append(f"format {fmt} is served by Triton's {expected} backend, but {CONFIG} selects "
                            f"{layout.backend}")
        facts = {"backend": layout.backend,
                 "inputs": [{k: e.get(k) for k in ("name", "data_type", "dims")} for e in config.get("input", [])],
                 "outputs": [{k: e.get(k) for k in ("name", "data_type", "dims")} for e in config.get("output", [])],
                 "dynamic_batching": "dynamic_batching" in config}
        return facts, problems


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
