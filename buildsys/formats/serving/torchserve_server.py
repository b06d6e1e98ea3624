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

This module is the runtime (what TorchServe needs to run here, Java included) and the session; the
server process itself (config, supervisor, HTTP calls, logs) is `torchserve_process.py`.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch
from buildsys.formats.serving.process import free_ports
from buildsys.formats.serving.torchserve_archive import read_manifest
from buildsys.formats.serving.torchserve_process import (
    PORTS,
    ServerLogs,
    TorchServeProcess,
    config_properties,
    http_failure,
    torchserve_version,
    version_tuple,
)

# The runtime and session of this module, and the server's parts (from torchserve_process.py and
# process.py) that callers and tests have always imported from here.
__all__ = ["PORTS", "ServerLogs", "TorchServeServer", "TorchServeSession", "config_properties", "free_ports",
           "java_executable", "java_major", "min_java", "private_dir", "torchserve_version"]

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model


def min_java(version: str) -> int:
    """The oldest Java a TorchServe release runs on: 17 from 0.11 on, 11 before."""
    return 17 if version_tuple(version) >= (0, 11) else 11


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


def _shutdown(server: TorchServeProcess | None, tmp: Path) -> None:
    """Stop the server and remove its directory (a session's finalizer: runs once)."""
    try:
        if server is not None:
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _savez(out: IO[bytes], arrays: dict[str, "np.ndarray"]) -> None:
    """np.savez(out, **arrays) without the keyword arguments: np.savez would take an input named 'file' for
    its own parameter (TypeError) and one named 'allow_pickle' for its flag (the array silently left out).
    The same archive np.savez writes: stored .npy members, zip64 allowed."""
    import numpy as np

    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value))


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
        _savez(body, {i.name: np.ascontiguousarray(feeds[i.name]) for i in self.model.inputs})
        since = self.server.logs.offset()
        try:
            reply = self.server.call("inference", f"/predictions/{quote(self.name)}", data=body.getvalue(),
                                     method="POST")
        except (OSError, ValueError) as exc:
            raise StepError(f"TorchServe answered /predictions/{self.name} with {http_failure(exc)}: "
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

    os_packages = {"java": "default-jre-headless"}  # TorchServe's frontend is a Java server

    requires, extra = ("torch",), "serving"

    def _unavailable(self) -> str | None:
        version = torchserve_version()
        if version is None or importlib.util.find_spec("ts") is None:
            return "TorchServe is not installed (pip install -c constraints.txt torchserve)"
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
