"""TorchServe handler of modelbuild's .mar archives: tensors in as JSON, .npy or .npz, tensors out as JSON.

The torchserve step copies this file's bytes unchanged into every archive with a generated handler
(as `handler.py`, next to `signature.json`), so it must run inside TorchServe's Python on its own:
it imports only the standard library at top level, and torch and numpy where they are used. The
deferred imports also keep it cheap for modelbuild, which discovers step modules by importing them.

Request body (TorchServe may hand several requests to one call; each gets its own reply):
  - JSON: {"<input name>": nested list, ...}, or a bare nested list for a one-input model;
  - an .npy file (one-input model) or an .npz file with one array per input name;
  - multipart/form-data with one field per input name (JSON or .npy each).
Each input carries samples along its first axis, as in the model's signature; a single sample without
that axis is accepted too, and its reply then has no batch axis either.
Reply: {"<output name>": nested list, ...}. The signature comes from signature.json in the archive.
"""

from __future__ import annotations

import io
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

SIGNATURE_FILE = "signature.json"


def load_value(value: Any) -> Any:
    """A request value as Python/NumPy data: .npy/.npz bytes, JSON bytes or text, or already-decoded JSON."""
    import numpy as np

    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        if raw.startswith(b"\x93NUMPY"):
            return np.load(io.BytesIO(raw), allow_pickle=False)
        if raw.startswith(b"PK"):
            with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        value = raw.decode("utf-8")
    if isinstance(value, str):
        return json.loads(value)
    return value


def request_body(request: dict[str, Any], names: list[str]) -> Any:
    """The payload of one TorchServe request: its body (or data), else its form fields named like inputs."""
    body = request.get("body")
    if body is None:
        body = request.get("data")
    if body is None:  # multipart/form-data: one field per input
        body = {name: request[name] for name in names if name in request}
        if not body:
            raise ValueError("the request has no body")
    return body


def as_input(spec: dict[str, Any], value: Any) -> tuple[np.ndarray, bool]:
    """One input value as a contiguous array with a batch axis, and whether it was a single sample."""
    import numpy as np

    array = np.asarray(load_value(value), dtype=spec["dtype"])
    rank = len(spec["shape"])
    if array.ndim == rank - 1:
        array, single = array[None], True
    elif array.ndim == rank:
        single = False
    else:
        raise ValueError(f"input '{spec['name']}' has {array.ndim} dimension(s); the model takes {rank} "
                         f"(shape {spec['shape']})")
    for want, have in zip(spec["shape"], array.shape):
        if isinstance(want, int) and want != have:
            raise ValueError(f"input '{spec['name']}' has shape {list(array.shape)}; the model takes {spec['shape']}")
    return np.ascontiguousarray(array), single


def decode(inputs: list[dict[str, Any]], request: dict[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
    """One request as ({input name: array with a batch axis}, whether it was a single sample)."""
    names = [spec["name"] for spec in inputs]
    body = load_value(request_body(request, names))
    if not isinstance(body, dict):
        if len(names) != 1:
            raise ValueError(f"this model takes the inputs {names}: send a JSON object keyed by input name")
        body = {names[0]: body}
    missing = [name for name in names if name not in body]
    if missing:
        raise ValueError(f"missing input(s) {missing}; the model takes {names}")
    arrays: dict[str, np.ndarray] = {}
    single: set[bool] = set()
    for spec in inputs:
        arrays[spec["name"]], one = as_input(spec, body[spec["name"]])
        single.add(one)
    if len(single) > 1 or len({len(a) for a in arrays.values()}) > 1:
        raise ValueError("the inputs of one request must hold the same number of samples")
    return arrays, single.pop()


def outputs_in_order(result: Any, names: list[str]) -> list[Any]:
    """A module's return value (tensor, tuple/list, or dict by output name) in the signature's order."""
    if isinstance(result, dict):
        named = all(n in result for n in names)
        items = [result[n] for n in names] if named else list(result.values())
    elif isinstance(result, (tuple, list)):
        items = list(result)
    else:
        items = [result]
    if len(items) < len(names):
        raise ValueError(f"the model returned {len(items)} output(s), the signature declares {len(names)}")
    return items[: len(names)]


def encode(names: list[str], results: list[np.ndarray], single: bool) -> dict[str, Any]:
    """The JSON reply to one request: each output as a nested list (without the batch axis for a single sample)."""
    return {name: (value[0] if single else value).tolist() for name, value in zip(names, results)}


class ModelbuildHandler:
    """The served model: its signature, the TorchScript module, and request batching."""

    def __init__(self) -> None:
        self.initialized = False
        self.module: Any = None
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[str] = []
        self.dynamic_batch = False
        self.device: Any = None

    def initialize(self, context: Any) -> None:
        """Read signature.json and load the archive's serialized TorchScript (on the worker's GPU if any)."""
        import torch

        properties = context.system_properties
        model_dir = properties.get("model_dir") or "."
        with open(os.path.join(model_dir, SIGNATURE_FILE), encoding="utf-8") as f:
            signature = json.load(f)
        self.inputs = signature["inputs"]
        self.outputs = [o["name"] for o in signature["outputs"]]
        self.dynamic_batch = bool(signature.get("dynamic_batch"))
        gpu = properties.get("gpu_id")
        use_gpu = gpu is not None and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{int(gpu)}") if use_gpu else torch.device("cpu")
        serialized = context.manifest["model"]["serializedFile"]
        self.module = torch.jit.load(os.path.join(model_dir, serialized), map_location=self.device).eval()
        self.initialized = True

    def decode(self, request: dict[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
        return decode(self.inputs, request)

    def run(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The module on one batch; outputs as arrays in the signature's order."""
        import torch

        args = [torch.from_numpy(arrays[spec["name"]]).to(self.device) for spec in self.inputs]
        with torch.inference_mode():
            result = self.module(*args)
        out = []
        for item in outputs_in_order(result, self.outputs):
            tensor = torch.as_tensor(item).detach()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            out.append(tensor.cpu().numpy())
        return out

    def reply(self, results: list[np.ndarray], single: bool) -> dict[str, Any]:
        return encode(self.outputs, results, single)

    def mergeable(self, decoded: list[tuple[dict[str, np.ndarray], bool]]) -> bool:
        """Whether several requests can run as one batch: a dynamic batch axis and equal sample shapes."""
        return self.dynamic_batch and len(decoded) > 1 and all(
            len({d[0][spec["name"]].shape[1:] for d in decoded}) == 1 for spec in self.inputs)

    def handle(self, data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One reply per request; the requests run as one batch when they can."""
        import numpy as np

        decoded = [self.decode(request) for request in data]
        if not self.mergeable(decoded):
            return [self.reply(self.run(arrays), single) for arrays, single in decoded]
        merged = {spec["name"]: np.concatenate([d[0][spec["name"]] for d in decoded]) for spec in self.inputs}
        results = self.run(merged)
        replies, start = [], 0
        for arrays, single in decoded:
            count = len(next(iter(arrays.values())))
            replies.append(self.reply([r[start:start + count] for r in results], single))
            start += count
        return replies


_service = ModelbuildHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    """TorchServe's entry point: called with data=None once to initialize, then with each batch of requests."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data)
