"""The "service-http" runtimes: a service artifact's app under uvicorn on loopback, judged over HTTP.

`load` starts the app as its Dockerfile would (`uvicorn app:create_app --factory`, server.py) and
each `run` posts the inputs as JSON to /predict: the reference inputs go through the app's
validation, the backend and JSON back, as a client's would. `inspect` holds what needs no model run
(the files, signature.json against deploy.yaml, requirements.txt pinned, the Dockerfile lint) and,
where the runtime is available, the robustness probe (probes.py): malformed requests that must get
a 4xx, never a 5xx, and a server still healthy after them. Its problems fail the check.

"service-http" runs ONNX services on onnxruntime, "service-http-torchscript" TorchScript ones on torch.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch
from buildsys.formats.service.contract import (
    APP_FILE,
    APP_SOURCE,
    DOCKERFILE,
    PREDICT_PATH,
    REQUIREMENTS,
    SIGNATURE_FILE,
    pinned_problems,
    read_signature,
)
from buildsys.status import Caveat, CaveatKind

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.formats.service.server import ServiceProcess

JSON = {"Content-Type": "application/json"}


class HttpSession(Session):
    """A running service; `run` posts {"inputs": ...} to /predict and returns the outputs in signature order."""

    def __init__(self, server: ServiceProcess, signature: dict[str, Any], model: Model):
        self.server = server
        self.signature = signature
        self.max_batch = fixed_batch(model)
        self.limit = int(signature.get("max_body_bytes", 8 << 20))
        self.sent = 0  # requests to /predict answered, and per input [samples, values, sum]: what /metrics must count
        self.values = {spec["name"]: [0, 0, 0.0] for spec in signature["inputs"]}
        self._finalizer = weakref.finalize(self, server.stop)  # once: on close(), collection or exit

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        inputs = {spec["name"]: np.asarray(feeds[spec["name"]], dtype=spec["dtype"]) for spec in self.signature["inputs"]}
        body = json.dumps({"inputs": {name: value.tolist() for name, value in inputs.items()}}).encode("utf-8")
        samples = len(next(iter(inputs.values())))
        if len(body) > self.limit:  # the service would answer 413: send the chunk in halves
            if samples < 2:
                raise StepError(f"one sample is {len(body)} bytes of JSON, over the service's body limit of "
                                f"{self.limit} bytes: raise the service step's max_body_mb")
            half = samples // 2
            parts = [self.run({k: v[:half] for k, v in feeds.items()}), self.run({k: v[half:] for k, v in feeds.items()})]
            return [np.concatenate([a, b], axis=0) for a, b in zip(*parts)]
        try:
            status, reply = self.server.call("POST", PREDICT_PATH, body, JSON)
            self.sent += 1
        except OSError as exc:
            raise StepError(f"the service did not answer {PREDICT_PATH} ({type(exc).__name__}): "
                            f"{self.server.excerpt()}") from exc
        for name, value in inputs.items():
            self.values[name][0] += samples
            self.values[name][1] += value.size
            self.values[name][2] += float(value.astype(np.float64).sum())
        if status != 200:
            raise StepError(f"the service answered {PREDICT_PATH} with {status}: {reply[:300].decode(errors='replace')}")
        outputs = json.loads(reply).get("outputs", {})
        result = []
        for spec in self.signature["outputs"]:
            if spec["name"] not in outputs:
                raise StepError(f"the service's reply has no output '{spec['name']}' (it has {sorted(outputs)})")
            value = np.asarray(outputs[spec["name"]], dtype=spec["dtype"])
            if value.ndim == 0 or len(value) != samples:
                raise StepError(f"the service's output '{spec['name']}' has shape {list(value.shape)} for {samples} "
                                "sample(s) sent: its first axis must be the batch")
            result.append(value)
        return result

    def findings(self) -> list[dict[str, object]]:
        """The service's /metrics against what this session sent: a failing finding per count that differs."""
        from buildsys.formats.service.probes import predict_counts, scrape, total

        counted = predict_counts(self.server)
        if "not_run" in counted:
            return [{"text": f"the service's {counted['not_run']}", "fails": True}]
        wrong = [f"{what} {counted[what]}, {self.sent} sent" for what in ("requests", "latency_observations")
                 if counted[what] != self.sent]
        samples = scrape(self.server)
        for name, (count, size, value_sum) in self.values.items():
            seen = total(samples, "modelbuild_input_samples_total", input=name)
            mean = total(samples, "modelbuild_input_mean", input=name)
            if seen != count:
                wrong.append(f"input '{name}' samples {seen:g}, {count} sent")
            if size and abs(mean - value_sum / size) > 1e-6 * max(1.0, abs(value_sum / size)):
                wrong.append(f"input '{name}' mean {mean:.6g}, the values sent have {value_sum / size:.6g}")
        return [{"text": f"the service's /metrics does not count what was sent: {'; '.join(wrong)}", "fails": True}] \
            if wrong else []

    def close(self) -> None:
        self._finalizer()


@register_runtime
class ServiceHttp(Runtime):
    """The ONNX service's app under uvicorn on loopback (ONNX Runtime inside), called over HTTP."""

    name = "service-http"
    backend_module = "onnxruntime"
    packages = ("fastapi", "starlette", "pydantic", "uvicorn", "numpy", "prometheus-client", "onnxruntime", "dockerfile-parse")

    requires, extra = ("fastapi", "uvicorn", "prometheus_client", "onnxruntime"), "service"

    def load(self, path: Path, model: Model, root: Path) -> Session:
        from buildsys.formats.service.server import ServiceProcess

        directory = Path(path)
        signature = _signature(directory, model)
        return HttpSession(ServiceProcess.start(directory), signature, model)

    def inspect(self, path: Path, model: Model, fmt: str) -> dict | None:
        from buildsys.formats.service.lint import lint_facts

        directory = Path(path)
        facts: dict[str, Any] = {}
        problems = [f"{name} is missing from the service" for name in (APP_FILE, SIGNATURE_FILE, REQUIREMENTS,
                                                                          DOCKERFILE) if not (directory / name).is_file()]
        if problems:
            return {"facts": facts, "problems": problems}
        facts["app"] = "modelbuild's" if (directory / APP_FILE).read_bytes() == APP_SOURCE.read_bytes() else "modified"
        try:
            signature = _signature(directory, model)
        except StepError as exc:
            return {"facts": facts, "problems": [exc.what]}
        if not (directory / signature["model_file"]).is_file():
            problems.append(f"the model file '{signature['model_file']}' named by signature.json is missing")
        problems += pinned_problems((directory / REQUIREMENTS).read_text(encoding="utf-8"))
        lint = facts["dockerfile_lint"] = lint_facts(directory, signature.get("port"))
        problems += [f"Dockerfile lint: {p}" for p in lint.get("problems", [])]
        caveats = [Caveat(CaveatKind.NOT_RUN, "Dockerfile lint not run", lint["not_run"], self.name).as_dict()] \
            if lint.get("not_run") else []
        reason = self.unavailable()
        if reason or problems:
            facts["probes"] = {"not_run": reason or "the service's files have problems"}
        else:
            facts["probes"] = self._probe(directory, signature, problems)
        return {"facts": facts, "problems": problems, "caveats": caveats}

    def _probe(self, directory: Path, signature: dict[str, Any], problems: list[str]) -> dict[str, Any]:
        """Malformed requests against a fresh server; what answers wrong goes into `problems`."""
        from buildsys.formats.service.probes import probe
        from buildsys.formats.service.server import ServiceProcess

        try:
            server = ServiceProcess.start(directory)
        except StepError as exc:  # the numeric part fails on it with the same message
            return {"not_run": exc.what}
        try:
            answers, found = probe(server, signature)
        finally:
            server.stop()
        problems += found
        return answers


@register_runtime
class ServiceHttpTorchScript(ServiceHttp):
    """The TorchScript service's app under uvicorn on loopback (torch inside), called over HTTP."""

    name = "service-http-torchscript"
    backend_module = "torch"
    requires = ("fastapi", "uvicorn", "prometheus_client", "torch")
    packages = ("fastapi", "starlette", "pydantic", "uvicorn", "numpy", "prometheus-client", "torch", "dockerfile-parse")


def _signature(directory: Path, model: Model) -> dict[str, Any]:
    """signature.json, checked against deploy.yaml's signature (StepError naming the difference)."""
    try:
        signature = read_signature(directory)
        names = [spec["name"] for spec in signature["inputs"]]
        outputs = [spec["name"] for spec in signature["outputs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"the service's signature.json is unreadable: {type(exc).__name__}: {exc}") from exc
    wanted = [i.name for i in model.inputs]
    if sorted(names) != sorted(wanted):
        raise StepError(f"the service's signature.json has inputs {names}, deploy.yaml's signature {wanted}")
    if len(outputs) != len(model.outputs):
        raise StepError(f"the service's signature.json has {len(outputs)} output(s), deploy.yaml's signature "
                        f"{len(model.outputs)}")
    return signature
