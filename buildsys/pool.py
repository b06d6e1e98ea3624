"""The local executor: actions run in `python -m buildsys.worker` subprocesses, reused per toolchain.

The executor interface is `run(Action) -> reply` (buildsys.dask_executor has the distributed one).
A worker keeps its toolchain imported between nodes, so torch, TensorFlow or coremltools are paid for
once per build and worker, not once per node; a worker that dies or hangs fails only its node.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = float(os.environ.get("MODELBUILD_STEP_TIMEOUT", "1800"))


@dataclass
class Action:
    """One step invocation, ready to send to a worker."""

    node: str
    toolchain: str
    request: dict[str, Any]
    timeout: float = DEFAULT_TIMEOUT
    #: The trees checked out into the step's scratch directory ("in", "ref" → lock file listing):
    #: what a remote executor (buildsys.dask_executor) ships to its worker by digest.
    inputs: dict[str, list] = field(default_factory=dict)


class WorkerFailed(Exception):
    """The worker process died or hung; the message says how."""


class WorkerProcess:
    """A `python -m buildsys.worker` child that serves requests until closed."""

    def __init__(self, toolchain: str, stderr_path: Path):
        self.toolchain = toolchain
        self._stderr = open(stderr_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODELBUILD_PARENT_PID": str(os.getpid()),
               "MODELBUILD_WORKER_TOOLCHAIN": toolchain}  # names the worker to ps / benchmarks/cold_build.py
        self.proc = subprocess.Popen([sys.executable, "-m", "buildsys.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env)

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerFailed(self._death()) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerFailed(f"timed out after {timeout:.0f} s (raise it with --timeout)")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerFailed(self._death())
        return json.loads(line)

    def _death(self) -> str:
        code = self.proc.wait()
        if code < 0:
            try:
                return f"the worker crashed ({signal.Signals(-code).name})"
            except ValueError:
                return f"the worker was killed by signal {-code}"
        return f"the worker exited with code {code}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()

    def close(self) -> None:
        if self.alive and self.proc.stdin:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._stderr.close()


class LocalExecutor:
    """Runs actions in worker subprocesses reused per toolchain (imports are paid once)."""

    def __init__(self, log_dir: Path, jobs: int = 1):
        self.log_dir = log_dir
        self.jobs = jobs  # nodes the Builder keeps in flight (buildsys.dask_executor.make_executor)
        self.max_idle = max(2, jobs * 2)  # bounds memory: each idle worker keeps its toolchain loaded
        self._idle: list[WorkerProcess] = []
        self._lock = threading.Lock()

    def _acquire(self, toolchain: str) -> WorkerProcess:
        with self._lock:
            for w in self._idle:
                if w.toolchain == toolchain and w.alive:
                    self._idle.remove(w)
                    return w
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return WorkerProcess(toolchain, self.log_dir / f"worker-{toolchain}.stderr")

    def _release(self, worker: WorkerProcess) -> None:
        with self._lock:
            self._idle.append(worker)
            while len(self._idle) > self.max_idle:
                self._idle.pop(0).close()

    def run(self, action: Action) -> dict[str, Any]:
        worker = self._acquire(action.toolchain)
        try:
            reply = worker.call(action.request, action.timeout)
        except WorkerFailed as exc:
            worker.kill()
            return {"ok": False, "error": str(exc), "user": False}
        self._release(worker)
        return reply

    def close(self) -> None:
        with self._lock:
            for w in self._idle:
                w.close()
            self._idle.clear()
