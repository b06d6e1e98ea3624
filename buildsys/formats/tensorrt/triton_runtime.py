"""The "triton-tensorrt-layout" runtime: the engine inside a Triton repository, run as Triton would find it.

Like `triton-layout` for the ONNX and libtorch backends: the repository is read the way Triton reads
it (config.pbtxt parsed with the ModelConfig schema, highest numeric version holding model.plan), the
engine runs through the `tensorrt` runtime, and every request and reply is held to config.pbtxt's
dims and data types. The structural inspection (`inspect`) needs no GPU, so it holds on every host.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Session
from buildsys.formats.serving.repository import CONFIG, Layout, find_model_dir, read_config
from buildsys.formats.serving.triton_layout import TritonRepository, backend_session
from buildsys.formats.tensorrt.profiles import PLAN
from buildsys.formats.tensorrt.runtime import tensorrt_unavailable

if TYPE_CHECKING:
    from buildsys.config.schema import Model

TENSORRT_PLATFORM = "tensorrt_plan"  # the same string as triton_plan.TENSORRT_PLATFORM (a step module)


def locate_plan(path: Path) -> Layout:
    """The TensorRT model of a repository (StepError naming what is missing or wrong)."""
    model_dir = find_model_dir(path)
    config = read_config(model_dir)
    where = f"{model_dir.name}/{CONFIG}"
    if config.get("name", model_dir.name) != model_dir.name:
        raise StepError(f"{where} names the model '{config['name']}', but Triton needs the name of its directory, "
                        f"'{model_dir.name}'")
    if config.get("platform") != TENSORRT_PLATFORM and config.get("backend") != "tensorrt":
        raise StepError(f"{where} selects '{config.get('platform') or config.get('backend')}', not the TensorRT "
                        f"backend (platform: \"{TENSORRT_PLATFORM}\")")
    filename = str(config.get("default_model_filename") or PLAN)
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()
                       and (p / filename).is_file()), reverse=True)
    if not versions:
        raise StepError(f"{model_dir.name}/ has no version directory (<name>/<number>/) holding {filename}")
    return Layout(config, "tensorrt", model_dir, versions[0], model_dir / str(versions[0]) / filename)


@register_runtime
class TritonTensorrtLayout(TritonRepository):
    """A Triton repository holding a TensorRT plan, run through the tensorrt runtime on its model file."""

    name = "triton-tensorrt-layout"
    packages = ("tensorrt", "cuda-python", "tritonclient", "protobuf")

    def _unavailable(self) -> str | None:
        return tensorrt_unavailable()

    def out_of_reach(self) -> str | None:
        # No GPU here, or a GPU but no TensorRT wheel on any reachable registry (its libraries come from NVIDIA's index).
        return tensorrt_unavailable()

    def locate(self, path: Path) -> Layout:
        return locate_plan(path)

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        import numpy as np

        # What the engine takes: numpy types from trt.nptype.
        return backend_session(self.locate(path), "tensorrt", model, root,
                               lambda inner: {name: np.dtype(inner.dtypes[name]).name for name in inner.inputs})

    def _structure(self, layout: Layout, model: "Model", fmt: str) -> tuple[dict[str, Any], list[str]]:
        """The TensorRT platform, and the signature's inputs and outputs that config.pbtxt does not declare."""
        config = layout.config
        problems = []
        declared = [e.get("name") for e in config.get("input", [])]
        missing = [i.name for i in model.inputs if i.name not in declared]
        if missing:
            problems.append(f"{CONFIG} declares no input {', '.join(missing)} of the signature")
        outputs = [e.get("name") for e in config.get("output", [])]
        absent = [o.name for o in model.outputs if o.name not in outputs]
        if absent:
            problems.append(f"{CONFIG} declares no output {', '.join(absent)} of the signature")
        return {"platform": TENSORRT_PLATFORM, "inputs": declared, "outputs": outputs}, problems
