"""The local executor: actions run in `python -m buildsys.running.worker` subprocesses, reused per toolchain.

The executor interface is `run(Action) -> reply` (buildsys.running.dask has the distributed one).
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
#: The environment variable that sets the pool's memory budget, and the default share of available RAM.
MEMORY_ENV, DEFAULT_MEMORY_SHARE = "MODELBUILD_WORKER_MEMORY", "50%"


@dataclass
class Action:
    """One step invocation, ready to send to a worker."""

    node: str
    toolchain: str
    request: dict[str, Any]
    timeout: float = DEFAULT_TIMEOUT
    #: The trees checked out into the step's scratch directory ("in", "ref" → lock file listing):
    #: what a remote executor (buildsys.running.dask) ships to its worker by digest.
    inputs: dict[str, list] = field(default_factory=dict)
    #: The worker to prefer when it is idle (a check: the worker that made its artifact).
    worker: str | None = None


class WorkerFailed(Exception):
    """The worker process died or hung; the message says how."""


class WorkerProcess:
    """A `python -m buildsys.running.worker` child that serves requests until closed."""

    def __init__(self, toolchain: str, stderr_path: Path):
        self.toolchain = toolchain
        self._stderr = open(stderr_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODELBUILD_PARENT_PID": str(os.getpid()),
               "MODELBUILD_WORKER_TOOLCHAIN": toolchain}  # its import blocks (worker.UNUSED_IMPORTS); ps, benchmarks
        self.proc = subprocess.Popen([sys.executable, "-m", "buildsys.running.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self.name = f"pid:{self.proc.pid}"  # in the build record's `built` entries

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
    """Runs actions in worker subprocesses reused per toolchain (imports are paid once).

    Idle workers stay warm while the pool (busy and idle workers, with their children) fits in
    `memory_budget` bytes, measured RSS; past it, idle workers are closed, those whose toolchain no
    queued node needs first (`expect`), then the least recently used. `max_idle` is only a safety
    net for hosts where RSS cannot be read."""

    def __init__(self, log_dir: Path, jobs: int = 1, memory_budget: int | None = None, max_idle: int | None = None):
        self.log_dir = log_dir
        self.jobs = jobs  # nodes the Builder keeps in flight (buildsys.running.dask.make_executor)
        self.memory_budget = memory_budget if memory_budget is not None else default_memory_budget()
        self.max_idle = max_idle if max_idle is not None else max(16, jobs * 4)
        self._idle: list[WorkerProcess] = []  # least recently used first
        self._busy: list[WorkerProcess] = []
        self._expected: dict[str, int] = {}
        self._last_rss: dict[str, int] = {}  # toolchain → RSS of its last worker: a new one's estimate
        self._lock = threading.Lock()
        self.started: dict[str, int] = {}  # toolchain → workers started (benchmarks, tests)
        self.evicted: dict[str, int] = {}  # toolchain → idle workers closed for the budget
        self.peak_rss = 0  # highest measured total RSS of the pool

    # --- what the Builder may ask -------------------------------------------------------------------
    def warm(self, toolchain: str, worker: str | None = None) -> bool:
        """Whether an idle worker of `toolchain` (or the idle worker `worker`) is ready now."""
        with self._lock:
            return any(w.toolchain == toolchain and (worker is None or w.name == worker) for w in self._idle)

    def expect(self, toolchains: dict[str, int]) -> None:
        """The toolchains the nodes still queued need (counts): idle workers of others go first."""
        with self._lock:
            self._expected = dict(toolchains)

    # --- the pool -----------------------------------------------------------------------------------
    def _acquire(self, toolchain: str, prefer: str | None = None) -> WorkerProcess:
        with self._lock:
            matching = [w for w in self._idle if w.toolchain == toolchain and w.alive]
            if matching:
                w = next((w for w in matching if w.name == prefer), matching[-1])
                self._idle.remove(w)
                self._busy.append(w)
                return w
            # make room for the new worker by what its toolchain took last time
            self._evict(extra=self._last_rss.get(toolchain, 0))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        w = WorkerProcess(toolchain, self.log_dir / f"worker-{toolchain}.stderr")
        with self._lock:
            self._busy.append(w)
            self.started[toolchain] = self.started.get(toolchain, 0) + 1
        return w

    def _release(self, worker: WorkerProcess) -> None:
        with self._lock:
            self._busy.remove(worker)
            self._idle.append(worker)
            self._evict()

    def _evict(self, extra: int = 0) -> None:
        """Close idle workers until the pool fits its budget (with `extra` bytes to come). Holds the lock."""
        for w in [w for w in self._idle if not w.alive]:
            self._idle.remove(w)
            w.close()
        while len(self._idle) > self.max_idle:
            self._close_idle(self._victim())
        rss = {id(w): worker_rss(w.proc.pid) for w in self._idle + self._busy}
        for w in self._idle + self._busy:
            if rss[id(w)]:
                self._last_rss[w.toolchain] = rss[id(w)]
        total = sum(rss.values())
        self.peak_rss = max(self.peak_rss, total)
        while self._idle and total + extra > self.memory_budget:
            victim = self._victim()
            total -= rss[id(victim)]
            self._close_idle(victim)
            self.evicted[victim.toolchain] = self.evicted.get(victim.toolchain, 0) + 1

    def _victim(self) -> WorkerProcess:
        """The idle worker least needed: none of the queued nodes wants its toolchain, else least recently used."""
        unwanted = [w for w in self._idle if not self._expected.get(w.toolchain)]
        return (unwanted or self._idle)[0]

    def _close_idle(self, worker: WorkerProcess) -> None:
        self._idle.remove(worker)
        worker.close()

    def run(self, action: Action) -> dict[str, Any]:
        worker = self._acquire(action.toolchain, action.worker)
        try:
            reply = worker.call(action.request, action.timeout)
        except WorkerFailed as exc:
            with self._lock:
                self._busy.remove(worker)
            worker.kill()
            return {"ok": False, "error": str(exc), "user": False}
        self._release(worker)
        return {**reply, "built": {**reply.get("built", {}), "worker": worker.name}}

    def close(self) -> None:
        with self._lock:
            for w in self._idle:
                w.close()
            self._idle.clear()


def parse_memory(text: str, available: int) -> int:
    """'50%' (of available RAM), '6G', '512M', '800K' or bytes → bytes."""
    text = text.strip().upper().removesuffix("B")
    if text.endswith("%"):
        return int(available * float(text[:-1]) / 100)
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


def available_memory() -> int:
    """Bytes of RAM available now (MemAvailable), or 8 GiB where it cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def default_memory_budget() -> int:
    """MODELBUILD_WORKER_MEMORY (e.g. '40%', '6G'), else half the RAM available when the build starts."""
    available = available_memory()
    return parse_memory(os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY_SHARE, available)


def worker_rss(pid: int) -> int:
    """Resident bytes of a worker and its children (a browser or server a check started); 0 if unknown."""
    try:
        import psutil

        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except ImportError:
        pass
    except Exception:  # psutil.Error: the worker is gone
        return 0
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota (cpu.max) where readable."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
