"""The service's app under a real uvicorn on loopback, for one check: start, wait for /health, HTTP calls, stop.

`ServiceProcess.start` runs `python -m uvicorn app:create_app --factory` on the artifact's directory
(`--app-dir`) from a private temporary directory, on a free 127.0.0.1 port (picked again if it was
taken before uvicorn bound it), bytecode writing off so nothing lands in the artifact. The server
leads a process group of its own and dies with the process that started it (process.py); `stop`
terminates the group and removes the directory. HTTP goes through http.client (no client library:
a malformed request must reach the server exactly as written).
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buildsys.errors import StepError
from buildsys.formats.serving.process import die_with_parent, free_ports, one_line, read_log, start_group, terminate_group

START_TIMEOUT_S = 120.0  # interpreter start, fastapi/onnxruntime imports, the model's load
REQUEST_TIMEOUT_S = 300.0
STOP_GRACE_S = 5.0
PORT_ATTEMPTS = 3


class ServiceProcess:
    """One uvicorn serving one service directory; `call` is one HTTP request to it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, tmp: Path):
        self.process = process
        self.port = port
        self.tmp = tmp
        self.log = tmp / "server.log"

    @classmethod
    def start(cls, directory: Path, env: dict[str, str] | None = None) -> ServiceProcess:
        """Start uvicorn on `directory` and wait until /health answers 200 (StepError with the log's tail if not)."""
        tmp = Path(tempfile.mkdtemp(prefix="modelbuild-service-"))
        environ = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        try:
            for attempt in range(PORT_ATTEMPTS):
                port = free_ports(1)[0]
                command = [sys.executable, "-m", "uvicorn", "app:create_app", "--factory", "--app-dir",
                           str(Path(directory).resolve()), "--host", "127.0.0.1", "--port", str(port),
                           "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "2"]
                server = cls(start_group(command, tmp / "server.log", environ, tmp, die_with_parent), port, tmp)
                if server._wait_healthy():
                    return server
                taken = "address already in use" in (read_log(server.log) or "").lower()
                server._kill()
                if not taken or attempt == PORT_ATTEMPTS - 1:
                    raise StepError(f"the service did not come up on 127.0.0.1:{port}: {server.excerpt()}")
            raise AssertionError("unreachable")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                status, _ = self.call("GET", "/health", timeout=5.0)
                if status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = REQUEST_TIMEOUT_S, declared_length: int | None = None) -> tuple[int, bytes]:
        """One request: (status, body). `declared_length` sends that Content-Length whatever the body's size
        (a client announcing a body too large to be accepted). OSError when no answer comes."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest(method, path)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            if body is not None:
                conn.putheader("Content-Length", str(declared_length if declared_length is not None else len(body)))
            try:  # headers and body in one send: no wait on a delayed ACK between them
                conn.endheaders(body or None)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer (413) and close before reading all of it: read the answer
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def excerpt(self) -> str:
        """The server log's last lines on one line (its exception, usually)."""
        lines = [line for line in (read_log(self.log) or "").splitlines() if line.strip()]
        return one_line(lines, 3, 300) or f"no output (exit status {self.process.poll()})"

    def _kill(self) -> None:
        terminate_group(self.process, STOP_GRACE_S)

    def stop(self) -> None:
        """Terminate the server's group and remove its directory (idempotent)."""
        try:
            self._kill()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
