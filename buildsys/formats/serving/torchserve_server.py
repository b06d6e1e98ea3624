"""The "torchserve-server" runtime: a .mar served by a real TorchServe on loopback, queried over HTTP.

`load` starts `torchserve` (a JVM frontend plus Python workers) in a private temporary directory:
model store, config.properties, logs, the frontend's temp files and TorchServe's pid file all live
there, every listener binds 127.0.0.1 on ports picked at run time, token auth, config snapshots and
metrics are off. It registers the archive synchronously (the handler's `initialize` runs then), and
each `run` posts the inputs as one .npz body to /predictions/<model name>, so they go through the
archive's handler exactly as a client's request would; the JSON reply is decoded in output order.

The server never outlives its session: `close` runs `torchserve --stop` and kills the server's
process group; a small supervisor process (the group's leader) kills the group when the process that
called `load` dies, through PR_SET_PDEATHSIG on Linux or by polling its parent elsewhere. (Linux
sends that signal when the *thread* that started the server exits: load and close in one thread.)
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch
from buildsys.formats.torch.module import torch_unavailable
from buildsys.formats.serving.torchserve_archive import read_manifest

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

START_TIMEOUT_S = 120.0  # JVM start until /ping answers
REGISTER_TIMEOUT_S = 300  # archive extraction plus the handler's initialize (loading the model)
REQUEST_TIMEOUT_S = 300.0  # one /predictions call
STOP_GRACE_S = 10.0  # after `torchserve --stop`, before the process group is killed
PORT_ATTEMPTS = 3  # a picked port can be taken before the JVM binds it: start again on new ports
MAX_MESSAGE_BYTES = 1 << 30  # TorchServe's default request limit (6.5 MB) is below one batch of images
LOG_LINES = 3
PORTS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")

# Runs as the server's process-group leader: when the caller dies it kills the group and (from a
# process in a session of its own, which survives that) removes the private directory. It then runs
# TorchServe's own launcher in the foreground, so the JVM is its child.
SUPERVISOR = r"""
import ctypes, os, signal, subprocess, sys, threading, time

caller, private = int(sys.argv[1]), sys.argv[2]
CLEAN = "import shutil, sys, time; time.sleep(1); shutil.rmtree(sys.argv[1], ignore_errors=True)"


def die(*_):
    subprocess.Popen([sys.executable, "-c", CLEAN, private], start_new_session=True)
    os.killpg(0, signal.SIGKILL)


signal.signal(signal.SIGTERM, die)
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):  # not Linux: poll the parent instead
    def watch():
        while os.getppid() == caller:
            time.sleep(0.5)
        die()
    threading.Thread(target=watch, daemon=True).start()
if os.getppid() != caller:  # the caller died before prctl
    die()
sys.argv = ["torchserve"] + sys.argv[3:]
from ts.model_server import start
start()
"""


def torchserve_version() -> str | None:
    """The installed torchserve distribution's version (from metadata, without importing it), or None."""
    try:
        return metadata.version("torchserve")
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def min_java(version: str) -> int:
    """The oldest Java a TorchServe release runs on: 17 from 0.11 on, 11 before."""
    return 17 if _release(version) >= (0, 11) else 11


def java_executable() -> str | None:
    """The java TorchServe's launcher will run: $JAVA_HOME/bin/java, else `java` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        return str(candidate) if candidate.is_file() else None
    return shutil.which("java")


def java_major(java: str) -> int | None:
    """Java's major version read from the `release` file of its home (no JVM start), or None if unknown."""
    home = Path(os.path.realpath(java)).parent.parent
    for release in (home / "release", home.parent / "release"):  # JDK 8 keeps the JRE under jre/
        try:
            text = release.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.MULTILINE)
        if found:
            major = int(found.group(1))
            return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8
    return None


def private_dir() -> Path:
    """A new directory for one server, in the temp directory unless that is too deep for the workers'
    Unix sockets (AF_UNIX paths hold 107 bytes: <dir>/tmp/.ts.sock.<port>), else in /tmp."""
    base = tempfile.gettempdir()
    if len(base) + len("/modelbuild-torchserve-12345678/tmp/.ts.sock.65535") > 107 and os.access("/tmp", os.W_OK):
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="modelbuild-torchserve-", dir=base))


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def config_properties(ports: dict[str, int], store: Path) -> str:
    """TorchServe's config: loopback only, no token auth, no metrics, one worker, large bodies allowed."""
    lines = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": ports["grpc_inference"],
        "grpc_management_port": ports["grpc_management"],
        "model_store": store,
        "disable_token_authorization": "true",
        "enable_model_api": "true",
        "enable_envvars_config": "false",
        "enable_metrics_api": "false",
        "disable_system_metrics": "true",
        "install_py_dep_per_model": "false",
        "default_workers_per_model": 1,
        "number_of_netty_threads": 2,
        "netty_client_threads": 1,
        "max_request_size": MAX_MESSAGE_BYTES,
        "max_response_size": MAX_MESSAGE_BYTES,
        "default_response_timeout": int(REQUEST_TIMEOUT_S),
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


# Log lines look like "2026-01-01T00:00:00,000 [INFO ] W-9000-m_1.0-stdout MODEL_LOG - text".
_LOG_PREFIX = re.compile(r"^\S+ \[\s*\w+\s*\] \S+ (?:MODEL_LOG|\S+) - ")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)(?::|$)")


class ServerLogs:
    """The server's log files in its private directory, read back to explain a failure in one line."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "logs"
        self.launcher = tmp / "server.out"

    def offset(self) -> int:
        """Where the worker log ends now: an excerpt `since` it covers only what came after."""
        try:
            return (self.dir / "model_log.log").stat().st_size
        except OSError:
            return 0

    def _lines(self, path: Path, since: int = 0) -> list[str]:
        try:
            with open(path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        stripped = (_LOG_PREFIX.sub("", line).strip() for line in text.splitlines())
        return [line[:300] for line in stripped if line and "TS_METRICS" not in line]

    def port_taken(self) -> bool:
        """Whether the frontend failed because a port it was given had been taken meanwhile."""
        return any("Address already in use" in _read(path) for path in (self.dir / "ts_log.log", self.launcher))

    def excerpt(self, since: int = 0, wait_s: float = 1.0) -> str:
        """The workers' exceptions (or last lines) since `since`, else the frontend's errors, else the
        launcher's output, joined on one line. Waits up to `wait_s` for an exception to be flushed."""
        deadline = time.monotonic() + wait_s
        while True:
            worker = self._lines(self.dir / "model_log.log", since)
            causes = list(dict.fromkeys(line for line in worker if _EXCEPTION.match(line)))
            if causes or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        frontend = [line for line in self._lines(self.dir / "ts_log.log") if "ERROR" in line or "Exception" in line]
        for lines in (causes, worker, frontend, self._lines(self.launcher)):
            if lines:
                return " | ".join(lines[-LOG_LINES:])
        return "(the server wrote no log)"


def _reason(exc: Exception) -> str:
    """What an HTTP call's failure says: TorchServe's JSON message, else the exception."""
    if isinstance(exc, urllib.error.HTTPError):
        try:
            body = json.loads(exc.read() or b"{}")
        except (ValueError, OSError):
            body = {}
        message = body.get("message") if isinstance(body, dict) else None
        return f"HTTP {exc.code}: {message or exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class TorchServeProcess:
    """One running TorchServe (supervisor, JVM, workers) with its private directory and ports."""

    def __init__(self, tmp: Path, ports: dict[str, int], process: subprocess.Popen, env: dict[str, str]):
        self.tmp = tmp
        self.ports = ports
        self.process = process
        self.env = env
        self.logs = ServerLogs(tmp)
        # Direct connections only: a proxy from the environment must not see loopback traffic.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def start(cls, tmp: Path) -> TorchServeProcess:
        """Start TorchServe in `tmp` and wait until it answers /ping (on new ports if one was taken)."""
        attempt = 1
        while True:
            server = cls._spawn(tmp, dict(zip(PORTS, free_ports(len(PORTS)))))
            try:
                server.wait_healthy()
                return server
            except StepError:
                server.stop()
                if attempt == PORT_ATTEMPTS or not server.logs.port_taken():
                    raise
            attempt += 1

    @classmethod
    def _spawn(cls, tmp: Path, ports: dict[str, int]) -> TorchServeProcess:
        for sub in ("store", "logs", "tmp"):
            (tmp / sub).mkdir(exist_ok=True)
        for old in (tmp / "logs").iterdir():
            old.unlink()
        config = tmp / "config.properties"
        config.write_text(config_properties(ports, tmp / "store"), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "TS_CONFIG_FILE"}  # it would replace --ts-config
        # TMPDIR holds the launcher's pid file (so `--stop` finds this server only) and TEMP the
        # frontend's java.io.tmpdir: worker sockets and extracted archives.
        env.update(TMPDIR=str(tmp / "tmp"), TEMP=str(tmp / "tmp"), LOG_LOCATION=str(tmp / "logs"),
                   METRICS_LOCATION=str(tmp / "logs"))
        args = ["--start", "--foreground", "--ncs", "--model-store", str(tmp / "store"), "--ts-config", str(config)]
        if _release(torchserve_version() or "0") >= (0, 11):
            args += ["--disable-token-auth", "--enable-model-api"]
        command = [sys.executable, "-c", SUPERVISOR, str(os.getpid()), str(tmp), *args]
        with open(tmp / "server.out", "wb") as out:
            process = subprocess.Popen(command, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return cls(tmp, ports, process, env)

    def url(self, api: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[api]}{path}"

    def call(self, api: str, path: str, data: bytes | None = None, method: str = "GET",
             timeout: float = REQUEST_TIMEOUT_S) -> Any:
        """One HTTP call to the server; its JSON answer."""
        request = urllib.request.Request(self.url(api, path), data=data, method=method,
                                         headers={"Content-Type": "application/octet-stream"} if data else {})
        with self._opener.open(request, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_healthy(self) -> None:
        """Until /ping answers; a StepError with the log if the server exits or the time runs out."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise StepError(f"TorchServe exited with status {code} while starting: {self.logs.excerpt(wait_s=0)}")
            try:
                self.call("inference", "/ping", timeout=2)
                return
            except (OSError, ValueError):
                time.sleep(0.2)
        raise StepError(f"TorchServe did not answer on 127.0.0.1:{self.ports['inference']} within "
                        f"{START_TIMEOUT_S:.0f} s: {self.logs.excerpt(wait_s=0)}")

    def register(self, archive: Path, name: str) -> None:
        """Load the archive with one worker and wait for it: the handler's initialize runs here."""
        store = self.tmp / "store" / "model.mar"
        try:
            os.link(archive, store)  # same file system: no copy of a large model
        except OSError:
            shutil.copyfile(archive, store)
        query = (f"/models?url=model.mar&model_name={quote(name)}&initial_workers=1&synchronous=true"
                 f"&response_timeout={REGISTER_TIMEOUT_S}")
        try:
            self.call("management", query, method="POST", timeout=REGISTER_TIMEOUT_S + 30)
        except (OSError, ValueError) as exc:
            raise StepError(f"TorchServe could not load model '{name}' from '{archive.name}' ({_reason(exc)}): "
                            f"{self.logs.excerpt()}") from exc
        self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        """Until a worker of `name` is READY: a synchronous registration may answer while it still loads."""
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while True:
            try:
                workers = self.call("management", f"/models/{quote(name)}", timeout=30)[0].get("workers", [])
            except (OSError, ValueError, LookupError, AttributeError) as exc:
                raise StepError(f"TorchServe does not describe model '{name}' ({_reason(exc)}): "
                                f"{self.logs.excerpt()}") from exc
            if any(w.get("status") == "READY" for w in workers):
                return
            if time.monotonic() > deadline or self.process.poll() is not None:
                states = ", ".join(str(w.get("status")) for w in workers) or "none"
                raise StepError(f"TorchServe registered model '{name}' but no worker became ready (workers: "
                                f"{states}): {self.logs.excerpt()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """`torchserve --stop` (this server's pid file), then kill whatever of the group is left."""
        if self.process.poll() is None:
            try:
                subprocess.run([sys.executable, "-m", "ts.model_server", "--stop"], check=False, cwd=self.tmp,
                               env=self.env, stdin=subprocess.DEVNULL, capture_output=True, timeout=STOP_GRACE_S)
                self.process.wait(timeout=STOP_GRACE_S)
            except (OSError, subprocess.SubprocessError):
                pass  # the group is killed below either way
        try:  # the supervisor is not reaped yet, so its group id cannot have been reused
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _shutdown(server: TorchServeProcess | None, tmp: Path) -> None:
    """Stop the server and remove its directory (a session's finalizer: runs once)."""
    try:
        if server is not None:
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TorchServeSession(Session):
    """A model served by a running TorchServe; `run` posts .npz bodies to /predictions/<name>."""

    def __init__(self, server: TorchServeProcess, name: str, model: Model):
        self.server = server
        self.name = name
        self.model = model
        self.max_batch = fixed_batch(model)
        # Runs once: on close(), when the session is collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, _shutdown, server, server.tmp)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        body = io.BytesIO()
        np.savez(body, **{i.name: np.ascontiguousarray(feeds[i.name]) for i in self.model.inputs})
        since = self.server.logs.offset()
        try:
            reply = self.server.call("inference", f"/predictions/{quote(self.name)}", data=body.getvalue(),
                                     method="POST")
        except (OSError, ValueError) as exc:
            raise StepError(f"TorchServe answered /predictions/{self.name} with {_reason(exc)}: "
                            f"{self.server.logs.excerpt(since)}") from exc
        samples = len(next(iter(feeds.values())))
        return [self._output(reply, spec.name, samples) for spec in self.model.outputs]

    def _output(self, reply: Any, name: str, samples: int) -> np.ndarray:
        """One output of the handler's JSON reply, checked to hold one row per sample sent."""
        import numpy as np

        if not isinstance(reply, dict) or name not in reply:
            have = sorted(reply) if isinstance(reply, dict) else type(reply).__name__
            raise StepError(f"the handler's reply has no output '{name}' (it holds {have}); it must be a JSON "
                            "object keyed by output name")
        value = np.asarray(reply[name])
        if value.ndim == 0 or len(value) != samples:
            raise StepError(f"the handler's output '{name}' has shape {list(value.shape)} for {samples} sample(s) "
                            "sent: its first axis must be the batch")
        return value

    def close(self) -> None:
        self._finalizer()


@register_runtime
class TorchServeServer(Runtime):
    """A real TorchServe on loopback serving the .mar through its handler (for `serving: true` checks)."""

    name = "torchserve-server"
    packages = ("torchserve", "torch")

    def unavailable(self) -> str | None:
        version = torchserve_version()
        if version is None or importlib.util.find_spec("ts") is None:
            return "TorchServe is not installed (pip install -c constraints.txt torchserve)"
        reason = torch_unavailable()
        if reason:
            return reason
        java = java_executable()
        if java is None:
            where = "$JAVA_HOME/bin" if os.environ.get("JAVA_HOME") else "PATH"
            return f"TorchServe needs Java, and there is no java on {where} (apt-get install default-jre-headless)"
        major, needed = java_major(java), min_java(version)
        if major is not None and major < needed:
            return (f"TorchServe {version} needs Java {needed}+, but {java} is Java {major} "
                    f"(apt-get install openjdk-{needed}-jre-headless, or set JAVA_HOME)")
        return None

    def load(self, path: Path, model: Model, root: Path) -> Session:
        path = Path(path)
        entry = read_manifest(path)["model"]
        _check_handler(path, entry)
        tmp = private_dir()
        server: TorchServeProcess | None = None
        try:
            server = TorchServeProcess.start(tmp)
            server.register(path, entry["modelName"])
        except BaseException:
            _shutdown(server, tmp)
            raise
        return TorchServeSession(server, entry["modelName"], model)


def _check_handler(path: Path, entry: dict[str, Any]) -> None:
    """A .mar whose handler TorchServe cannot find fails here, before a server starts."""
    handler = str(entry.get("handler", ""))
    if not handler:
        raise StepError(f"the manifest of '{path.name}' names no handler, so TorchServe cannot serve it")
    with zipfile.ZipFile(path) as archive:
        members = set(archive.namelist())
    if handler.endswith(".py") and handler.split(":")[0] not in members:
        raise StepError(f"the manifest of '{path.name}' names the handler '{handler}', which the archive does not hold")
