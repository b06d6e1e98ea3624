"""The bench node: time an artifact in its real runtime, next to the PyTorch source, on the reference inputs.

Like the check node it consumes no format edge: the planner adds one `bench:<target>` node per
benchmarked target with deps [artifact node, model/reference]. Latencies are measured here, in the
worker; the statistics live in buildsys/nodes/timing.py.
"""

from __future__ import annotations

import json
import os
import platform
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Optional

from pydantic import Field

from buildsys.errors import ModelbuildError, StepError
from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions

if TYPE_CHECKING:
    from buildsys.nodes.timing import RssMeter

BENCH = register_format(Format(
    name="bench", filename="bench.json", runtime=None,
    description="Latency benchmark of one target: artifact vs PyTorch eager, p50/p95, throughput, memory.",
))


class BenchOptions(StepOptions):
    """How to time a target, and the latency budgets it must meet (None: not checked)."""

    batch_size: int = Field(default=1, ge=1, description="Samples per timed call (taken from the reference inputs, tiled if fewer).")
    warmup: int = Field(default=5, ge=0, description="Untimed calls before timing (lazy init, allocator, caches).")
    repeats: int = Field(default=30, ge=1, description="Fewest timed calls per runtime.")
    min_seconds: float = Field(default=1.0, ge=0, description="Fewest seconds of timed calls per runtime (more calls if repeats finish sooner).")
    threads: Optional[int] = Field(default=None, ge=1, description="Intra-op threads for torch and ONNX Runtime (None: the runtime's default).")
    p50_ms: Optional[float] = Field(default=None, gt=0, description="Largest allowed median latency of the artifact, ms per call.")
    p95_ms: Optional[float] = Field(default=None, gt=0, description="Largest allowed 95th-percentile latency of the artifact, ms per call.")
    compare_eager: bool = Field(default=True, description="Also time the PyTorch source on the same inputs.")
    on_fail: Literal["error", "warn"] = Field(default="error", description="'warn' reports a missed budget without failing the build.")


@register
class BenchStep(Step):
    """Latency of an artifact in its runtime (p50/p95/mean/std/min, throughput, memory) vs PyTorch eager."""

    name = "bench"
    consumes = ()  # not an edge of the format graph: the planner adds one bench per benchmarked target
    produces = "bench"
    toolchain = "torch"  # like a check, a bench runs in its artifact's toolchain worker
    Options = BenchOptions
    version = 2  # 2: text-generation targets benchmarked (time to first token, decode tokens/s, peak memory)
    description = "Latency benchmark of an artifact against PyTorch eager."

    def _run(self, ctx: StepContext[BenchOptions]) -> dict[str, Any]:
        from buildsys.formats import get_format, get_runtime

        opts = ctx.options
        fmt_name = ctx.extra["format"]
        runtime_name = get_format(fmt_name).runtime
        head: dict[str, Any] = {"format": fmt_name, "runtime": runtime_name, "precision": ctx.precision,
                                "batch_size": opts.batch_size, "threads": opts.threads, "host": host()}
        reason = (f"format '{fmt_name}' has no runtime that can execute it" if runtime_name is None
                  else get_runtime(runtime_name).unavailable())
        if reason:
            return self._write(ctx, {"passed": None, "not_run": reason, **head}, {})
        if ctx.model.task == "text-generation":  # latency per sample means nothing for generation (docs/llm.md)
            assert runtime_name is not None
            return self._generation(ctx, runtime_name, head)

        assert runtime_name is not None  # a format without a runtime has a reason, returned above
        feeds = self._feeds(ctx, opts.batch_size)
        raw: dict[str, list[float]] = {}  # the latency distribution per runtime: p0, p5 ... p100 (bench.json only)
        with _torch_threads(opts.threads, wanted=_uses_torch(runtime_name) or opts.compare_eager):
            artifact = self._bench(ctx, runtime_name, Path(ctx.input_path) if ctx.input_path else None, feeds, opts, raw,
                                   "artifact")
            eager = self._eager(ctx, feeds, opts, raw) if opts.compare_eager else None

        from buildsys.nodes.timing import budget_failures, budget_items, budgets_passed

        budgets = budget_items(artifact, {"p50_ms": opts.p50_ms, "p95_ms": opts.p95_ms})
        metrics: dict[str, Any] = {"passed": budgets_passed(budgets), **head, "artifact": artifact, "budgets": budgets}
        if eager is not None:
            metrics["eager"] = eager
            if eager.get("p50_ms") and artifact.get("p50_ms"):
                metrics["speedup_vs_eager"] = round(eager["p50_ms"] / artifact["p50_ms"], 3)
        if metrics["passed"] is False:
            metrics["failures"] = budget_failures(budgets)
        return self._write(ctx, metrics, raw)

    # --- text generation ---------------------------------------------------------------------------

    def _generation(self, ctx: StepContext[BenchOptions], runtime_name: str, head: dict[str, Any]) -> dict[str, Any]:
        """Time to first token, decode tokens/s and peak memory of a text-generation artifact, beside eager.

        The artifact runs through the same `GenerationSession` loop as its check, on the reference's
        prompts (every prompt, `new_tokens` greedy tokens each; one timed call is the whole prompt set).
        The session's own timings give the figures: TTFT is the prefill of each prompt plus the first
        argmax, decode tokens/s the rate of the following one-token calls. The eager side is the
        factory's model with transformers' KV cache (what `generate` does), not the no-cache reference.
        """
        import numpy as np

        opts = ctx.options
        if opts.p50_ms is not None or opts.p95_ms is not None:
            raise self.fail(ctx, "acceptance p50_ms / p95_ms are per-call latency budgets of tensor models; a "
                                 "text-generation target has no speed budget yet (bench reports time to first "
                                 "token and decode tokens/s): remove them from its acceptance")
        with np.load(ctx.extra["reference"]) as ref:
            feeds = {name: np.asarray(ref[f"input:{name}"]) for name in ("prompt_ids", "text_ids")}
        with _torch_threads(opts.threads, wanted=_uses_torch(runtime_name) or opts.compare_eager):
            path = Path(ctx.input_path) if ctx.input_path else None
            artifact = self._generate(ctx, runtime_name, path, feeds, opts, "artifact")
            eager = self._generate_eager(ctx, feeds, opts) if opts.compare_eager else None
        metrics: dict[str, Any] = {"passed": None, **head, "task": "text-generation", "artifact": artifact,
                                   "budgets": {}}
        if eager is not None:
            metrics["eager"] = eager
            if eager.get("decode_tokens_per_s") and artifact.get("decode_tokens_per_s"):
                metrics["decode_speedup_vs_eager"] = round(artifact["decode_tokens_per_s"] / eager["decode_tokens_per_s"], 3)
            if eager.get("ttft_ms") and artifact.get("ttft_ms"):
                metrics["ttft_speedup_vs_eager"] = round(eager["ttft_ms"] / artifact["ttft_ms"], 3)
        return self._write(ctx, metrics, {})

    def _generate_eager(self, ctx: StepContext[BenchOptions], feeds: dict[str, Any], opts: BenchOptions) -> dict[str, Any]:
        """The factory's model with transformers' KV cache; a problem here is reported, not a failure."""
        from buildsys.formats import get_runtime
        from buildsys.formats.llm.contract import REFERENCE_RUNTIME

        reason = get_runtime(REFERENCE_RUNTIME).unavailable()
        if reason:
            return {"runtime": "torch-eager (transformers KV cache)", "not_run": reason}
        # One intra-op thread unless `threads` says otherwise: a one-token call of a small model gains
        # nothing from a second thread, and beside another runtime's pool on a busy host torch's spinning
        # threads turned eager's TTFT from ~1 ms into 6-230 ms (measured): that is contention, not eager.
        try:
            with _torch_threads(opts.threads or 1, wanted=True):
                result = self._generate(ctx, REFERENCE_RUNTIME, None, feeds, opts, "eager")
            result["threads"] = opts.threads or 1
            return result
        except ModelbuildError as exc:
            return {"runtime": "torch-eager (transformers KV cache)", "not_run": exc.what}
        except Exception as exc:
            from buildsys.errors import describe

            return {"runtime": "torch-eager (transformers KV cache)", "not_run": describe(exc)}

    def _generate(self, ctx: StepContext[BenchOptions], runtime_name: str, path: Path | None, feeds: dict[str, Any],
                  opts: BenchOptions, label: str) -> dict[str, Any]:
        """Load, generate `warmup` untimed then `repeats` timed passes over every prompt; figures, load time, memory."""
        import statistics
        import time

        from buildsys.formats import get_runtime
        from buildsys.nodes.timing import measure, percentile

        if label == "eager":
            from buildsys.formats.llm.runtime import eager_kv_session

            load: Callable[[], Any] = partial(eager_kv_session, ctx.model, ctx.root, "bench")
        else:
            load = partial(get_runtime(runtime_name).load, path, ctx.model, ctx.root)  # type: ignore[arg-type]
        with self._loaded(ctx, label, runtime_name, load) as (session, meter, started):
            load_ms = (time.perf_counter() - started) * 1000
            timings = getattr(session, "timings", None)
            if not isinstance(timings, dict) or "ttft_s" not in timings:
                raise self.fail(ctx, f"the {runtime_name} session keeps no generation timings (not a GenerationSession)")
            try:
                for _ in range(opts.warmup):  # first calls of each prompt length: kernel compilation, allocation
                    session.run(feeds)
                for values in timings.values():
                    values.clear()
                timing = measure(lambda: session.run(feeds), 0, opts.repeats, opts.min_seconds,
                                 on_call=None if meter.exact else meter.sample)
            except Exception as exc:
                raise self._failed(ctx, label, runtime_name, exc) from exc
        ttft, rate = timings["ttft_s"], timings.get("decode_tokens_per_s") or []
        result: dict[str, Any] = {
            "runtime": "torch-eager (transformers KV cache)" if label == "eager" else runtime_name,
            "ttft_ms": round(statistics.median(ttft) * 1e3, 4) if ttft else None,
            "ttft_p95_ms": round(percentile(ttft, 95) * 1e3, 4) if ttft else None,
            "decode_tokens_per_s": round(statistics.median(rate), 1) if rate else None,
            "decode_tokens_per_s_p5": round(percentile(rate, 5), 1) if rate else None,
            "prompts": len(feeds["prompt_ids"]), "new_tokens": getattr(session, "new_tokens", None),
            "runs": timing.runs, "warmup": opts.warmup, "samples": len(ttft),
            "load_ms": round(load_ms, 3), "peak_rss_mb": meter.increase_mb, "rss_method": meter.method}
        return result

    # --- pieces ----------------------------------------------------------------------------------

    def _feeds(self, ctx: StepContext[BenchOptions], batch_size: int) -> dict[str, Any]:
        """`batch_size` samples of the reference inputs, wrapped around when there are fewer."""
        import numpy as np

        from buildsys.nodes.timing import tile_indices

        with np.load(ctx.extra["reference"]) as ref:
            inputs = {i.name: ref[f"input:{i.name}"] for i in ctx.model.inputs}
        available = min(len(v) for v in inputs.values())
        if available < 1:
            raise self.fail(ctx, "the reference holds no input samples to benchmark with")
        index = np.asarray(tile_indices(available, batch_size))
        return {name: np.ascontiguousarray(value[index]) for name, value in inputs.items()}

    def _eager(self, ctx: StepContext[BenchOptions], feeds: dict[str, Any], opts: BenchOptions, raw: dict[str, list[float]]) -> dict[str, Any]:
        """The source model on the same inputs; a problem here is reported, not a failure of the bench."""
        from buildsys.formats import get_format, get_runtime

        source = ctx.extra.get("source_format") or getattr(ctx.model.source, "format", None)
        runtime_name = get_format(source).runtime if source else None
        if runtime_name is None:
            return {"not_run": f"the source format '{source}' has no runtime" if source else "no source format given"}
        reason = get_runtime(runtime_name).unavailable()
        if reason:
            return {"runtime": runtime_name, "not_run": reason}
        path = ctx.extra.get("source_path")
        try:
            return self._bench(ctx, runtime_name, Path(path) if path else None, feeds, opts, raw, "eager")
        except ModelbuildError as exc:
            return {"runtime": runtime_name, "not_run": exc.what}
        except Exception as exc:  # the source could not even be loaded here: say so, keep the artifact's numbers
            from buildsys.errors import describe

            return {"runtime": runtime_name, "not_run": describe(exc)}

    def _bench(self, ctx: StepContext[BenchOptions], runtime_name: str, path: Path | None, feeds: dict[str, Any], opts: BenchOptions,
               raw: dict[str, list[float]], label: str) -> dict[str, Any]:
        """Load the artifact, run it warmup + timed calls; statistics, load time and peak memory added."""
        import time

        from buildsys.formats import get_runtime
        from buildsys.nodes.timing import measure, percentile

        load = partial(get_runtime(runtime_name).load, path, ctx.model, ctx.root)  # type: ignore[arg-type]
        with self._loaded(ctx, label, runtime_name, load) as (session, meter, started):
            threads = session.use_threads(opts.threads)  # as the runtime allows (Session.use_threads)
            load_ms = (time.perf_counter() - started) * 1000
            step = max(1, int(getattr(session, "max_batch", 0) or len(next(iter(feeds.values())))))
            n = len(next(iter(feeds.values())))
            chunks = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, n, step)]

            def call() -> None:
                for chunk in chunks:
                    session.run(chunk)

            try:
                timing = measure(call, opts.warmup, opts.repeats, opts.min_seconds,
                                 on_call=None if meter.exact else meter.sample)
            except Exception as exc:
                raise self._failed(ctx, label, runtime_name, exc) from exc
        raw[label] = [round(percentile(timing.samples, q) * 1000, 6) for q in range(0, 101, 5)]
        result = {"runtime": runtime_name, **timing.summary(opts.batch_size), "load_ms": round(load_ms, 3),
                  "peak_rss_mb": meter.increase_mb, "rss_method": meter.method, "calls_per_batch": len(chunks)}
        if threads is not None:
            result["threads"] = threads
        return result

    @contextmanager
    def _loaded(self, ctx: StepContext[BenchOptions], label: str, runtime_name: str,
                load: Callable[[], Any]) -> Iterator[tuple[Any, "RssMeter", float]]:
        """The session `load` opens in `runtime_name`, the memory meter started before it and the clock
        (perf_counter) read just before it: the block times the session, closed after it. What load started (a
        browser and its Playwright loop, a server) must not outlive the bench: the worker's next check in that
        runtime would find it still running. The artifact's failure to load fails the bench naming the format;
        a reference runtime's is raised as it is (the bench reports that runtime as not run)."""
        import time

        from buildsys.nodes.timing import RssMeter

        _preimport(runtime_name)  # a library's one-time import is not this model's memory
        with RssMeter() as meter:
            started = time.perf_counter()
            try:
                session = load()
            except ModelbuildError as exc:
                if label == "artifact":
                    raise self.fail(ctx, f"the {ctx.extra['format']} artifact could not be loaded: {exc.what}") from exc
                raise
            try:
                yield session, meter, started
            finally:
                session.close()

    def _failed(self, ctx: StepContext[BenchOptions], label: str, runtime_name: str, exc: Exception) -> StepError:
        """The error of a timed run that raised: the artifact's names the format, a reference runtime's only itself."""
        from buildsys.errors import describe

        if label == "artifact":
            return self.fail(ctx, f"the {ctx.extra['format']} artifact failed in {runtime_name}: {describe(exc)}")
        return StepError(f"{runtime_name} failed: {describe(exc)}")

    def _write(self, ctx: StepContext[BenchOptions], metrics: dict[str, Any], raw: dict[str, list[float]]) -> dict[str, Any]:
        report = {**metrics, "model": ctx.model_name, "options": ctx.options.model_dump(mode="json"),
                  "quantiles_ms": {"q": list(range(0, 101, 5)), **raw}}
        (ctx.out_dir / BENCH.filename).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return metrics


# --- threads and host ------------------------------------------------------------------------------


def build_latency(session: Any, one: Any, runtime_name: str) -> dict[str, Any]:
    """The latency a check (or the reference, for PyTorch eager) records of `session` on the batch-1 feeds `one`
    (nodes/timing.quick_latency): with the runtime's own threads, then at one intra-op thread (`one_thread`) where
    the runtime lets a session choose (`Session.use_threads`); `one_thread` says `not_measured` where it cannot.
    One thread is the figure that compares runtimes fairly on a shared host, where a thread pool waits for cores
    other processes hold."""
    from buildsys.nodes.timing import quick_latency

    out = {**quick_latency(lambda: session.run(one)), "runtime": runtime_name}
    try:
        with _torch_threads(1, wanted=_uses_torch(runtime_name)):
            threads = session.use_threads(1)
            out["one_thread"] = quick_latency(lambda: session.run(one)) if threads == 1 else \
                {"not_measured": f"{runtime_name} does not let a session choose its threads"}
    except Exception as exc:  # the artifact ran already: a thread setting it refuses is no verdict
        out["one_thread"] = {"not_measured": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    return out


def _preimport(runtime_name: str) -> None:
    from buildsys.formats import get_runtime

    get_runtime(runtime_name).preimport()


def _uses_torch(runtime_name: str) -> bool:
    from buildsys.formats import get_runtime

    return "torch" in get_runtime(runtime_name).packages


@contextmanager
def _torch_threads(threads: int | None, wanted: bool) -> Iterator[None]:
    """torch's intra-op thread count for the block, restored after: the worker outlives this step."""
    if threads is None or not wanted:
        yield
        return
    from buildsys.formats.torch.loading import torch_unavailable

    if torch_unavailable():
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def host() -> dict[str, Any]:
    """What the numbers were measured on: latencies mean nothing without it."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"system": platform.system(), "machine": platform.machine(), "cpu": cpu or "unknown",
                            "cpus": os.cpu_count(), "python": platform.python_version()}
    try:  # other work on the host skews latencies (threads stall at barriers): keep the context
        info["load_avg"] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        pass
    return info
