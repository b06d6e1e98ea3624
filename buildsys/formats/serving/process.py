"""Server processes of the serving runtimes: started in a group of their own, on free loopback ports, killed as a group.

Triton (`triton_server.py`) and TorchServe (`torchserve_process.py`) each run a real server for one
check. What they share lives here, and neither runtime is imported: free ports on 127.0.0.1, a start
in a new session (so the server is the leader of its own process group, and everything it spawns,
stubs and workers included, can be signalled at once), the kernel's PR_SET_PDEATHSIG so the server
dies with the process that started it, killing the group, and reading the server's log back as one
line for an error message. How each server is configured, waited for and asked to stop stays with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (the kernel picks them; a server cannot
    report ports it picked itself). All are held open until every one is picked, so none repeats."""
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


def start_group(command: list[str], log_path: Path, env: dict[str, str], cwd: Path,
                preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """Start `command` as the leader of a new session and process group, stdout and stderr into `log_path`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn)


def die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGKILL when the process that started it dies."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the process group `process` leads (gone already, or not ours: nothing to do)."""
    try:
        os.killpg(process.pid, sig)  # the group leader's pid is the group id (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(process: subprocess.Popen[bytes], wait_s: float | None = None) -> None:
    """SIGKILL the whole group (stragglers and children of the leader too), then reap the leader.

    `wait_s` None waits as long as it takes. Call it before the leader is reaped by anything else: until
    then its pid, and so the group id, cannot have been reused.
    """
    signal_group(process, signal.SIGKILL)
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        pass


def terminate_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the group, give the leader `grace_s` to exit, then kill what is left (waiting `grace_s` again)."""
    signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    kill_group(process, grace_s)


def read_log(path: Path, since: int = 0) -> str | None:
    """A server log's text from byte offset `since` (undecodable bytes replaced), or None when unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return None


def one_line(lines: list[str], count: int, width: int) -> str:
    """The last `count` lines, each cut to `width` characters, joined into one line for an error message."""
    return " | ".join(line[:width] for line in lines[-count:])
