"""The "triton-server" runtimes: serve a Triton model repository from a real Triton Inference Server on loopback.

The server is the `tritonserver` binary that the nvidia-pytriton wheel ships (pytriton/tritonserver/bin,
its libraries in nvidia_pytriton.libs, found through LD_LIBRARY_PATH as pytriton itself does). `load`
starts it on 127.0.0.1 (a free gRPC port, HTTP and metrics off) with explicit model control, loads the
repository's one model, and waits until Triton reports it ready: a config.pbtxt that Triton refuses fails
there, with Triton's own error lines. The session (`triton_session.py`) sends every chunk with
tritonclient's gRPC client.

Triton runs a model through a *backend*. The wheel ships only the Python backend; the ONNX Runtime backend
(`triton-server`, for triton, triton-fp16, triton-int8) and the PyTorch backend (`triton-server-libtorch`,
for triton-torchscript) come from Triton's release (NGC's tritonserver container has them under
/opt/tritonserver/backends) or from directories named in MODELBUILD_TRITON_BACKENDS. Where the backend
is absent, `unavailable()` says so and the serving check is reported as not run, never as passed.

The server never outlives its session: it runs in its own process group, is killed with the group on
`close()` (or when the session is garbage collected), and gets SIGKILL from the kernel when the process
that started it dies (PR_SET_PDEATHSIG); how, `process.py` does for both serving runtimes.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session
from buildsys.formats.serving.process import die_with_parent, free_ports, one_line, read_log, start_group, terminate_group
from buildsys.formats.serving.triton_session import ServedSession

if TYPE_CHECKING:
    from buildsys.config.schema import Model
    from buildsys.formats.serving.repository import Layout

#: Directories (os.pathsep-separated) holding Triton backends, `<dir>/<backend>/libtriton_<backend>.so`.
BACKENDS_ENV = "MODELBUILD_TRITON_BACKENDS"
#: Seconds to wait for the server to report the model ready (default READY_TIMEOUT).
TIMEOUT_ENV = "MODELBUILD_TRITON_TIMEOUT"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
#: Where Triton's own releases (the NGC container) keep their backends.
RELEASE_BACKENDS = Path("/opt/tritonserver/backends")
INSTALL = "pip install -c constraints.txt --no-deps nvidia-pytriton tritonclient python-rapidjson"
LOG_LINES = 12
#: Error lines Triton logs on every host without a GPU: not why a model failed.
CPU_NOISE = ("CudaDriverHelper has not been initialized",)


@dataclass(frozen=True)
class ServerFiles:
    """The Triton server that nvidia-pytriton ships: binary, its libraries, its backends."""

    binary: Path
    libs: Path
    backends: Path  # the wheel's backends/ (python only)
    stub: Path | None  # the Python backend's stub for this interpreter's Python version
    version: str


def server_files() -> ServerFiles | str:
    """The shipped server, or a one-line reason why none can run on this host (no server is started)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the Triton server binary of nvidia-pytriton needs Linux x86_64 (this host: {sys.platform} " \
               f"{platform.machine()})"
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return f"nvidia-pytriton (which ships the Triton server binary) is not installed ({INSTALL})"
    if importlib.util.find_spec("tritonclient") is None or importlib.util.find_spec("grpc") is None:
        return f"tritonclient's gRPC client (tritonclient, grpcio) is not installed ({INSTALL})"
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not os.access(binary, os.X_OK):
        return f"nvidia-pytriton has no executable {binary}; reinstall it ({INSTALL})"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        libs = root / "external_libs"
    missing = _missing_libraries(str(binary), str(libs))
    if missing:
        return f"the Triton server binary needs shared libraries this host lacks: {', '.join(missing)}"
    stub = root / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / \
        "triton_python_backend_stub"
    return ServerFiles(binary, libs, root / "backends", stub if stub.is_file() else None, _version("nvidia-pytriton"))


@functools.lru_cache(maxsize=4)
def _missing_libraries(binary: str, libs: str) -> tuple[str, ...]:
    """Libraries `ldd` cannot resolve for the binary (empty when ldd itself is missing: the start will tell)."""
    env = {**os.environ, "LD_LIBRARY_PATH": _prepend(libs, os.environ.get("LD_LIBRARY_PATH"))}
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=20, env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line)


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def _prepend(path: str, current: str | None) -> str:
    return f"{path}{os.pathsep}{current}" if current else path


def backend_dirs(files: ServerFiles) -> list[Path]:
    """Where backends are looked for, first match wins: MODELBUILD_TRITON_BACKENDS, Triton's release, the wheel."""
    named = [Path(p) for p in os.environ.get(BACKENDS_ENV, "").split(os.pathsep) if p]
    return [*named, RELEASE_BACKENDS, files.backends]


def find_backend(files: ServerFiles, backend: str) -> Path | None:
    """The directory of `backend`: a C++ backend (libtriton_<name>.so) or a Python-based one (model.py).

    A Python-based backend runs in the wheel's Python backend, so it counts only when that one is usable.
    """
    for base in backend_dirs(files):
        candidate = base / backend
        if (candidate / f"libtriton_{backend}.so").is_file():
            return candidate
        if (candidate / "model.py").is_file() and backend != "python" and _python_backend(files) is not None:
            return candidate
    return None


def _python_backend(files: ServerFiles) -> Path | None:
    """The wheel's Python backend, usable when it ships a stub for this interpreter's Python version."""
    library = files.backends / "python" / "libtriton_python.so"
    return library.parent if library.is_file() and files.stub is not None else None


def _backend_missing(files: ServerFiles, backend: str) -> str | None:
    if find_backend(files, backend) is not None:
        return None
    shipped = sorted(p.name for p in files.backends.iterdir() if p.is_dir()) if files.backends.is_dir() else []
    return (f"the Triton server of nvidia-pytriton {files.version} ships no '{backend}' backend (it ships: "
            f"{', '.join(shipped) or 'none'}); put Triton's backends/{backend}/ of the same release (e.g. "
            f"{RELEASE_BACKENDS} in NGC's tritonserver container) in a directory named by {BACKENDS_ENV}")


@register_runtime
class TritonServer(Runtime):
    """A Triton model repository served by a real Triton Inference Server (ONNX Runtime backend)."""

    name = "triton-server"
    packages = ("nvidia-pytriton", "tritonclient", "grpcio", "protobuf")
    #: The Triton backend the formats served by this runtime need.
    backend: ClassVar[str] = "onnxruntime"

    def _unavailable(self) -> str | None:
        files = server_files()
        if isinstance(files, str):
            return files
        return _backend_missing(files, self.backend)

    def out_of_reach(self) -> str | None:
        # nvidia-pytriton installs from PyPI, but its server ships only the python backend; the others
        # come in NGC's tritonserver containers, which no registry this host reaches serves.
        files = server_files()
        if isinstance(files, str):
            return files if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64") else None
        return _backend_missing(files, self.backend)

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        from buildsys.formats.serving.repository import locate

        files = server_files()
        if isinstance(files, str):
            raise StepError(f"no Triton server can run here: {files}")
        layout = locate(path)  # the config is a valid ModelConfig naming a known backend and its file
        missing = _backend_missing(files, layout.backend)
        if missing:
            raise StepError(f"{layout.model_dir.name}/config.pbtxt selects the '{layout.backend}' backend: {missing}")
        server = TritonProcess(files, layout)
        try:
            server.start()
            return ServedSession(server, layout, model)
        except BaseException:
            server.stop()
            raise

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        return None  # the structure is inspected by the format's own runtime (triton-layout)


@register_runtime
class TritonServerLibtorch(TritonServer):
    """A Triton model repository served by a real Triton Inference Server (PyTorch/libtorch backend)."""

    name = "triton-server-libtorch"
    backend = "pytorch"


class TritonProcess:
    """One tritonserver process serving one model on a loopback gRPC port, with its scratch directory."""

    def __init__(self, files: ServerFiles, layout: "Layout"):
        self.files = files
        self.layout = layout
        self.model_name = layout.model_dir.name
        self.scratch = Path(tempfile.mkdtemp(prefix="modelbuild-triton-"))
        self.log_path = self.scratch / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.client: Any = None
        self.startup_s = 0.0
        self._finalizer = weakref.finalize(self, _cleanup, None, self.scratch)

    def start(self) -> None:
        """Start the server and return once the model is ready; StepError with Triton's errors otherwise."""
        import tritonclient.grpc as grpcclient

        started = time.perf_counter()
        self.port = free_ports(1)[0]
        self.process = start_group(self._command(), self.log_path, self._env(), self.scratch,
                                   preexec_fn=die_with_parent)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, self.process, self.scratch)
        self.client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.port}")
        self._wait_ready()
        self.startup_s = round(time.perf_counter() - started, 3)

    def _command(self) -> list[str]:
        backends = self._backend_directory()
        command = [str(self.files.binary), f"--model-repository={self.layout.model_dir.parent}",
                   f"--backend-directory={backends}", "--model-control-mode=explicit",
                   f"--load-model={self.model_name}", "--exit-on-error=true", "--strict-readiness=true",
                   "--allow-http=false", "--allow-metrics=false", "--allow-gpu-metrics=false",
                   "--allow-cpu-metrics=false", "--grpc-address=127.0.0.1", f"--grpc-port={self.port}",
                   "--exit-timeout-secs=5", "--log-info=true"]
        if backends.parent == self.scratch:  # the Python backend: unique shared-memory names per server
            command.append(f"--backend-config=python,shm-region-prefix-name=modelbuild{os.getpid()}p{self.port}")
        return command

    def _backend_directory(self) -> Path:
        """The --backend-directory: where a C++ backend was found, as it is; for a Python-based backend, a
        private copy of it beside the wheel's Python backend and this Python's stub (Triton refuses links
        whose target lies outside the backend directory, so these small files are copied)."""
        import shutil

        found = find_backend(self.files, self.layout.backend)
        assert found is not None  # load() checked it
        if (found / f"libtriton_{self.layout.backend}.so").is_file():
            return found.parent
        python = _python_backend(self.files)
        assert python is not None and self.files.stub is not None  # find_backend() checked it
        backends = self.scratch / "backends"
        shutil.copytree(found, backends / self.layout.backend, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(python, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.files.stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = _prepend(str(self.files.libs), env.get("LD_LIBRARY_PATH"))
        # The Python backend's stub finds this interpreter's packages through the first python on PATH.
        env["PATH"] = _prepend(str(Path(sys.executable).parent), env.get("PATH"))
        return env

    def _wait_ready(self) -> None:
        from tritonclient.utils import InferenceServerException

        timeout = float(os.environ.get(TIMEOUT_ENV) or READY_TIMEOUT)
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while True:
            code = self.process.poll()
            if code is not None:
                raise StepError(f"Triton Inference Server could not load model '{self.model_name}' (it exited with "
                                f"code {code}): {self.log_tail()}")
            try:
                if self.client.is_model_ready(self.model_name):
                    return
            except InferenceServerException:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise StepError(f"Triton Inference Server did not report model '{self.model_name}' ready within "
                                f"{timeout:.0f} s (raise {TIMEOUT_ENV} for big models): {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        """Triton's error lines (E...), else its last lines, joined on one line."""
        text = read_log(self.log_path)
        if text is None:
            return "no server log"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if line[:1] == "E" and line[1:5].isdigit() and not any(
            noise in line for noise in CPU_NOISE)]
        return one_line(errors or lines, LOG_LINES, 400) or "the server wrote nothing"

    def stop(self) -> None:
        """Stop the server (its whole process group) and remove the scratch directory. Idempotent."""
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
        self._finalizer()


def _cleanup(process: "subprocess.Popen[bytes] | None", scratch: Path) -> None:
    """Terminate the server's process group (SIGTERM, then SIGKILL) and remove its scratch directory."""
    import shutil

    if process is not None:
        terminate_group(process, STOP_TIMEOUT)  # the whole group: Python backend stubs and stragglers too
    shutil.rmtree(scratch, ignore_errors=True)
