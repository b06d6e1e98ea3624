"""Latency measurement: time a callable, summarize the samples, compare them with budgets, meter memory.

Standard library only (no numpy, no torch), so the statistics are unit-testable with a fake timer and
the module is cheap to import from a worker. The bench step (buildsys/nodes/bench.py) feeds it sessions.

Conventions: samples are seconds per timed call; summaries are milliseconds. A "call" processes one
batch of `batch_size` samples, so throughput is batch_size / latency.
"""

from __future__ import annotations

import gc
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

#: Hard cap on timed calls, whatever min_seconds asks for (a 10 µs model under a 10 s floor).
MAX_RUNS = 100_000


# --- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def iqr(values: Sequence[float]) -> float:
    """Interquartile range: p75 - p25."""
    return percentile(values, 75) - percentile(values, 25)


#: The statistics a summary gives of the samples, in its order (each in milliseconds, as `<name>_ms`).
STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {
    "p50": lambda s: percentile(s, 50), "p95": lambda s: percentile(s, 95), "mean": mean, "std": stdev,
    "min": min, "max": max, "iqr": iqr}


@dataclass(frozen=True)
class Timing:
    """The timed calls of one measurement (seconds each, in run order) and how they were taken."""

    samples: tuple[float, ...]
    warmup: int
    wall_s: float  # wall time of the timed phase, timer overhead between calls included

    @property
    def runs(self) -> int:
        return len(self.samples)

    def stat(self, name: str) -> float:
        """One of STATISTICS of the samples ("p50", "min"), in seconds."""
        return STATISTICS[name](self.samples)

    def summary(self, batch_size: int = 1) -> dict[str, Any]:
        """JSON-ready statistics in milliseconds, with throughput in samples per second.

        `spread` is p95 / p50: 1.0 is a perfectly steady runtime, 1.5 means the slow tail is half
        again the typical call (noise from neighbours, allocator, thermal). `iqr_ms` is the
        robust width of the middle half.
        """
        total = math.fsum(self.samples)
        stats = {name: self.stat(name) for name in STATISTICS}
        p50 = stats["p50"]
        return {
            **{f"{name}_ms": _ms(value) for name, value in stats.items()},
            "spread": round(stats["p95"] / p50, 4) if p50 > 0 else None,
            "throughput": round(batch_size * self.runs / total, 3) if total > 0 else None,
            "runs": self.runs, "warmup": self.warmup, "batch_size": batch_size,
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 6)  # nanosecond resolution is all a timer offers


def measure(fn: Callable[[], Any], warmup: int = 5, repeats: int = 30, min_seconds: float = 0.0, *,
            max_runs: int = MAX_RUNS, timer: Callable[[], float] = time.perf_counter,
            disable_gc: bool = True, on_call: Callable[[], None] | None = None) -> Timing:
    """Call `fn` `warmup` times untimed, then time calls until there are at least `repeats` of them
    and the timed phase has lasted `min_seconds` (never more than `max_runs` calls).

    Each call is timed on its own (timer before and after), so the samples are a distribution, not
    an average. The garbage collector is paused during the timed phase (as timeit does): a collection
    triggered by the harness is not the model's latency. `on_call` runs after each timed call,
    outside the timing (the memory meter's sampler). `timer` returns seconds; tests pass a fake one.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    if warmup < 0 or min_seconds < 0:
        raise ValueError("warmup and min_seconds cannot be negative")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    if disable_gc:
        gc.collect()
        gc.disable()
    try:
        start = timer()
        now = start
        while len(samples) < max(1, max_runs):
            before = timer()
            fn()
            now = timer()
            samples.append(now - before)
            if on_call is not None:
                on_call()
            if len(samples) >= repeats and now - start >= min_seconds:
                break
    finally:
        if disable_gc and gc_was_enabled:
            gc.enable()
    return Timing(tuple(samples), warmup, now - start)


# --- budgets -------------------------------------------------------------------------------------

#: Budget option -> the summary statistic it limits.
BUDGETS = {"p50_ms": "p50_ms", "p95_ms": "p95_ms"}


def budget_items(summary: dict[str, Any], budgets: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """Check-shaped items `{observed, allowed, op, ok}` for every budget that is set (None: skipped)."""
    items: dict[str, dict[str, Any]] = {}
    for name, allowed in budgets.items():
        if allowed is None:
            continue
        observed = summary.get(BUDGETS.get(name, name))
        ok = observed is not None and observed <= allowed
        items[name] = {"observed": observed, "allowed": allowed, "op": "<=", "ok": bool(ok)}
    return items


def budgets_passed(items: dict[str, dict[str, Any]]) -> bool | None:
    """True when every budget is met, False when one is missed, None when there is no budget."""
    if not items:
        return None
    return all(item["ok"] for item in items.values())


def budget_failures(items: dict[str, dict[str, Any]]) -> list[str]:
    """One line per missed budget, e.g. 'p95 latency 3.2 ms > 2 ms'."""
    return [f"{name.removesuffix('_ms')} latency {item['observed']:.4g} ms > {item['allowed']:.4g} ms"
            for name, item in items.items() if not item["ok"]]


# --- memory --------------------------------------------------------------------------------------


def current_rss() -> int | None:
    """Resident set size of this process in bytes (psutil, else /proc), or None when unknown."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _lifetime_peak() -> int | None:
    """getrusage's peak RSS in bytes (kilobytes on Linux, bytes on macOS), or None (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _hwm() is not None
    except OSError:
        return False


def _hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class RssMeter:
    """Peak resident memory added while the block runs (model load + inference), in bytes.

    A worker is a long-lived process whose lifetime peak says nothing about this model, so on Linux
    the kernel's high-water mark is reset on entry and read on exit (exact peak). Elsewhere the peak
    is the largest of RSS samples (taken by `sample()`, e.g. after each call) and of getrusage's
    peak when that grew during the block.
    """

    def __init__(self) -> None:
        self.base: int | None = None
        self.peak: int | None = None
        self.method = "none"
        self._samples: list[int] = []
        self._kernel = False
        self._lifetime: int | None = None

    def __enter__(self) -> "RssMeter":
        gc.collect()
        self._kernel = sys.platform.startswith("linux") and _reset_peak()
        self._lifetime = _lifetime_peak()
        self.base = current_rss()
        self._samples = [] if self.base is None else [self.base]
        return self

    def sample(self) -> None:
        rss = current_rss()
        if rss is not None:
            self._samples.append(rss)

    def __exit__(self, *exc: object) -> None:
        self.sample()
        candidates = list(self._samples)
        if self._kernel and (hwm := _hwm()) is not None:
            candidates.append(hwm)
            self.method = "kernel peak (VmHWM)"
        else:
            lifetime = _lifetime_peak()
            if lifetime is not None and self._lifetime is not None and lifetime > self._lifetime:
                candidates.append(lifetime)
            self.method = "sampled RSS" if candidates else "none"
        self.peak = max(candidates) if candidates else None

    @property
    def exact(self) -> bool:
        """True when the kernel tracks the peak (no sampling needed)."""
        return self._kernel

    @property
    def increase_mb(self) -> float | None:
        if self.base is None or self.peak is None:
            return None
        return round(max(0, self.peak - self.base) / 2**20, 3)


def tile_indices(available: int, n: int) -> list[int]:
    """Indices of `n` samples taken in order from `available` ones, wrapping around when fewer."""
    if available < 1:
        raise ValueError("no samples to take a batch from")
    return [i % available for i in range(n)]


__all__ = ["Timing", "measure", "percentile", "mean", "stdev", "iqr", "budget_items", "budgets_passed",
           "budget_failures", "RssMeter", "current_rss", "tile_indices", "MAX_RUNS", "QUICK", "quick_latency"]


# --- the latency every build measures --------------------------------------------------------------

#: The short measurement every check (and the reference, for PyTorch eager) takes of its loaded session at batch
#: 1: a few untimed calls, then at least `repeats` calls and `min_seconds` of them. Enough for a stable median of
#: a model that takes microseconds to tens of milliseconds a call, at a cost under a second for most. Its calls run
#: beside the build's other nodes, so the record keeps the best call (the runtime's own cost: timeit's advice) and the
#: median; `modelbuild bench` is the measurement to quote (the node runs alone, thirty calls and a second at least).
QUICK = {"warmup": 3, "repeats": 10, "min_seconds": 0.2}
#: Seconds a quick measurement may take beyond its first call: a model slower than QUICK allows for is timed in
#: fewer calls (at least one), so a check of a large model does not run it a dozen more times.
QUICK_BUDGET_S = 2.0


def quick_latency(call: Callable[[], Any]) -> dict[str, Any]:
    """The build's latency of `call` (one batch-1 run of a loaded session): {p50_ms, min_ms, runs, batch}, or
    {not_measured: why} where a call fails (an artifact whose batch is fixed at another size). The first call is
    untimed and tells how many more fit QUICK_BUDGET_S."""
    try:
        started = time.perf_counter()
        call()
        first = time.perf_counter() - started
        plan = dict(QUICK)
        if first * (QUICK["warmup"] + QUICK["repeats"]) > QUICK_BUDGET_S:  # a large model: fewer calls, no floor
            plan = {"warmup": 0, "repeats": max(1, min(QUICK["repeats"], int(QUICK_BUDGET_S / max(first, 1e-9)))),
                    "min_seconds": 0.0}
        timing = measure(call, **plan)  # type: ignore[arg-type]
    except Exception as exc:  # the check has run the artifact already: a timing failure is no verdict
        return {"not_measured": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    return {"p50_ms": round(timing.stat("p50") * 1e3, 4), "min_ms": round(timing.stat("min") * 1e3, 4),
            "runs": timing.runs, "batch": 1}


# --- a time bound ----------------------------------------------------------------------------------


class OverBudget(Exception):
    """Raised by `bounded` when its block ran past its seconds."""


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise OverBudget in this (the worker's main) thread after `seconds`; a no-op off the main thread or without
    SIGALRM. The alarm lands between Python bytecodes: a long native call (one CPU kernel) finishes first."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def over(signum: int, frame: Any) -> None:
        raise OverBudget()

    previous = signal.signal(signal.SIGALRM, over)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
