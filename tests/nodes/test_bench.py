"""Latency measurement: statistics on a fake clock, and the bench step in-process on a tiny real ONNX model.

Nothing here depends on how fast the machine is: timings come from a scripted clock, and the real
bench only has its structure checked, with budgets no machine can miss (a billion ms) or meet
(a femtosecond).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from buildsys.nodes import timing as bench
from buildsys.nodes.timing import RssMeter, Timing, budget_failures, budget_items, budgets_passed, measure, percentile
from buildsys.formats import get_format, get_step
from tests.helpers.models import Tiny


class FakeClock:
    """A timer whose time moves only when the measured function says so."""

    def __init__(self, durations: list[float]):
        self.now = 100.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


# --- statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 5, 25, 50, 75, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = list(np.random.default_rng(3).exponential(2.0, size=257))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_edges() -> None:
    assert percentile([7.0], 95) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_mean_stdev_iqr_match_the_standard_library() -> None:
    values = [0.5, 1.25, 2.0, 8.0, 3.5, 3.5]
    assert bench.mean(values) == pytest.approx(statistics.fmean(values))
    assert bench.stdev(values) == pytest.approx(statistics.stdev(values))
    assert bench.stdev([4.0]) == 0.0
    assert bench.iqr(values) == pytest.approx(float(np.percentile(values, 75) - np.percentile(values, 25)))


def test_measure_times_each_call_and_skips_warmup() -> None:
    clock = FakeClock([0.003, 0.001, 0.002])
    timing = measure(clock.work, warmup=4, repeats=6, min_seconds=0.0, timer=clock)
    assert clock.calls == 10  # 4 untimed + 6 timed
    # warmup consumed durations 0..3, so the timed calls start at index 4 of the cycle
    assert timing.samples == pytest.approx((0.001, 0.002, 0.003, 0.001, 0.002, 0.003))
    assert timing.runs == 6 and timing.warmup == 4
    assert timing.wall_s == pytest.approx(0.012)
    assert (timing.stat("min"), timing.stat("max"), timing.stat("p50")) == pytest.approx((0.001, 0.003, 0.002))


def test_min_seconds_extends_the_run_count() -> None:
    clock = FakeClock([0.125])  # exact in binary: 8 calls make exactly 1 s
    timing = measure(clock.work, warmup=0, repeats=3, min_seconds=1.0, timer=clock)
    assert timing.runs == 8
    clock = FakeClock([0.5])
    assert measure(clock.work, warmup=0, repeats=5, min_seconds=1.0, timer=clock).runs == 5  # repeats dominate


def test_max_runs_caps_a_fast_function_under_a_long_floor() -> None:
    clock = FakeClock([1e-6])
    assert measure(clock.work, warmup=0, repeats=1, min_seconds=10.0, timer=clock, max_runs=50).runs == 50


def test_measure_rejects_nonsense_and_restores_gc() -> None:
    import gc

    with pytest.raises(ValueError):
        measure(lambda: None, repeats=0)
    with pytest.raises(ValueError):
        measure(lambda: None, warmup=-1)
    assert gc.isenabled()
    seen = []
    measure(lambda: seen.append(gc.isenabled()), warmup=0, repeats=3)
    assert seen == [False, False, False] and gc.isenabled()

    def boom() -> None:
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        measure(boom, warmup=0, repeats=1)
    assert gc.isenabled()


def test_summary_is_in_milliseconds_with_throughput_and_spread() -> None:
    timing = Timing(samples=(0.001, 0.002, 0.002, 0.002, 0.010), warmup=2, wall_s=0.017)
    s = timing.summary(batch_size=4)
    assert s["p50_ms"] == 2.0 and s["min_ms"] == 1.0 and s["max_ms"] == 10.0
    assert s["p95_ms"] == pytest.approx(float(np.percentile([1, 2, 2, 2, 10], 95)))
    assert s["mean_ms"] == pytest.approx(3.4) and s["std_ms"] == pytest.approx(statistics.stdev([1, 2, 2, 2, 10]), abs=1e-6)
    assert s["iqr_ms"] == 0.0
    assert s["throughput"] == pytest.approx(4 * 5 / 0.017, rel=1e-4)  # samples per second
    assert s["spread"] == pytest.approx(s["p95_ms"] / s["p50_ms"], rel=1e-3)
    assert (s["runs"], s["warmup"], s["batch_size"]) == (5, 2, 4)
    json.dumps(s)  # JSON-ready


def test_budgets_are_check_shaped_and_none_means_unchecked() -> None:
    summary = {"p50_ms": 2.0, "p95_ms": 5.0}
    assert budget_items(summary, {"p50_ms": None, "p95_ms": None}) == {}
    assert budgets_passed({}) is None
    items = budget_items(summary, {"p50_ms": 2.0, "p95_ms": 4.0})
    assert items == {"p50_ms": {"observed": 2.0, "allowed": 2.0, "op": "<=", "ok": True},
                     "p95_ms": {"observed": 5.0, "allowed": 4.0, "op": "<=", "ok": False}}
    assert budgets_passed(items) is False
    assert budget_failures(items) == ["p95 latency 5 ms > 4 ms"]
    assert budgets_passed(budget_items(summary, {"p50_ms": 3.0})) is True


def test_the_builds_quick_latency_keeps_the_best_call_and_the_median_and_never_fails_the_check() -> None:
    from buildsys.nodes.timing import QUICK, quick_latency
    from buildsys.report.console import latency_cell

    calls = []
    found = quick_latency(lambda: calls.append(1))
    assert found["runs"] >= QUICK["repeats"] and found["batch"] == 1 and 0 <= found["min_ms"] <= found["p50_ms"]
    assert len(calls) == 1 + found["runs"] + QUICK["warmup"]  # the first call, untimed, sizes the rest

    def slow() -> None:  # a large model: the quick measurement stays within its budget
        calls.append(1)
        time.sleep(0.45)

    calls.clear()
    assert quick_latency(slow)["runs"] == 4 and len(calls) == 5  # QUICK_BUDGET_S 2 s: four more calls, no warm-up

    def fixed_batch() -> None:
        raise ValueError("Got invalid dimensions for input: x for the following indices\n index: 0 Got: 1 Expected: 4")

    assert quick_latency(fixed_batch) == {"not_measured": "ValueError: Got invalid dimensions for input: x for the "
                                                          "following indices"}
    # the summary shows the best call and its ratio to eager's best: as fast as eager ×3.0, slower in yellow
    assert latency_cell({"min_ms": 0.1, "p50_ms": 0.2}, {"min_ms": 0.3}) == "0.1 ms 3.0×"
    assert latency_cell({"min_ms": 2.0}, {"min_ms": 1.0}) == "2 ms [yellow]0.50×[/]"
    assert latency_cell({"not_measured": "why"}, {"min_ms": 1.0}) == "" and latency_cell(None, None) == ""


def test_the_builds_latency_takes_one_thread_too_where_the_runtime_lets_a_session_choose() -> None:
    from buildsys.nodes.bench import build_latency

    class Session:
        def __init__(self, threads: int | None | Exception):
            self.threads, self.calls = threads, 0

        def run(self, feeds: dict) -> list:
            self.calls += 1
            return []

        def use_threads(self, threads: int | None) -> int | None:
            if isinstance(self.threads, Exception):
                raise self.threads
            return self.threads

    chooses = build_latency(Session(1), {}, "onnxruntime")
    assert chooses["runtime"] == "onnxruntime" and chooses["min_ms"] >= 0 and chooses["one_thread"]["runs"] >= 1
    fixed = build_latency(Session(None), {}, "triton-server")
    assert fixed["min_ms"] >= 0 and fixed["one_thread"] == {
        "not_measured": "triton-server does not let a session choose its threads"}
    refused = build_latency(Session(RuntimeError("no pool\nmore")), {}, "onnxruntime")
    assert refused["min_ms"] >= 0 and refused["one_thread"] == {"not_measured": "RuntimeError: no pool"}


def test_tile_indices_wrap_around() -> None:
    assert bench.tile_indices(3, 7) == [0, 1, 2, 0, 1, 2, 0]
    assert bench.tile_indices(10, 2) == [0, 1]
    with pytest.raises(ValueError):
        bench.tile_indices(0, 1)


def test_rss_meter_sees_a_peak_even_after_it_is_freed() -> None:
    with RssMeter() as meter:
        block = np.ones(48 * 2**20, dtype=np.uint8)  # 48 MB, touched
        meter.sample()
        del block
    assert meter.increase_mb is not None and meter.method != "none"
    assert meter.increase_mb >= 40, (meter.increase_mb, meter.method)


# --- the bench step ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_path(cnn_onnx: Path) -> Path:
    return cnn_onnx


@pytest.fixture(scope="module")
def reference(cnn_reference: Path) -> Path:
    return cnn_reference


FAST = {"warmup": 1, "repeats": 5, "min_seconds": 0.0}  # a handful of calls: structure, not speed


def run_bench(tiny: Tiny, out: Path, artifact: Path, reference: Path, fmt: str = "onnx", **options: object) -> dict:
    return tiny.run("bench", out, input_path=artifact, extra={"format": fmt, "reference": str(reference),
                    "source_format": "pytorch", "source_path": None}, **{**FAST, **options})


STATS = {"p50_ms", "p95_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "iqr_ms", "spread", "throughput", "runs",
         "warmup", "batch_size", "load_ms", "peak_rss_mb", "rss_method", "calls_per_batch", "runtime"}


def test_step_is_registered_like_the_check() -> None:
    step = get_step("bench")
    fmt = get_format("bench")
    assert step.consumes == () and step.produces == "bench"
    assert (fmt.filename, fmt.runtime) == ("bench.json", None)
    opts = step.Options()
    assert (opts.batch_size, opts.warmup, opts.repeats, opts.threads, opts.p50_ms, opts.p95_ms, opts.compare_eager) == \
        (1, 5, 30, None, None, None, True)
    for bad in ({"repeats": 0}, {"batch_size": 0}, {"p50_ms": 0}, {"threads": 0}, {"min_seconds": -1}, {"typo": 1}):
        with pytest.raises(ValidationError):
            step.Options(**bad)


def test_bench_measures_artifact_and_eager(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path) -> None:
    m = run_bench(cnn, tmp_path, onnx_path, reference)
    assert m["passed"] is None and "budgets" in m and m["budgets"] == {}
    assert (m["format"], m["runtime"], m["precision"], m["batch_size"]) == ("onnx", "onnxruntime", "fp32", 1)
    assert set(m["host"]) >= {"cpu", "cpus", "machine", "system"}
    for part, runtime in ((m["artifact"], "onnxruntime"), (m["eager"], "torch-eager")):
        assert STATS <= set(part), STATS - set(part)
        assert part["runtime"] == runtime and part["runs"] >= 5 and part["warmup"] == 1
        assert 0 < part["min_ms"] <= part["p50_ms"] <= part["p95_ms"] <= part["max_ms"]
        assert part["throughput"] > 0 and part["spread"] >= 1.0 and part["calls_per_batch"] == 1
        assert part["peak_rss_mb"] is None or part["peak_rss_mb"] >= 0
    assert m["speedup_vs_eager"] == pytest.approx(m["eager"]["p50_ms"] / m["artifact"]["p50_ms"], rel=1e-2)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["model"] == "cnn" and report["options"]["repeats"] == 5
    assert report["quantiles_ms"]["q"][0] == 0 and report["quantiles_ms"]["q"][-1] == 100
    assert len(report["quantiles_ms"]["artifact"]) == 21 == len(report["quantiles_ms"]["eager"])
    assert report["quantiles_ms"]["artifact"] == sorted(report["quantiles_ms"]["artifact"])
    json.dumps(m)


def test_huge_budgets_pass(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path) -> None:
    m = run_bench(cnn, tmp_path, onnx_path, reference, p50_ms=1e9, p95_ms=1e9)
    assert m["passed"] is True and "failures" not in m
    assert m["budgets"]["p50_ms"] == {"observed": m["artifact"]["p50_ms"], "allowed": 1e9, "op": "<=", "ok": True}
    assert m["budgets"]["p95_ms"]["observed"] == m["artifact"]["p95_ms"]


def test_impossible_budget_fails(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path) -> None:
    m = run_bench(cnn, tmp_path, onnx_path, reference, p95_ms=0.000001, p50_ms=1e9)
    assert m["passed"] is False
    assert m["budgets"]["p95_ms"]["ok"] is False and m["budgets"]["p50_ms"]["ok"] is True
    assert len(m["failures"]) == 1 and m["failures"][0].startswith("p95 latency ") and "> 1e-06 ms" in m["failures"][0]
    assert json.loads((tmp_path / "bench.json").read_text())["passed"] is False


def test_batch_is_tiled_and_split_to_the_session_limit(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path) -> None:
    with np.load(reference) as ref:
        available = len(ref["input:image"])
    batch = available * 2 + 3  # more than the reference holds: wrapped around
    m = run_bench(cnn, tmp_path, onnx_path, reference, batch_size=batch, compare_eager=False, repeats=2)
    assert m["batch_size"] == batch and m["artifact"]["batch_size"] == batch
    assert m["artifact"]["calls_per_batch"] == math.ceil(batch / 64)  # a dynamic-batch session takes 64 a call
    assert "eager" not in m and "speedup_vs_eager" not in m


def test_fixed_batch_artifact_runs_one_sample_per_call(cnn: Tiny, reference: Path, tmp_path: Path) -> None:
    cnn.run("onnx-from-pytorch", tmp_path / "fixed", dynamic_axes=False)
    m = run_bench(cnn, tmp_path / "b", tmp_path / "fixed" / "model.onnx", reference, batch_size=3, compare_eager=False)
    assert m["artifact"]["calls_per_batch"] == 3


def test_threads_apply_and_torch_threads_are_restored(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    m = run_bench(cnn, tmp_path, onnx_path, reference, threads=1)
    assert m["threads"] == 1 and m["artifact"]["threads"] == 1 and m["eager"]["threads"] == 1
    assert torch.get_num_threads() == before  # the worker outlives the step


def test_eager_failure_is_reported_not_fatal(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path) -> None:
    broken = cnn.with_source(factory="tinymodels:broken")
    m = run_bench(broken, tmp_path, onnx_path, reference)
    assert m["artifact"]["p50_ms"] > 0
    assert "refused to build" in m["eager"]["not_run"] and "speedup_vs_eager" not in m


def test_unavailable_runtime_is_not_run(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.formats.onnx.runtime import OnnxRuntime

    monkeypatch.setattr(OnnxRuntime, "unavailable", lambda self: "onnxruntime is not installed")
    m = run_bench(cnn, tmp_path, onnx_path, reference, p50_ms=1.0)
    assert m["passed"] is None and m["not_run"] == "onnxruntime is not installed"
    assert "artifact" not in m
    assert json.loads((tmp_path / "bench.json").read_text())["not_run"] == "onnxruntime is not installed"


def test_bench_closes_what_it_loaded(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A session holds a browser or a server: the bench closes it, or the worker's next check of that
    runtime finds it still running (Playwright refused a second sync loop in one thread)."""
    from buildsys.formats.onnx.runtime import OnnxRuntime

    closed: list[str] = []
    load = OnnxRuntime.load

    def counting(self: OnnxRuntime, *args: object) -> object:
        session = load(self, *args)  # type: ignore[arg-type]
        monkeypatch.setattr(session, "close", lambda: closed.append("closed"))
        return session

    monkeypatch.setattr(OnnxRuntime, "load", counting)
    run_bench(cnn, tmp_path, onnx_path, reference, compare_eager=False)
    assert closed == ["closed"]


def test_format_without_runtime_is_not_run(cnn: Tiny, onnx_path: Path, reference: Path, tmp_path: Path) -> None:
    m = run_bench(cnn, tmp_path, onnx_path, reference, fmt="reference")
    assert m["passed"] is None and "no runtime" in m["not_run"]


def test_broken_artifact_fails_with_one_line(cnn: Tiny, reference: Path, tmp_path: Path) -> None:
    from buildsys.errors import StepError

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(StepError, match=r"^model 'cnn': the onnx artifact could not be loaded: .*\(step bench\)$"):
        run_bench(cnn, tmp_path / "out", bad, reference)
