"""The watch over a step running in a worker process, and its stop (standard library, psutil where installed).

The orchestrator's thread that waits for the worker's reply samples, every `SAMPLE_SECONDS`, the step's
elapsed time and the resident memory of the worker with all its children (a browser, a server, a
converter's subprocess). Past the time budget or the memory ceiling it stops the step: it writes a marker
into the node's log, sends SIGUSR1 (the worker's faulthandler writes every thread's Python stack into
that log, from the signal handler, so even a worker stuck in C code answers), waits for the dump, then
SIGKILLs the worker and its descendants.

Why a sampled watch rather than rlimits: RLIMIT_AS limits address space, not memory, and the toolchains
reserve far more of it than they touch (TensorFlow's import: 2.3 GB virtual for 0.8 GB resident; Chromium,
which the web checks start, dies with SIGTRAP under any RLIMIT_AS up to 16 GB, its V8 cage and WebAssembly
memories being reservations); Linux ignores RLIMIT_RSS; a cgroup's memory.max needs a delegated cgroup,
which a user's build rarely has. docs/performance.md, "Step budgets", has the measurements.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.running.limits import duration, size
from buildsys.running.stack import MARKER, read_stop, stack_lines, where

#: How often the watch samples the worker: memory grows at most a few GB/s, so a ceiling is overshot by
#: at most about a second's allocation.
SAMPLE_SECONDS = 0.2
#: How long the worker has to write its stack after SIGUSR1 before it is killed anyway.
DUMP_SECONDS = 3.0


@dataclass
class Stop:
    """A step stopped past a limit: which (`limit`: "time" or "memory"), after how long, its peak resident
    memory, the limits, where its stack was, and what it printed last."""

    limit: str
    seconds: float
    peak_rss: int
    budget: float
    ceiling: int | None
    where: str = ""
    stack: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)

    def line(self) -> str:
        """'stopped: 12.5 GB over its 8.0 GB memory ceiling after 95 s, in onnx2tf/…:123 (convert)'."""
        if self.limit == "memory":
            what = f"{size(self.peak_rss)} over its {size(self.ceiling or 0)} memory ceiling after {self.seconds:.0f} s"
        else:
            what = f"still running at its {duration(self.budget)} time budget (peak {size(self.peak_rss)})"
        return f"stopped: {what}" + (f", {self.where}" if self.where else "")

    def as_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "seconds": round(self.seconds, 1), "peak_rss": self.peak_rss,
                "budget_seconds": round(self.budget, 1), "ceiling": self.ceiling, "where": self.where,
                "stack": self.stack, "log_tail": self.log_tail}


def stopped_lines(stopped: dict[str, Any]) -> list[str]:
    """A stopped step for the build's failure list: its limits, its stack (innermost first) and last output."""
    budget = f"time budget {duration(stopped.get('budget_seconds') or 0)}" + \
        (f" ({stopped['basis']})" if stopped.get("basis") else "")
    lines = [f"{budget}, memory ceiling {size(stopped.get('ceiling') or 0)}; peak {size(stopped.get('peak_rss') or 0)} "
             f"after {stopped.get('seconds', 0):.0f} s"]
    if stopped.get("stack"):
        lines += ["its stack, innermost first:"] + [f"  {frame}" for frame in stopped["stack"]]
    if stopped.get("log_tail"):
        lines += ["its last output:"] + [f"  {line}" for line in stopped["log_tail"]]
    return lines


class Watchdog:
    """Watches the process `pid` (and its children) for `seconds` of wall time and `ceiling` bytes of
    resident memory (None: no ceiling), from now."""

    def __init__(self, pid: int, seconds: float, ceiling: int | None, sample: float = SAMPLE_SECONDS):
        self.pid, self.seconds, self.ceiling, self.sample = pid, seconds, ceiling, sample
        self.started = time.monotonic()
        self.peak = 0
        self.measure()  # a step shorter than one sample still records what its worker held

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def next_wait(self) -> float:
        """Seconds to wait for the reply before the next sample."""
        return max(0.0, min(self.sample, self.seconds - self.elapsed))

    def measure(self) -> int:
        """The resident memory of the process and its children now (the peak keeps the highest)."""
        rss = tree_rss(self.pid)
        self.peak = max(self.peak, rss)
        return rss

    def over(self) -> str | None:
        """Sample now: "memory" past the ceiling, "time" past the budget, else None."""
        rss = self.measure()
        if self.ceiling and rss > self.ceiling:
            return "memory"
        return "time" if self.elapsed >= self.seconds else None

    def stop(self, limit: str, log: Path, root: Path | None = None) -> Stop:
        """Stop the watched process past `limit`: its stack into `log`, then SIGKILL to it and its descendants."""
        seconds = self.elapsed
        offset = _size(log)
        try:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"\n{MARKER} ({limit})\n")
            os.kill(self.pid, signal.SIGUSR1)
            _await_dump(log, offset)
        except OSError:
            pass  # the worker is already gone, or the log cannot be written: stop it without a stack
        kill_tree(self.pid)
        frames, tail = read_stop(log, offset)
        return Stop(limit, seconds, self.peak, self.seconds, self.ceiling, where(frames, root),
                    stack_lines(frames, root), tail)


def run_watched(args: list[str], cwd: Path, env: dict[str, str], seconds: float, ceiling: int | None = None) -> str | None:
    """Run `args` to its end under `seconds` and `ceiling` bytes (default: the steps' ceiling, `step_ceiling`) for it
    and its children, its output discarded: "time" or "memory" when it was killed past that limit, else None."""
    from buildsys.running.limits import step_ceiling

    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dog = Watchdog(proc.pid, seconds, ceiling or step_ceiling())
    while True:
        try:
            proc.wait(timeout=max(dog.next_wait(), 0.01))
            return None
        except subprocess.TimeoutExpired:
            limit = dog.over()
        if limit is not None:
            kill_tree(proc.pid)
            proc.wait()
            return limit


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _await_dump(log: Path, offset: int) -> None:
    """Wait until the worker's stack dump is in `log` after `offset` and has stopped growing (or DUMP_SECONDS)."""
    deadline, last = time.monotonic() + DUMP_SECONDS, -1
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _size(log)
        if now == last:
            with open(log, "rb") as f:
                f.seek(offset)
                if b"most recent call first" in f.read():
                    return
        last = now


def descendants(pid: int) -> list[int]:
    """The process ids of `pid`'s children, theirs, and so on (psutil, else Linux's /proc children lists)."""
    try:
        import psutil

        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    except ImportError:
        pass
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and its descendants; 0 when it is gone or cannot be read."""
    total = 0
    for each in [pid, *descendants(pid)]:
        try:
            total += int(Path(f"/proc/{each}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            try:
                import psutil

                total += psutil.Process(each).memory_info().rss
            except Exception:  # noqa: BLE001 - psutil missing, or the process is gone: count nothing
                pass
    return total


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant (listed first: once the parent dies they are reparented)."""
    for each in [*descendants(pid), pid]:
        try:
            os.kill(each, signal.SIGKILL)
        except OSError:
            pass
