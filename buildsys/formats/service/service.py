"""The service formats: the model behind a generated FastAPI app, ready for `docker build` (see contract.py).

`service` serves the ONNX model on ONNX Runtime; `service-torchscript` serves the TorchScript model on
torch. Both ship the same app (service_app.py, as app.py), which builds its pydantic request and reply
models from signature.json at start. The signature is read from the model file itself where it can
be (ONNX element types and shapes) and observed where it cannot (a TorchScript module's outputs).
The check (runtime "service-http") starts the app with uvicorn on loopback, sends the reference inputs
over HTTP, and sends malformed requests that must be refused with a 4xx.

With `docker_build: true` the step also builds the image, where a Docker daemon answers; elsewhere
its metrics say "docker build: not run: <why>". The image is not part of the artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.service.contract import (
    APP_FILE,
    APP_SOURCE,
    DOCKERFILE,
    REQUIREMENTS,
    SERVICE_DIR,
    SIGNATURE_FILE,
    dockerfile,
    requirements,
)
from buildsys.status import Caveat, CaveatKind

if TYPE_CHECKING:
    from buildsys.config.schema import Model

_LAYOUT = "directory service/: app.py (FastAPI), signature.json, {model}, requirements.txt (pinned), Dockerfile"
_CHECKED = "; Prometheus /metrics; checked over HTTP with uvicorn on loopback (/metrics must count what was sent)."
SERVICE = register_format(Format(
    name="service", filename=SERVICE_DIR, runtime="service-http",
    description="FastAPI service of the ONNX model on ONNX Runtime: " + _LAYOUT.format(model="model.onnx")
    + _CHECKED,
))
SERVICE_TORCHSCRIPT = register_format(Format(
    name="service-torchscript", filename=SERVICE_DIR, runtime="service-http-torchscript",
    description="FastAPI service of the TorchScript model on torch: " + _LAYOUT.format(model="model.pt")
    + _CHECKED,
))
DOCKER_TIMEOUT_S = 900


class ServiceOptions(StepOptions):
    base_image: str = Field(default="python:3.11-slim", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
                            description="Base image of the Dockerfile: a Python image whose Python the pinned "
                            "wheels exist for.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the container's uvicorn listens on (EXPOSE).")
    max_body_mb: float = Field(default=8.0, gt=0, le=1024, description="Largest request body the service accepts, "
                               "in MB (larger: 413). MODELBUILD_MAX_BODY (bytes) overrides it at run time.")
    docker_build: bool = Field(default=False, description="Also run `docker build` on the artifact (needs a Docker "
                               "daemon and the base image or network; elsewhere reported as not run).")


class _ServiceStep(Step):
    """The steps' shared body: write the signature, requirements, Dockerfile and app next to the model."""

    produces = "service"
    backend = "onnxruntime"
    model_file = "model.onnx"
    extra = "service"
    version = 1
    shipped_files = (APP_SOURCE,)
    Options = ServiceOptions

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        opts: Any = ctx.options
        src = Path(str(ctx.input_path))
        if not src.is_file():
            raise self.fail(ctx, f"the model file '{src.name}' does not exist")
        reqs, missing = requirements(self.backend)
        if missing:
            from buildsys.errors import MissingToolchain

            raise MissingToolchain(missing[0], self.extra, f"the {self.produces} format (pinning requirements.txt)")
        inputs, outputs, files = self._signature(ctx, src)
        out = ctx.out_dir / SERVICE_DIR
        out.mkdir()
        for name, path in files.items():
            shutil.copyfile(path, out / name)
        shutil.copyfile(APP_SOURCE, out / APP_FILE)
        signature = {"model": ctx.model_name, "backend": self.backend, "model_file": self.model_file,
                     "inputs": inputs, "outputs": outputs, "max_body_bytes": int(opts.max_body_mb * 1e6),
                     "port": opts.port}
        (out / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2) + "\n", encoding="utf-8")
        (out / REQUIREMENTS).write_text(reqs, encoding="utf-8")
        (out / DOCKERFILE).write_text(dockerfile(opts.base_image, opts.port, list(files)), encoding="utf-8")
        metrics: dict[str, Any] = {"files": sorted(p.name for p in out.iterdir()),
                                   "requirements": [r for r in reqs.splitlines() if "==" in r],
                                   "bytes": sum(p.stat().st_size for p in out.iterdir())}
        if opts.docker_build:
            built = metrics["docker_build"] = self._docker_build(ctx, out)
            if built.startswith("not run: "):  # asked for and not done: the target's status says so
                why = built.removeprefix("not run: ")
                metrics["caveats"] = [Caveat(CaveatKind.NOT_RUN, "docker build not run", why, self.name).as_dict()]
        return metrics

    @classmethod
    def host_components(cls, options: dict[str, Any]) -> dict[str, str]:
        # Whether `docker build` can run here decides what the step reports: a "not run" made where
        # no engine answers must not be reused where one does (and the other way round).
        return {"docker": docker_engine()} if options.get("docker_build") else {}

    def _signature(self, ctx: StepContext, src: Path) -> tuple[list[dict], list[dict], dict[str, Path]]:
        raise NotImplementedError

    def _docker_build(self, ctx: StepContext, out: Path) -> str:
        """`docker build` of the artifact where a daemon answers: "passed", or "not run: <why>"; a failed build fails."""
        docker = shutil.which("docker")
        if docker is None:
            return "not run: no docker CLI on PATH"
        try:
            info = subprocess.run([docker, "info"], check=False, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "not run: no Docker daemon (docker info did not answer)"
        if info.returncode != 0:
            return "not run: no Docker daemon (docker info failed)"
        tag = f"modelbuild-{ctx.model_name.lower()}:check"
        try:
            built = subprocess.run([docker, "build", "--quiet", "-t", tag, str(out)], check=False,
                                   capture_output=True, timeout=DOCKER_TIMEOUT_S, text=True)
        except subprocess.TimeoutExpired:
            raise self.fail(ctx, f"docker build did not finish in {DOCKER_TIMEOUT_S} s") from None
        if built.returncode != 0:
            tail = " | ".join(built.stderr.strip().splitlines()[-3:])
            raise self.fail(ctx, f"docker build of the service failed: {tail}")
        return "passed"


def docker_engine() -> str:
    """'reachable' when a Docker CLI and an engine endpoint (DOCKER_HOST, or the local socket) exist,
    else 'none': what `plan` can tell without asking the daemon."""
    if shutil.which("docker") is None:
        return "none"
    host = os.environ.get("DOCKER_HOST", "")
    return "reachable" if host or Path("/var/run/docker.sock").exists() else "none"


def _shape(graph: list[int | None], spec: Sequence[int | str | None] | None, prefix: str) -> list[int | str]:
    """A shape for signature.json: fixed axes as ints, dynamic ones by the deploy.yaml axis name where known."""
    named = spec if spec is not None and len(spec) == len(graph) else None
    out: list[int | str] = []
    for a, d in enumerate(graph):
        name = named[a] if named else None
        out.append(d if d is not None else name if isinstance(name, str) else f"{prefix}{a}")
    return out


def _checked(step: Step, ctx: StepContext, rows: list[dict], what: str) -> list[dict]:
    """Rows whose dtypes JSON can carry (numbers and booleans)."""
    for row in rows:
        if row["dtype"] in ("string", "bfloat16"):
            raise step.fail(ctx, f"the {what} '{row['name']}' is {row['dtype']}, which the JSON service cannot carry")
    return rows


@register
class ServiceFromOnnx(_ServiceStep):
    """Serve the ONNX model with ONNX Runtime behind a generated FastAPI app (types and shapes read from the file)."""

    name = "service-from-onnx"
    consumes = ("onnx",)
    produces = "service"
    packages = ("onnx", "onnxruntime", "fastapi", "starlette", "pydantic", "uvicorn", "numpy", "prometheus-client")
    toolchain = "onnx"
    description = "FastAPI app + signature.json + model.onnx + pinned requirements.txt + Dockerfile."

    def _signature(self, ctx: StepContext, src: Path) -> tuple[list[dict], list[dict], dict[str, Path]]:
        from buildsys.formats.serving.triton_signature import onnx_graph_and_files, onnx_signature

        proto, files = onnx_graph_and_files(self, ctx, self.model_file)
        ins, outs = onnx_signature(self, ctx, proto)
        specs = {i.name: list(i.shape) for i in ctx.model.inputs}
        batch = _batch_axis(ctx.model)
        inputs = [{"name": n, "dtype": t, "shape": _shape(s, specs.get(n), "dim")} for n, t, s in ins]
        outputs = [{"name": n, "dtype": t, "shape": _shape(s, [batch, *[None] * (len(s) - 1)] if s else None,
                                                           f"{n}_dim")} for n, t, s in outs]
        return _checked(self, ctx, inputs, "input"), _checked(self, ctx, outputs, "output"), files


@register
class ServiceTorchScriptFromTorchScript(_ServiceStep):
    """Serve the TorchScript model with torch behind the same FastAPI app (output types observed by running it)."""

    name = "service-torchscript-from-torchscript"
    consumes = ("torchscript",)
    produces = "service-torchscript"
    backend = "torchscript"
    model_file = "model.pt"
    packages = ("torch", "fastapi", "starlette", "pydantic", "uvicorn", "numpy", "prometheus-client")
    toolchain = "torch"
    description = "FastAPI app + signature.json + model.pt + pinned requirements.txt + Dockerfile."

    def _signature(self, ctx: StepContext, src: Path) -> tuple[list[dict], list[dict], dict[str, Path]]:
        from buildsys.formats.serving.triton_signature import torchscript_outputs

        inputs = [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in ctx.model.inputs]
        batch = _batch_axis(ctx.model)
        outputs = [{"name": spec.name, "dtype": dtype,
                    "shape": _shape(shape, [batch, *[None] * (len(shape) - 1)] if shape else None, f"{spec.name}_dim")}
                   for spec, (_, dtype, shape) in zip(ctx.model.outputs, torchscript_outputs(self, ctx, src))]
        return _checked(self, ctx, inputs, "input"), _checked(self, ctx, outputs, "output"), {self.model_file: src}


def _batch_axis(model: Model) -> str | None:
    """The name of the inputs' shared dynamic first axis (the batch), or None."""
    firsts = {i.shape[0] for i in model.inputs if i.shape}
    first = next(iter(firsts)) if len(firsts) == 1 else None
    return first if isinstance(first, str) else None
