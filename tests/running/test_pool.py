"""The local worker pool: warm toolchains bounded by memory, checks in their artifact's worker, -j defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from buildsys.running import pool
from buildsys.storage.lock import Lock
from buildsys.running.pool import LocalExecutor, parse_memory, usable_cpus
from tests.conftest import TinyProject, make_tiny_project, tiny_deploy


class FakeWorker:
    """Stands in for a WorkerProcess in the pool's bookkeeping (no subprocess)."""

    def __init__(self, toolchain: str, pid: int):
        self.toolchain, self.name, self.alive, self.closed = toolchain, f"pid:{pid}", True, False
        self.proc = type("P", (), {"pid": pid})()

    def close(self) -> None:
        self.closed, self.alive = True, False


def test_idle_workers_past_the_budget_are_evicted_least_needed_first(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    rss = {1: 400, 2: 400, 3: 400, 4: 300}
    monkeypatch.setattr(pool, "worker_rss", lambda pid: rss[pid] if pid in rss else 0)
    ex = LocalExecutor(tmp_path, jobs=1, memory_budget=1000)
    a, b, c = FakeWorker("torch", 1), FakeWorker("onnx", 2), FakeWorker("tf", 3)
    ex._idle = [a, b, c]  # least recently used first
    ex._evict()
    assert a.closed and ex._idle == [b, c]  # 1200 → 800: the least recently used went
    d = FakeWorker("coreml", 4)
    ex._idle.append(d)
    ex.expect({"onnx": 2, "coreml": 1})  # the queued nodes need onnx and coreml, not tf
    ex._evict()
    assert c.closed and ex._idle == [b, d] and ex.evicted == {"torch": 1, "tf": 1}
    # a busy worker counts toward the budget but is never evicted
    busy = FakeWorker("torch", 5)
    rss[5] = 900
    ex._busy = [busy]
    ex._evict()
    assert ex._idle == [] and not busy.closed


def test_memory_sizes_parse() -> None:
    assert parse_memory("50%", 1000) == 500
    assert parse_memory("6G", 0) == 6 << 30 and parse_memory("512MB", 0) == 512 << 20 and parse_memory("1024", 0) == 1024
    assert 1 <= usable_cpus()


def _spy_pool(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Record (idle workers, measured RSS of the pool, budget) after every release of a worker."""
    seen: list[tuple[int, int, int]] = []
    release = LocalExecutor._release

    def spy(self: LocalExecutor, worker: Any) -> None:
        release(self, worker)
        with self._lock:
            total = sum(pool.worker_rss(w.proc.pid) for w in self._idle + self._busy)
            seen.append((len(self._idle), total, self.memory_budget))
    monkeypatch.setattr(LocalExecutor, "_release", spy)
    return seen


def test_the_pool_never_holds_idle_workers_past_a_small_budget(tiny: TinyProject, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelbuild

    seen = _spy_pool(monkeypatch)
    monkeypatch.setenv(pool.MEMORY_ENV, "50M")  # less than any worker with torch loaded
    monkeypatch.chdir(tiny.root)
    report = modelbuild.load(tiny.config).build(jobs=2)
    assert report.ok and seen
    for idle, total, budget in seen:
        assert budget == 50 << 20
        assert idle == 0 or total <= budget, (idle, total)  # only busy workers may be over it
    assert all(idle == 0 for idle, _, _ in seen)


def test_a_generous_budget_keeps_each_toolchain_warm(tiny: TinyProject, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[dict[str, int]] = []
    close = LocalExecutor.close

    def spy(self: LocalExecutor) -> None:
        started.append(dict(self.started))
        close(self)
    monkeypatch.setattr(LocalExecutor, "close", spy)
    monkeypatch.setenv(pool.MEMORY_ENV, "64G")
    monkeypatch.chdir(tiny.root)
    import modelbuild

    assert modelbuild.load(tiny.config).build(jobs=1).ok
    assert started and all(n == 1 for s in started for n in s.values()), started  # one import per toolchain


def test_a_check_runs_in_the_worker_its_artifact_was_made_in(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "p", tiny_deploy("  server: {model: tiny, format: onnx}\n", calls=False))
    project.run("build", "-j", "2")
    nodes = Lock.read(project.root / "deploy.lock").as_dict()["nodes"]
    artifact, check = nodes["tiny/onnx"]["built"], nodes["verify:server"]["built"]
    assert artifact["worker"].startswith("pid:") and check["worker"] == artifact["worker"]
    assert nodes["tiny/reference"]["built"]["worker"] != artifact["worker"]  # -j 2 did run two at once


def test_the_lock_is_byte_identical_with_j1_and_j2(tmp_path: Path) -> None:
    deploy = tiny_deploy("  ts: {model: tiny, format: torchscript}\n  server: {model: tiny, format: onnx}\n"
                         "  int8: {model: tiny, format: onnx, precision: int8, options: {onnx-int8: {method: dynamic}}}\n",
                         calls=False)
    one, two = make_tiny_project(tmp_path / "one", deploy), make_tiny_project(tmp_path / "two", deploy)
    one.run("build", "-j", "1")
    two.run("build", "-j", "2")
    assert (one.root / "deploy.lock").read_bytes() == (two.root / "deploy.lock").read_bytes()


def test_jobs_default_to_the_usable_cpus(tiny: TinyProject) -> None:
    out = tiny.run("build", "--help").stdout
    assert "(the usable CPUs)" in out and "--worker-memory" in out
    bad = tiny.run("build", "--worker-memory", "lots", check=False)
    assert bad.returncode == 2 and "'lots' is not a size" in bad.stderr
