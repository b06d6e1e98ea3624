"""The local executor: actions run in `python -m buildsys.running.worker` subprocesses, reused per toolchain.

The executor interface is `run(Job) -> reply` (buildsys.running.dask has the distributed one).
A worker keeps its toolchain imported between nodes, so torch, TensorFlow or coremltools are paid for
once per build and worker, not once per node; a worker that dies, or that a step's time budget or memory
ceiling stops (running/limits.py, running/watchdog.py), fails only its node.
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
from typing import Any, Protocol

from buildsys.records import FileRow, WorkerReply, WorkerRequest
from buildsys.running.limits import StepBudget, parse_memory, step_ceiling
from buildsys.running.watchdog import Watchdog, tree_rss

#: The time budget of a job that was given none (running/limits.py scales each node's to its model).
DEFAULT_TIMEOUT = float(os.environ.get("MODELBUILD_STEP_TIMEOUT", "1800"))
#: The environment variable that sets the pool's memory budget, and the default share of available RAM.
MEMORY_ENV, DEFAULT_MEMORY_SHARE = "MODELBUILD_WORKER_MEMORY", "50%"


@dataclass
class Job:
    """One step invocation, ready to send to a worker."""

    node: str
    toolchain: str
    request: WorkerRequest
    timeout: float = DEFAULT_TIMEOUT
    #: The trees checked out into the step's scratch directory ("in", "ref" → lock file listing):
    #: what a remote executor (buildsys.running.dask) ships to its worker by digest.
    inputs: dict[str, list[FileRow]] = field(default_factory=dict)
    #: The worker to prefer when it is idle (a check: the worker that made its artifact).
    worker: str | None = None
    #: The memory ceiling of the worker and its children in bytes (None: the executor's), and where `timeout`
    #: comes from, in words (recorded with the node).
    memory: int | None = None
    basis: str = ""


class Executor(Protocol):
    """What the Builder asks of an executor: run a job and reply (never raising for the step's own failure),
    report which toolchains are warm and hear which the queued nodes need (both may know nothing: a cluster's
    workers are not this process's to see), and close. `LocalExecutor` and `running.dask.DaskExecutor`
    implement it."""

    jobs: int  # how many nodes the Builder keeps in flight

    def run(self, job: Job) -> WorkerReply: ...

    def warm(self, toolchain: str, worker: str | None = None) -> bool: ...

    def expect(self, toolchains: dict[str, int]) -> None: ...

    def close(self) -> None: ...


class WorkerFailed(Exception):
    """The worker process died, or was stopped past its step's budget; the message says how, `stopped` (a
    watchdog Stop as a dict) what it was doing then."""

    def __init__(self, message: str, stopped: dict[str, Any] | None = None):
        super().__init__(message)
        self.stopped = stopped


class WorkerProcess:
    """A `python -m buildsys.running.worker` child that serves requests until closed."""

    def __init__(self, toolchain: str, stderr_path: Path):
        self.toolchain = toolchain
        self._stderr = open(stderr_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MODELBUILD_PARENT_PID": str(os.getpid()),
               "MODELBUILD_WORKER_TOOLCHAIN": toolchain}  # its import blocks (worker.unused_imports); ps, benchmarks
        self.proc = subprocess.Popen([sys.executable, "-m", "buildsys.running.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self.name = f"pid:{self.proc.pid}"  # in the build record's `built` entries
        self.peak_rss = 0  # the highest resident memory (with children) sampled during the last call

    def call(self, request: WorkerRequest, timeout: float, memory: int | None = None) -> WorkerReply:
        """Send one request and wait for its reply, watched (running/watchdog.py): past `timeout` seconds or
        `memory` bytes the worker is stopped with its stack taken, and WorkerFailed says so."""
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerFailed(self._death()) from None
        dog = Watchdog(self.proc.pid, timeout, memory)
        while not select.select([self.proc.stdout], [], [], dog.next_wait())[0]:
            limit = dog.over()
            if limit is not None:
                stop = dog.stop(limit, Path(request["log"]), Path(request["root"]) if request.get("root") else None)
                self.peak_rss = dog.peak
                self.kill()
                raise WorkerFailed(stop.line(), stop.as_dict())
        dog.measure()
        self.peak_rss = dog.peak
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

    def ask_to_exit(self) -> None:
        """Close the worker's stdin: it finishes and exits (a pool closing many asks them all, then waits)."""
        if self.alive and self.proc.stdin:
            self.proc.stdin.close()

    def close(self) -> None:
        self.ask_to_exit()
        if self.alive:
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
        self.step_ceiling = step_ceiling()  # each busy worker's own limit (a job may set its own)
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

    def run(self, job: Job) -> WorkerReply:
        worker = self._acquire(job.toolchain, job.worker)
        memory = job.memory or self.step_ceiling
        budget = StepBudget(job.timeout, memory, job.basis).as_dict()  # recorded with the node
        try:
            reply = worker.call(job.request, job.timeout, memory)
        except WorkerFailed as exc:
            with self._lock:
                self._busy.remove(worker)
            worker.kill()
            failed = WorkerReply(ok=False, error=str(exc), user=False, built={"budget": budget})
            if exc.stopped:
                failed["metrics"] = {"stopped": {**exc.stopped, "basis": job.basis}}
            return failed
        self._release(worker)
        reply["built"] = {**reply.get("built", {}), "worker": worker.name, "budget": budget,
                          "peak_rss": worker.peak_rss}
        return reply

    def close(self) -> None:
        with self._lock:
            for w in self._idle:
                w.ask_to_exit()  # all of them first: they exit side by side
            for w in self._idle:
                w.close()
            self._idle.clear()


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
    return tree_rss(pid)


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
