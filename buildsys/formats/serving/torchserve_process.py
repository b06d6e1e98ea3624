"""A TorchServe process on loopback for one check: its config, supervisor, HTTP calls, logs and stop.

`TorchServeProcess.start` runs `torchserve` (a JVM frontend plus Python workers) in a private
directory it is given: model store, config.properties, logs, the frontend's temp files and
TorchServe's pid file all live there, every listener binds 127.0.0.1 on ports picked at run time
(picked again if one was taken before the JVM bound it), token auth, config snapshots and metrics are
off. `register` loads an archive synchronously (the handler's `initialize` runs then) and waits for a
ready worker; `call` is one HTTP call to the inference or management API; `ServerLogs` turns the
server's logs into a one-line explanation of a failure.

The server's process group is led by a small supervisor that kills the group when the process that
started it dies (PR_SET_PDEATHSIG on Linux, polling its parent elsewhere); `stop` runs
`torchserve --stop` and kills the group. Ports, the group start and the kill come from `process.py`,
shared with Triton. The runtime and its session are in `torchserve_server.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from buildsys.errors import StepError
from buildsys.formats.serving.process import free_ports, kill_group, one_line, read_log, start_group

START_TIMEOUT_S = 120.0  # JVM start until /ping answers
REGISTER_TIMEOUT_S = 300  # archive extraction plus the handler's initialize (loading the model)
REQUEST_TIMEOUT_S = 300.0  # one /predictions call
STOP_GRACE_S = 10.0  # after `torchserve --stop`, before the process group is killed
PORT_ATTEMPTS = 3  # a picked port can be taken before the JVM binds it: start again on new ports
MAX_MESSAGE_BYTES = 1 << 30  # TorchServe's default request limit (6.5 MB) is below one batch of images
LOG_LINES = 3
LINE_WIDTH = 300  # characters kept of one log line
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


def version_tuple(version: str) -> tuple[int, ...]:
    """The release numbers of a version string: "0.12.0" → (0, 12, 0), at most three."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


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
        text = read_log(path, since) or ""
        stripped = (_LOG_PREFIX.sub("", line).strip() for line in text.splitlines())
        return [line[:LINE_WIDTH] for line in stripped if line and "TS_METRICS" not in line]

    def port_taken(self) -> bool:
        """Whether the frontend failed because a port it was given had been taken meanwhile."""
        return any("Address already in use" in (read_log(path) or "")
                   for path in (self.dir / "ts_log.log", self.launcher))

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
                return one_line(lines, LOG_LINES, LINE_WIDTH)
        return "(the server wrote no log)"


def http_failure(exc: Exception) -> str:
    """What an HTTP call's failure says: TorchServe's JSON message, else the exception."""
    import urllib.error

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
        # urllib.request (with http.client and ssl) is imported here, not at the top: this module is
        # loaded by the format registry on every `plan`, where it would cost ~8 ms for nothing.
        import urllib.request

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
        if version_tuple(torchserve_version() or "0") >= (0, 11):
            args += ["--disable-token-auth", "--enable-model-api"]
        command = [sys.executable, "-c", SUPERVISOR, str(os.getpid()), str(tmp), *args]
        process = start_group(command, tmp / "server.out", env, tmp)  # the supervisor sets its own death signal
        return cls(tmp, ports, process, env)

    def url(self, api: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[api]}{path}"

    def call(self, api: str, path: str, data: bytes | None = None, method: str = "GET",
             timeout: float = REQUEST_TIMEOUT_S) -> Any:
        """One HTTP call to the server; its JSON answer."""
        import urllib.request

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
            raise StepError(f"TorchServe could not load model '{name}' from '{archive.name}' ({http_failure(exc)}): "
                            f"{self.logs.excerpt()}") from exc
        self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        """Until a worker of `name` is READY: a synchronous registration may answer while it still loads."""
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while True:
            try:
                workers = self.call("management", f"/models/{quote(name)}", timeout=30)[0].get("workers", [])
            except (OSError, ValueError, LookupError, AttributeError) as exc:
                raise StepError(f"TorchServe does not describe model '{name}' ({http_failure(exc)}): "
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
        kill_group(self.process)  # the supervisor is not reaped yet, so its group id cannot have been reused
