"""FastAPI service of one model, shipped by modelbuild as `app.py` next to `signature.json` and the model file.

The service step copies this file's bytes unchanged into every `service` artifact, so it runs on its
own in the service's image: it imports only the standard library at top level (modelbuild discovers
step modules by importing them), and fastapi, pydantic, numpy and the backend (onnxruntime or torch)
inside `create_app`. Start it with `uvicorn app:create_app --factory` in the artifact's directory.

signature.json names the backend, the model file, and every input and output (name, dtype, shape;
a string is a dynamic axis, the first one usually the batch). From it `create_app` generates the
pydantic request and response models, so /docs shows the real signature.

  GET  /health    {"status": "ok", "model": ..., "backend": ...} once the model is loaded
  GET  /signature the signature.json the service runs
  POST /predict   {"inputs": {"<input>": nested list, ...}} -> {"outputs": {"<output>": nested list, ...}}
  GET  /metrics   Prometheus text format (prometheus-client, one registry per app): requests by path, method
                  and status, errors (4xx/5xx) by path and status, a latency histogram by path, and per input
                  the samples accepted and the running mean, std, min and max of their values (for drift)

Every input carries samples along its first axis. A request is refused with a 4xx, never a 500:
invalid JSON, unknown or missing inputs, strings or booleans where numbers belong, fractions for
integer inputs, integers out of the dtype's range (422); ragged lists, a wrong rank or a wrong size
of a fixed axis, inputs with different batch sizes (422); a body over MODELBUILD_MAX_BODY bytes
(default: signature.json's max_body_bytes) (413); an input the model itself rejects (400).
Requests are not batched together: each runs on its own, concurrently in the server's thread pool
(ONNX Runtime and TorchScript sessions may be called from several threads at once).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and the request
# model is a local of create_app that a string annotation could not be resolved to.
import json
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

SIGNATURE_FILE = "signature.json"
BODY_ENV = "MODELBUILD_MAX_BODY"
DIR_ENV = "MODELBUILD_SERVICE_DIR"
INT_RANGES = {"int8": (-2**7, 2**7 - 1), "uint8": (0, 2**8 - 1), "int16": (-2**15, 2**15 - 1),
              "uint16": (0, 2**16 - 1), "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1),
              "int64": (-2**63, 2**63 - 1), "uint64": (0, 2**64 - 1)}
MAX_ERRORS = 5  # validation errors a 422 reply lists
FLOATS = ("float16", "bfloat16", "float32", "float64")


class Refused(Exception):
    """A request the service will not run: its HTTP status and a message naming what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def read_signature(directory: Path) -> dict[str, Any]:
    """The service's signature.json."""
    return json.loads((directory / SIGNATURE_FILE).read_text(encoding="utf-8"))


def body_limit(signature: dict[str, Any]) -> int:
    """The largest request body in bytes: $MODELBUILD_MAX_BODY, else the signature's max_body_bytes."""
    raw = os.environ.get(BODY_ENV, "").strip()
    return int(raw) if raw else int(signature.get("max_body_bytes", 8 << 20))


def element_type(dtype: str) -> Any:
    """The strict pydantic element type of a dtype: numbers only, integers only for integer dtypes."""
    from pydantic import StrictBool, StrictFloat, StrictInt

    if dtype == "bool":
        return StrictBool
    return StrictFloat if dtype in FLOATS else StrictInt


def nested(dtype: str, rank: int) -> Any:
    """list[list[...[element]]] with `rank` levels."""
    kind = element_type(dtype)
    for _ in range(rank):
        kind = list[kind]  # type: ignore[valid-type]
    return kind


def tensor_models(signature: dict[str, Any]) -> tuple[Any, Any]:
    """Pydantic models of the request ({"inputs": {...}}) and reply ({"outputs": {...}}) from the signature.

    Field names are sanitized (an ONNX name may be "input.1"); the tensor names are the aliases.
    Unknown inputs are refused (extra="forbid").
    """
    from pydantic import ConfigDict, Field, create_model

    def fields(tensors: list[dict[str, Any]], what: str) -> dict[str, Any]:
        out = {}
        for i, spec in enumerate(tensors):
            shape = spec.get("shape") or []
            described = "[" + ", ".join(str(d) for d in shape) + "]"
            out[f"t{i}_{re.sub(r'[^0-9A-Za-z_]', '_', spec['name'])}"] = (
                nested(spec["dtype"], len(shape)),
                Field(alias=spec["name"], description=f"{what} '{spec['name']}': {spec['dtype']} {described}"))
        return out

    config = ConfigDict(extra="forbid", populate_by_name=False)
    inputs = create_model("Inputs", __config__=config, **fields(signature["inputs"], "input"))
    outputs = create_model("Outputs", __config__=config, **fields(signature["outputs"], "output"))
    request = create_model("PredictRequest", __config__=ConfigDict(extra="forbid"), inputs=(inputs, ...))
    reply = create_model("PredictReply", outputs=(outputs, ...))
    return request, reply


def as_array(spec: dict[str, Any], value: Any) -> Any:
    """One validated input as an array of its dtype, its rank and fixed axes checked (Refused: 422)."""
    import numpy as np

    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    # Integers are read exactly (into int64, or uint64 for a uint64 input); the dtype's range is checked
    # before the final cast, which would otherwise wrap around silently.
    carrier = np.float64 if dtype in FLOATS else bool if dtype == "bool" else np.uint64 if dtype == "uint64" \
        else np.int64
    try:
        wide = np.asarray(value, dtype=carrier)
    except OverflowError:
        low, high = INT_RANGES[dtype]
        raise Refused(422, f"input '{name}' holds values outside {dtype}'s range [{low}, {high}]") from None
    except (ValueError, TypeError) as exc:  # ragged lists
        raise Refused(422, f"input '{name}' is not a rectangular array: {str(exc).splitlines()[0]}") from None
    if wide.ndim != len(shape):
        raise Refused(422, f"input '{name}' has rank {wide.ndim} (shape {list(wide.shape)}), the signature's is "
                           f"{len(shape)} ({shape})")
    wrong = [f"axis {a} is {wide.shape[a]}, not {d}" for a, d in enumerate(shape)
             if isinstance(d, int) and wide.shape[a] != d]
    if wrong:
        raise Refused(422, f"input '{name}' has shape {list(wide.shape)}, the signature's is {shape}: "
                           + "; ".join(wrong))
    if wide.size == 0:
        raise Refused(422, f"input '{name}' is empty (shape {list(wide.shape)})")
    if dtype in INT_RANGES:
        low, high = INT_RANGES[dtype]
        if wide.min() < low or wide.max() > high:
            raise Refused(422, f"input '{name}' holds values outside {dtype}'s range [{low}, {high}]")
    return np.ascontiguousarray(wide, dtype=dtype)


def arrays(signature: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Every input as an array, the batch (first) axis the same size across them."""
    feeds = {spec["name"]: as_array(spec, inputs[spec["name"]]) for spec in signature["inputs"]}
    batches = {name: int(a.shape[0]) for name, a in feeds.items() if a.ndim}
    if len(set(batches.values())) > 1:
        raise Refused(422, f"the inputs hold different numbers of samples: {batches}")
    return feeds


class OnnxBackend:
    """ONNX Runtime on CPU; outputs by the signature's names."""

    def __init__(self, directory: Path, signature: dict[str, Any]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(directory / signature["model_file"]), options,
                                            providers=["CPUExecutionProvider"])
        self.names = [o["name"] for o in signature["outputs"]]

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

        try:
            return list(self.session.run(self.names, feeds))
        except (InvalidArgument, Fail) as exc:  # e.g. an axis size the model cannot take
            raise Refused(400, f"the model refused the inputs: {str(exc).strip().splitlines()[0][:300]}") from None


class TorchScriptBackend:
    """A TorchScript module on CPU, called with the inputs in signature order."""

    def __init__(self, directory: Path, signature: dict[str, Any]):
        import torch

        self.torch = torch
        self.module = torch.jit.load(str(directory / signature["model_file"]), map_location="cpu").eval()
        self.inputs = [i["name"] for i in signature["inputs"]]
        self.outputs = [o["name"] for o in signature["outputs"]]

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        torch = self.torch
        with torch.inference_mode():
            try:
                result = self.module(*[torch.from_numpy(feeds[n]) for n in self.inputs])
            except RuntimeError as exc:  # TorchScript raises RuntimeError for shapes the module cannot take
                raise Refused(400, f"the model refused the inputs: {str(exc).strip().splitlines()[0][:300]}") from None
        if isinstance(result, dict):
            result = [result[n] for n in self.outputs]
        elif not isinstance(result, (list, tuple)):
            result = [result]
        return [t.detach().cpu().numpy() for t in result]


PATHS = ("/health", "/signature", "/predict", "/metrics")  # other paths are counted as "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's Prometheus metrics, in a registry of its own (two apps in one process never mix)."""

    def __init__(self, signature: dict[str, Any]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("modelbuild_requests", "HTTP requests answered, by path, method and status.",
                                ["path", "method", "status"], registry=r)
        self.errors = Counter("modelbuild_request_errors", "Requests answered with a 4xx or 5xx status.",
                              ["path", "status"], registry=r)
        self.latency = Histogram("modelbuild_request_duration_seconds", "Seconds from request to response.",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.samples = Counter("modelbuild_input_samples", "Samples of each input in requests that passed validation.",
                               ["input"], registry=r)
        self.stats = {stat: Gauge(f"modelbuild_input_{stat}", f"Running {stat} of every value of the input received "
                                  "since the service started (compare with the training data's to see drift).",
                                  ["input"], registry=r) for stat in ("mean", "std", "min", "max")}
        self.names = [spec["name"] for spec in signature["inputs"]]
        self._lock = threading.Lock()
        self._running = {name: [0, 0.0, 0.0, math.inf, -math.inf] for name in self.names}  # n, sum, sum², min, max

    def inputs(self, feeds: dict[str, Any]) -> None:
        """Add validated inputs to the per-input statistics."""
        import numpy as np

        with self._lock:
            for name in self.names:
                value = np.asarray(feeds[name], dtype=np.float64)
                run = self._running[name]
                run[0] += value.size
                run[1] += float(value.sum())
                run[2] += float(np.square(value).sum())
                run[3], run[4] = min(run[3], float(value.min())), max(run[4], float(value.max()))
                mean = run[1] / run[0]
                self.samples.labels(name).inc(int(value.shape[0]) if value.ndim else 1)
                for stat, number in (("mean", mean), ("std", math.sqrt(max(run[2] / run[0] - mean * mean, 0.0))),
                                     ("min", run[3]), ("max", run[4])):
                    self.stats[stat].labels(name).set(number)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Measured:
    """ASGI middleware (outermost, so 413s and 500s count too): each request's status and latency."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in PATHS else "other"
        status, started = 500, time.perf_counter()  # no response start: the app raised (a 500 to the client)

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            m = self.metrics
            m.latency.labels(path).observe(time.perf_counter() - started)
            m.requests.labels(path, scope.get("method", ""), str(status)).inc()
            if status >= 400:
                m.errors.labels(path, str(status)).inc()


BACKENDS: dict[str, type[OnnxBackend] | type[TorchScriptBackend]] = {"onnxruntime": OnnxBackend, "torchscript": TorchScriptBackend}


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app parses any of it.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives. The body read is replayed to the app, which then never waits on the client again.
    """

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # only a disconnect can come now
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        text = json.dumps({"detail": f"the request body is over {self.limit} bytes (set {BODY_ENV} to allow more)"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": text.encode("utf-8")})


def create_app(directory: str | None = None) -> Any:
    """The FastAPI app serving the model in `directory` ($MODELBUILD_SERVICE_DIR, else this file's directory)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    where = Path(directory or os.environ.get(DIR_ENV) or Path(__file__).resolve().parent)
    signature = read_signature(where)
    backend = BACKENDS[signature["backend"]](where, signature)
    metrics = Metrics(signature)
    request_model, reply_model = tensor_models(signature)
    app = FastAPI(title=f"{signature['model']} (modelbuild service)", version=str(signature.get("version", "1")),
                  description=f"Model '{signature['model']}' on {signature['backend']}, served by modelbuild's app.py.")

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    # FastAPI's own 422 lists every failing element with its value: for a large malformed tensor
    # that reply would outgrow the request. The first few errors, without values, say enough.
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        shown = [{key: str(e[key]) if key == "msg" else list(e[key]) if key == "loc" else e[key]
                  for key in ("type", "loc", "msg") if key in e} for e in errors[:MAX_ERRORS]]
        return JSONResponse({"detail": shown, "errors": len(errors)}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": signature["model"], "backend": signature["backend"]}

    @app.get("/signature")
    def get_signature() -> dict[str, Any]:
        return signature

    # A sync endpoint: FastAPI runs it in its thread pool, so concurrent requests run side by side.
    @app.post("/predict", response_model=reply_model)
    def predict(body: request_model) -> Any:  # type: ignore[valid-type]
        payload = body.model_dump(by_alias=True)["inputs"]  # type: ignore[attr-defined]
        feeds = arrays(signature, payload)
        metrics.inputs(feeds)
        outputs = backend.run(feeds)
        # Built here rather than through reply_model: validating every element of a large output
        # again would cost more than the model; the shapes are documented by reply_model all the same.
        text = json.dumps({"outputs": {spec["name"]: value.tolist()
                                       for spec, value in zip(signature["outputs"], outputs)}})
        return _raw_json(text)

    @app.get("/metrics")
    def get_metrics() -> Any:
        from fastapi.responses import Response

        text, content_type = metrics.exposition()
        return Response(content=text, headers={"Content-Type": content_type})

    app.add_middleware(BodyLimit, limit=body_limit(signature))
    app.add_middleware(Measured, metrics=metrics)  # added last: outermost
    return app


def _raw_json(text: str) -> Any:
    """A JSON response of already-serialized text (JSONResponse would serialize it again)."""
    from fastapi.responses import Response

    return Response(content=text.encode("utf-8"), media_type="application/json")
