"""Requests to a model a Triton Inference Server serves: one gRPC call per chunk, answers in model order.

The session of the "triton-server" runtimes (`triton_server.py` starts the server and the model). Each
`run` sends the chunk's inputs as the types config.pbtxt declares (as any client of the model would),
under the names the backend binds (the signature's for ONNX Runtime, INPUT__<i> for libtorch), asks for
the outputs in the signature's order, and turns Triton's refusals into one-line StepErrors. tritonclient
and numpy are imported only when a request is made. `close` stops the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats.runtime import Session, fixed_batch

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.formats.serving.repository import Layout
    from buildsys.formats.serving.triton_server import TritonProcess


class ServedSession(Session):
    """Requests to the served model over gRPC: inputs cast to the config's data types, outputs in model order."""

    def __init__(self, server: "TritonProcess", layout: "Layout", model: "Model"):
        self.server = server
        self.layout = layout
        self.model = model
        self.startup_s = server.startup_s
        config = layout.config
        max_batch_size = int(config.get("max_batch_size", 0))
        self.max_batch = min(64, max_batch_size) if max_batch_size > 0 else fixed_batch(model)
        declared_in = {e.get("name"): e for e in config.get("input", [])}
        declared_out = [str(e.get("name")) for e in config.get("output", [])]
        if layout.backend == "pytorch":  # positional: INPUT__i is the signature's i-th input
            names = [f"INPUT__{i}" for i in range(len(model.inputs))]
            self.outputs = [f"OUTPUT__{i}" for i in range(len(model.outputs))]
        else:
            names = [spec.name for spec in model.inputs]
            wanted = [spec.name for spec in model.outputs]
            self.outputs = wanted if all(n in declared_out for n in wanted) else declared_out[: len(wanted)]
        self.inputs = [(spec.name, name, str(declared_in.get(name, {}).get("data_type", "TYPE_INVALID")))
                       for spec, name in zip(model.inputs, names)]

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        requests = [self._input(InferInput, name, feeds[feed], data_type) for feed, name, data_type in self.inputs]
        try:
            result = self.server.client.infer(self.server.model_name, requests,
                                              outputs=[InferRequestedOutput(n) for n in self.outputs])
        except InferenceServerException as exc:
            raise StepError(f"Triton Inference Server refused a request to model '{self.server.model_name}': "
                            f"{exc.message()}") from exc
        values = [result.as_numpy(name) for name in self.outputs]
        missing = [name for name, value in zip(self.outputs, values) if value is None]
        if missing:
            raise StepError(f"Triton Inference Server returned no output {', '.join(missing)} for model "
                            f"'{self.server.model_name}'")
        return values

    @staticmethod
    def _input(factory: Any, name: str, value: "np.ndarray", data_type: str) -> Any:
        """One request input, sent as the type config.pbtxt declares (as a client of that model would)."""
        import numpy as np
        from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

        wanted = triton_to_np_dtype(data_type.removeprefix("TYPE_")) if data_type != "TYPE_INVALID" else None
        array = np.ascontiguousarray(value if wanted is None else value.astype(wanted, copy=False))
        request = factory(name, list(array.shape), np_to_triton_dtype(array.dtype))
        request.set_data_from_numpy(array)
        return request

    def close(self) -> None:
        self.server.stop()
