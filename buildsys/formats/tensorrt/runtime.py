"""The "tensorrt" runtime: a serialized engine run on this host's NVIDIA GPU, outputs in signature order.

Device buffers go through cuda-python's runtime bindings (`cuda.bindings.runtime`, or `cuda.cudart`
in older releases): tens of MB next to TensorRT, where CUDA tensors of torch would need the multi-GB
CUDA build of PyTorch that this project does not install. The engine is deserialized with the
installed TensorRT; an engine built for another GPU model or TensorRT version is refused by TensorRT,
and the error says to rebuild it here. tensorrt and cuda are imported inside `load`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session
from buildsys.formats.tensorrt.profiles import INSTALL

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python ≥ 12.6
    except ImportError:
        from cuda import cudart
    return cudart


def _ok(result: Any, what: str) -> Any:
    """cuda-python returns (error, value...): raise on an error, return the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise StepError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else tuple(rest)


class EngineSession(Session):
    """One execution context on a CUDA stream; device buffers grow to the largest batch seen."""

    def __init__(self, engine: Any, model: "Model"):
        import tensorrt as trt

        self.trt, self.cudart = trt, _cudart()
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = _ok(self.cudart.cudaStreamCreate(), "stream creation")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        have = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        wanted = [o.name for o in model.outputs]
        self.outputs = wanted if all(n in have for n in wanted) else have[: len(wanted)]
        if len(self.outputs) < len(wanted):
            raise StepError(f"the engine has {len(have)} output(s) but the signature declares {len(wanted)}")
        self.dtypes = {n: trt.nptype(engine.get_tensor_dtype(n)) for n in names}
        first = self.inputs[0]
        shape = list(engine.get_tensor_shape(first))
        if shape and shape[0] == -1:  # dynamic batch: the profile's max is the most one call takes
            self.max_batch = int(engine.get_tensor_profile_shape(first, 0)[2][0])
        else:
            self.max_batch = int(shape[0]) if shape and shape[0] > 0 else 1
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _ok(self.cudart.cudaFree(ptr), "free")
            ptr, size = int(_ok(self.cudart.cudaMalloc(max(nbytes, 1)), "malloc")), max(nbytes, 1)
            self._buffers[name] = (ptr, size)
        return ptr

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np

        cudart, h2d, d2h = self.cudart, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, \
            self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        held = []  # host arrays must outlive the asynchronous copies
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            held.append(array)
            if not self.context.set_input_shape(name, array.shape):
                raise StepError(f"input '{name}' of shape {list(array.shape)} is outside the engine's optimization "
                                "profile (see profile.json); rebuild with a wider min_batch/max_batch or axes")
            ptr = self._buffer(name, array.nbytes)
            _ok(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self.stream), "copy to GPU")
            self.context.set_tensor_address(name, ptr)
        results = []
        for name in self.outputs:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, out.nbytes))
            results.append(out)
        if not self.context.execute_async_v3(int(self.stream)):
            raise StepError("TensorRT failed to execute the engine (see the log above)")
        for name, out in zip(self.outputs, results):
            _ok(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, d2h, self.stream),
                "copy from GPU")
        _ok(cudart.cudaStreamSynchronize(self.stream), "stream synchronize")
        return results

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = None


def tensorrt_unavailable() -> str | None:
    """Why an engine cannot run here (no NVIDIA GPU, no TensorRT, no cuda-python), or None; cheap."""
    from buildsys.storage import keys

    if keys.nvidia_gpu() is None:
        return keys.NEEDS_NVIDIA_GPU
    if importlib.util.find_spec("tensorrt") is None:
        return f"tensorrt not installed ({INSTALL})"
    if importlib.util.find_spec("cuda") is None:
        return f"cuda-python not installed ({INSTALL})"
    return None


def load_engine(path: Path) -> Any:
    """Deserialize an engine file with the installed TensorRT (StepError saying to rebuild when it refuses)."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise StepError(f"TensorRT {trt.__version__} could not deserialize '{Path(path).name}': an engine only runs on "
                        "the GPU model and TensorRT version it was built with; rebuild it on this host")
    return engine


@register_runtime
class TensorrtRuntime(Runtime):
    """A TensorRT engine on the first visible NVIDIA GPU."""

    name = "tensorrt"
    packages = ("tensorrt", "cuda-python")

    def _unavailable(self) -> str | None:
        return tensorrt_unavailable()

    def out_of_reach(self) -> str | None:
        # No GPU here, or a GPU but no TensorRT wheel on any reachable registry (its libraries come from NVIDIA's index).
        return tensorrt_unavailable()

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        return EngineSession(load_engine(path), model)
