"""The "onnxruntime" runtime: ONNX files on ONNX Runtime's CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.localise import Probe

# ONNX Runtime's type strings for the element types a model input can declare.
_NUMPY_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


class OrtSession(Session):
    """An InferenceSession fed by input name; outputs come back in the signature's order."""

    def __init__(self, session: Any, model: "Model", path: Path | None = None):
        self.session = session
        self.path = path  # to re-create the session with another thread pool (use_threads)
        self.model = model
        # An artifact exported with fixed shapes (dynamic_axes: false) takes one sample per call.
        fixed_one = any(i.shape and i.shape[0] == 1 for i in session.get_inputs())
        self.max_batch = 1 if fixed_one else fixed_batch(model)
        self.input_types = {i.name: _NUMPY_TYPES.get(i.type) for i in session.get_inputs()}
        have = [o.name for o in session.get_outputs()]
        wanted = [o.name for o in model.outputs]
        # Files exported by modelbuild carry the signature's names; a foreign file may not, and then
        # its outputs are taken in graph order.
        self.output_names = wanted if all(n in have for n in wanted) else have[: len(wanted)]
        if len(self.output_names) < len(wanted):
            raise StepError(f"the ONNX model has {len(have)} output(s) but the signature declares {len(wanted)}")
        missing = [n for n in self.input_types if n not in {i.name for i in model.inputs}]
        if missing:
            raise StepError(f"the ONNX model's input(s) {', '.join(missing)} are not in the signature "
                            f"({', '.join(i.name for i in model.inputs)})")

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np

        # Cast to what the graph declares: an fp16 artifact without float32 I/O takes float16.
        ready = {name: np.ascontiguousarray(feeds[name], dtype=dtype) if dtype else feeds[name]
                 for name, dtype in self.input_types.items()}
        return list(self.session.run(self.output_names, ready))

    def use_threads(self, threads: int | None) -> int | None:
        """ONNX Runtime fixes its thread pool when a session is made: re-create it from the same file."""
        if threads is None or self.path is None:
            return None
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=self.session.get_providers())
        return threads


@register_runtime
class OnnxRuntime(Runtime):
    """ONNX Runtime with the CPU execution provider (the same provider on every host)."""

    name = "onnxruntime"
    requires = ("onnxruntime",)

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise in checks
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise StepError(f"onnxruntime could not load '{Path(path).name}': {type(exc).__name__}: {first}") from exc
        return OrtSession(session, model, Path(path))

    def intermediates(self, path: Path, model: "Model", root: Path, feeds: dict[str, "np.ndarray"],
                      modules: list[str]) -> list[Probe]:
        from buildsys.formats.onnx.intermediates import onnx_intermediates

        return onnx_intermediates(path, feeds, modules)
