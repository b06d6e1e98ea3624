"""The check node: run an artifact in its real runtime on the reference inputs and compare every output."""

from __future__ import annotations

import json
from typing import Any

from buildsys.errors import ModelbuildError
from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext
from buildsys.formats.quantized_weights import judged_share
from buildsys.formats.runtime import CannotRun
from buildsys.nodes.timing import OverBudget, bounded
from buildsys.status import Caveat, CaveatKind, unique
from buildsys.nodes.verify import CheckOptions

#: Metrics of this host's run that the report file leaves out (they go to the build record with the rest).
HOST_SPECIFIC = ("latency",)

CHECK = register_format(Format(
    name="check", filename="report.json", runtime=None,
    description="Verification report of one target: observed vs allowed per output and metric.",
))


@register
class CheckStep(Step):
    """Compare an artifact's outputs with the reference under the target's resolved acceptance."""

    name = "check"
    version = 12  # 2: structural inspection and size budgets; 3: serving checks, labels must fit;
                  # 4: one-value-per-sample outputs get the batch's cosine; 5: caveats (what did not run, or
                  # ran on a lesser path), and require_numeric fails on them; 6: a miss is localised
                  # (the first module whose output diverges, with a per-layer table); 7: default limits raised
                  # to the model's intrinsic error (nodes/intrinsic.py); 8: an int8/int4 artifact's share of weights
                  # in its precision is held to a floor (min_quantized_share); 9: an ill-conditioned output's fp32
                  # check falls back to its float64 outputs (nodes/intrinsic.py); a miss's localisation is bounded;
                  # 10: float32 subnormals flushed to zero on both sides, an all-subnormal reference a caveat
                  # 11: the share counts every weight (formats/quantized_weights.py); batch-1 latency; 12: at 1 thread too
    consumes = ()  # not an edge of the format graph: the planner adds one check per target
    produces = "check"
    toolchain = "torch"  # the planner runs a check in its artifact's toolchain worker
    Options = CheckOptions
    description = "Numeric verification of an artifact against the reference."

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.nodes.intrinsic import describe

        return describe(facts)

    def _run(self, ctx: StepContext[CheckOptions]) -> dict[str, Any]:
        from buildsys.formats import get_format, get_runtime

        opts = ctx.options
        fmt_name = ctx.extra["format"]
        runtime_name = get_format(fmt_name).runtime
        structure = get_runtime(runtime_name).inspect(ctx.input_path, ctx.model, fmt_name) if runtime_name else None  # type: ignore[arg-type]
        problems = list(structure.get("problems", [])) if structure else []
        # What the artifact's chain reported (a model delivered un-optimized), then what this check finds.
        caveats = [Caveat.from_dict(c) for c in ctx.extra.get("caveats", [])]
        caveats += [Caveat.from_dict(c) for c in (structure or {}).pop("caveats", [])]
        size = _size_budget(ctx, opts.max_size_mb)
        if size is not None and not size["ok"]:
            problems.append(f"size {size['observed']:.4g} MB > {size['allowed']:.4g} MB (max_size_mb)")
        weights, short = judged_share(ctx.extra.get("quantized_weights"), opts.min_quantized_share, opts.outputs)
        if short:  # an "int8" artifact that is mostly float fails however close its numbers are
            problems.append(short)
        reason = (f"format '{fmt_name}' has no runtime that can execute it" if runtime_name is None
                  else get_runtime(runtime_name).unavailable())
        runner = runtime_name
        stand_in = get_runtime(runtime_name).stand_in if reason and runtime_name else None
        if stand_in and get_runtime(stand_in).unavailable() is None:
            runner = stand_in  # its numbers, said to be its: a caveat every output shows
        observed: list[Any] = []
        latency = None
        if runner and (not reason or runner == stand_in):
            batch, expected, labels = self._reference(ctx)
            try:
                observed, ran, findings, latency = self._observe(ctx, runner, batch, timed=runner == runtime_name)
            except CannotRun as exc:  # the stand-in lacks an op: not run, naming it
                reason = f"{reason}; its stand-in {runner} cannot run it either: {exc.what.removeprefix('not run: ')}"
            else:
                caveats += ran
                if runner == stand_in:
                    other = get_runtime(runner)
                    caveats.append(Caveat(CaveatKind.STAND_IN, other.label or runner,
                                          f"{reason}; computed by {runner} instead ({other.not_exercised})", runner))
                    reason = None
        if reason:
            metrics: dict[str, Any] = {"passed": None, "not_run": reason, "format": fmt_name}
            host = [f"the numeric check is required (require_numeric) but was not run: {reason}"] \
                if opts.require_numeric else []
            metrics.update(_inspected(structure, size, weights))
            return self._write(ctx, self._judge(opts, metrics, problems, caveats, host))

        results = self._compare(ctx, observed, expected, labels)
        caveats += [Caveat(CaveatKind.DEGRADED, f"{name} checked at zero", r.extra["subnormal"], "check")
                    for name, r in results.items() if r.extra.get("subnormal")]
        metrics = {"passed": all(bool(r) for r in results.values()), "samples": len(batch), "format": fmt_name,
                   "runtime": runner, "outputs": {name: r.as_dict() for name, r in results.items()}}
        raised = {name: r.extra["limits_raised"] for name, r in results.items() if r.extra.get("limits_raised")}
        if raised:  # default limits the model's own error raised (nodes/intrinsic.py): committed with the verdict
            metrics["limits_raised"] = raised
        if runner and runner == runtime_name and get_runtime(runner).stand_in:  # Core ML on macOS: how good is the stand-in?
            metrics["stand_in_agreement"] = self._stand_in_agreement(ctx, runner, batch, observed)
        if latency:  # batch-1 latency in the device's own runtime (a stand-in's is not the device's): the record's
            metrics["latency"] = latency
        if findings:  # what the runtime saw inside the program (a stand-in's fp16 overflow, by op and module)
            metrics["findings"] = findings
            problems += [f["text"] for f in findings if f.get("fails")]
        serving_name = get_format(fmt_name).serving_runtime
        if opts.serving and serving_name:
            serving = self._serve(ctx, serving_name, batch, expected, labels)
            metrics["serving"] = serving
            if serving.get("not_run"):
                part = get_runtime(serving_name).part
                caveats.append(Caveat(CaveatKind.NOT_RUN, f"{part} check not run", serving["not_run"], serving_name))
            problems += [f"served by {serving_name}: {row}" for row in serving.get("failures", [])]
        metrics.update(_inspected(structure, size, weights))
        missed = [f"{name}: {row}" for name, r in results.items() for row in r.failures()]
        if missed and runner:  # only on a miss: the passing path never pays for it
            metrics["localisation"] = localisation = self._localise(ctx, runner, batch, results)
            missed.append(localisation.get("headline") or localisation["not_available"])
        metrics = self._judge(opts, metrics, problems + missed, caveats)
        return self._write(ctx, metrics)

    @staticmethod
    def _judge(opts: CheckOptions, metrics: dict[str, Any], problems: list[str], caveats: list[Caveat],
               host: list[str] | None = None) -> dict[str, Any]:
        """Add the caveats to `metrics` and fail it on `problems`, and, where the target requires a full
        check (require_numeric, --strict), on every caveat but a route fallback and an accepted stand-in.
        A check failed only by this host's limits (`host`: a numeric part it could not run, a stand-in)
        says so (`host_limited`): another route would fail it the same way."""
        caveats = unique(caveats)
        host = list(host or [])
        if opts.require_numeric:
            for c in caveats:
                if c.strict and not (c.kind is CaveatKind.STAND_IN and opts.accept_stand_in):
                    (host if c.host else problems).append(f"the target requires a full check (require_numeric), but {c}")
        if caveats:
            metrics["caveats"] = [c.as_dict() for c in caveats]
        if problems or host:
            metrics["passed"] = False
            metrics["failures"] = problems + host
            if not problems:
                metrics["host_limited"] = True
        return metrics

    def _reference(self, ctx: StepContext[CheckOptions]) -> tuple[Any, dict[str, Any], Any]:
        """The reference's inputs (as a Batch), outputs by name, and labels (None without)."""
        import numpy as np

        from buildsys.config.data import Batch

        with np.load(ctx.extra["reference"]) as ref:
            inputs = {i.name: ref[f"input:{i.name}"] for i in ctx.model.inputs}
            expected = {o.name: ref[f"output:{o.name}"] for o in ctx.model.outputs}
            labels = ref["labels"] if "labels" in ref.files else None
        return Batch(inputs, labels, "reference"), expected, labels

    def _observe(self, ctx: StepContext[CheckOptions], runtime_name: str, batch: Any,
                 timed: bool = False) -> tuple[list[Any], list[Caveat], list[dict[str, Any]], dict[str, Any] | None]:
        """Every output of the artifact on `batch`, run in `runtime_name`, the lesser paths the session
        took, and what it saw inside the program (`Session.findings`: a stand-in's fp16 overflows). A
        runtime failure is a StepError; an artifact the runtime cannot run (CannotRun) propagates. With
        `timed`, the session's latency at batch 1 too (nodes/timing.quick_latency; else None)."""
        from buildsys.formats import get_runtime
        from buildsys.nodes.bench import build_latency

        fmt_name = ctx.extra["format"]
        try:
            with get_runtime(runtime_name).load(ctx.input_path, ctx.model, ctx.root) as session:  # type: ignore[arg-type]
                outputs = session.run_all(batch)
                latency = None
                if timed and ctx.model.task != "text-generation":  # generation's speed is bench's (TTFT, tokens/s)
                    one = next(iter(batch.chunks(1)))
                    latency = build_latency(session, one, runtime_name)  # all threads, then one
                return outputs, list(session.__dict__.get("caveats", [])), session.findings(), latency
        except CannotRun:
            raise
        except ModelbuildError as exc:
            raise self.fail(ctx, f"the {fmt_name} artifact could not be run in {runtime_name}: {exc.what}") from exc
        except Exception as exc:
            from buildsys.errors import describe

            raise self.fail(ctx, f"the {fmt_name} artifact failed in {runtime_name}: {describe(exc)}") from exc

    def _stand_in_agreement(self, ctx: StepContext[CheckOptions], runtime_name: str, batch: Any,
                            observed: list[Any]) -> dict[str, Any]:
        """Where the device's own runtime ran and has a stand-in (Core ML on macOS, whose stand-in on Linux is
        the MIL reference interpreter): the stand-in's numbers on the same batch against the device's, per
        output. Reported, never judged (the device runtime is the check); it tells what a check by the
        stand-in on a host without the device runtime is worth for this model.

        Returns {"runtime": stand-in, "outputs": {name: {"max_abs", "max_abs_over_range"}}}, or
        {"runtime", "not_run": why} where the stand-in cannot run here or cannot run this artifact."""
        import numpy as np

        from buildsys.formats import get_runtime

        stand_in = str(get_runtime(runtime_name).stand_in)
        reason = get_runtime(stand_in).unavailable()
        if reason:
            return {"runtime": stand_in, "not_run": reason}
        try:
            theirs = self._observe(ctx, stand_in, batch)[0]
        except ModelbuildError as exc:  # CannotRun (an op it lacks) or a failure to run: not run, saying why
            return {"runtime": stand_in, "not_run": exc.what}
        outputs: dict[str, Any] = {}
        for spec, device, other in zip(ctx.model.outputs, observed, theirs):
            ours, ref = np.asarray(device, dtype=np.float64), np.asarray(other, dtype=np.float64)
            gap = float(np.abs(ours - ref).max()) if ours.size else 0.0
            span = float(ours.max() - ours.min()) if ours.size else 0.0
            outputs[spec.name] = {"max_abs": gap, "max_abs_over_range": gap / span if span else gap}
        return {"runtime": stand_in, "outputs": outputs}

    def _localise(self, ctx: StepContext[CheckOptions], runtime_name: str, batch: Any,
                  results: dict[str, Any]) -> dict[str, Any]:
        """Where the artifact's intermediates leave PyTorch's (buildsys.localise), judged by the first
        missed output's tolerance: {"headline", "first", "rows", …}, or {"not_available": why}. Never
        fails the check itself: a localisation that cannot run says why."""
        from buildsys.errors import describe
        from buildsys.localise import NotLocalisable, localise

        fmt_name = ctx.extra["format"]
        if ctx.model.task == "text-generation":  # its inputs are padded token ids, not the module's arguments
            return {"not_available": "localisation not available for a text-generation check: its miss is named by "
                    "the first diverging token (above); a decoder's per-layer comparison is not built yet"}
        if not ctx.model.source.factory:
            return {"not_available": f"localisation not available: the model's source is a {ctx.model.source.format} "
                    "file, not a PyTorch factory, so there are no module paths to name"}
        if ctx.extra.get("structured_sparsity"):  # its layers are narrower than the dense module's by design
            return {"not_available": f"localisation not available: the artifact is structurally pruned "
                    f"(structured_sparsity {ctx.extra['structured_sparsity']:g}), so its layers differ from the dense "
                    "module's by design; a lower ratio, or a looser acceptance, is the remedy"}
        if ctx.extra.get("localise_deferred"):  # a repair follows and measures every layer itself
            return {"not_available": f"localisation deferred: the repair route {ctx.extra['localise_deferred']} is "
                    "tried after this miss and measures each layer's sensitivity itself (explain its node)"}
        missed = next(name for name, r in results.items() if not r)
        tolerance = ctx.options.outputs.get(missed)
        try:
            from buildsys.formats.torch.loading import load_module

            with bounded(LOCALISE_BUDGET_S):
                module = load_module(ctx.model, ctx.root, name=ctx.model_name, step="localisation")
                found = localise(ctx.input_path, runtime_name, module, batch.inputs, ctx.model,  # type: ignore[arg-type]
                                 ctx.root, tolerance.model_dump() if tolerance is not None else None, fmt=fmt_name)
        except NotLocalisable as exc:
            return {"not_available": exc.what}
        except OverBudget:
            return {"not_available": f"localisation stopped after {LOCALISE_BUDGET_S:g} s (its per-layer comparison is "
                    "bounded so that the miss itself is reported): `modelbuild explain` of the node, or the check "
                    "run alone with a larger step budget, localises it"}
        except Exception as exc:  # a diagnosis must not turn a clear miss into a crash
            return {"not_available": f"localisation failed: {describe(exc)}"}
        return {**found.as_dict(ctx.precision), "output": missed}

    def _serve(self, ctx: StepContext[CheckOptions], runtime_name: str, batch: Any, expected: dict[str, Any],
               labels: Any) -> dict[str, Any]:
        """The serving check: the same inputs through the real serving software, judged like the artifact.

        Returns {"runtime", "passed": None, "not_run": why} where the server cannot start on this host,
        else {"runtime", "passed", "outputs", "failures"}.
        """
        from buildsys.formats import get_runtime

        reason = get_runtime(runtime_name).unavailable()
        if reason:
            return {"runtime": runtime_name, "passed": None, "not_run": reason}
        results = self._compare(ctx, self._observe(ctx, runtime_name, batch)[0], expected, labels)
        passed = all(bool(r) for r in results.values())
        return {"runtime": runtime_name, "passed": passed, "outputs": {n: r.as_dict() for n, r in results.items()},
                "failures": [f"{name}: {row}" for name, r in results.items() for row in r.failures()]}

    def _compare(self, ctx: StepContext[CheckOptions], observed: list[Any], expected: dict[str, Any], labels: Any) -> dict[str, Any]:
        """Each output compared with its reference under its resolved tolerance, by output name: its default
        limits raised to the model's intrinsic error (nodes/intrinsic.py), which each output's result shows."""
        from buildsys.nodes.intrinsic import AGAINST_TRUTH, LIMITS, of_output, raised, truth_limits
        from buildsys.comparison import compare

        opts, results, intrinsic = ctx.options, {}, self._intrinsic(ctx)
        truth = self._truth(ctx) if ctx.precision == "fp32" else {}
        for spec, out in zip(ctx.model.outputs, observed):
            tolerance = opts.outputs.get(spec.name)
            own = of_output(intrinsic, ctx.precision, spec.name)
            defaults = opts.default_limits.get(spec.name, [])
            limits, notes = raised(tolerance.model_dump() if tolerance else {}, defaults, own, ctx.precision)
            result = compare(spec.name, spec.kind, expected[spec.name], out, limits, labels)
            if not result and spec.name in truth and own and defaults:
                # An ill-conditioned output (nodes/intrinsic.py): no float32 runtime can follow PyTorch's own
                # float32 rounding; judged against the float64 outputs as PyTorch's float32 is.
                wide = truth_limits(tolerance.model_dump() if tolerance else {}, defaults, own["values"])
                if wide is None:
                    result.extra["not_verifiable"] = (
                        f"the model's own float32 outputs are {_own_words(own['values'])} from its float64 ones: "
                        "float32 does not determine them, so no float32 artifact can be verified against them "
                        "(a model with seeded, untrained weights? check it with its trained weights)")
                elif against := compare(spec.name, spec.kind, truth[spec.name], out, wide, labels):
                    limits = wide
                    notes = {k: f"against the float64 outputs: {AGAINST_TRUTH:g} x PyTorch float32's own distance "
                                f"from them" for k in defaults if k in LIMITS}
                    against.extra["judged_against"] = (
                        f"float64: the model is ill-conditioned at float32 (its own float32 outputs are "
                        f"{_own_words(own['values'])} from its float64 ones); missed against float32: "
                        + "; ".join(result.failures()))
                    result = against
                else:
                    result.extra["missed_against_float64"] = "; ".join(against.failures())
            for metric in result.metrics:
                note = next((notes[k] for k, (m, _) in LIMITS.items() if m == metric.name and k in notes), "")
                metric.note = "; ".join(n for n in (metric.note, note) if n)
            if own:
                result.extra["intrinsic"] = {"against": own["against"], **own["values"]}
            if notes and "judged_against" not in result.extra:
                result.extra["limits_raised"] = {k: limits[k] for k in notes}
            results[spec.name] = result
        return results

    @staticmethod
    def _truth(ctx: StepContext[CheckOptions]) -> dict[str, Any]:
        """The float64 outputs the reference kept for its ill-conditioned outputs (nodes/intrinsic.py)."""
        import numpy as np

        with np.load(ctx.extra["reference"]) as ref:
            return {k.removeprefix("float64:"): ref[k] for k in ref.files if k.startswith("float64:")}

    @staticmethod
    def _intrinsic(ctx: StepContext[CheckOptions]) -> dict[str, Any]:
        """The reference's measurement of the model's own error (empty for a reference made without it)."""
        import json

        import numpy as np

        with np.load(ctx.extra["reference"]) as ref:
            return json.loads(str(ref["intrinsic"])) if "intrinsic" in ref.files else {}

    def _write(self, ctx: StepContext[CheckOptions], metrics: dict[str, Any]) -> dict[str, Any]:
        """report.json: the verdict and what decided it, not this host's timings (the node's output is digested
        into deploy.lock, which two clean builds must write alike); the record keeps those with the metrics."""
        report = {**{k: v for k, v in metrics.items() if k not in HOST_SPECIFIC}, "model": ctx.model_name,
                  "precision": ctx.precision, "acceptance": ctx.options.model_dump(mode="json")}
        (ctx.out_dir / CHECK.filename).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return metrics


#: Seconds a miss's localisation may take (re-lowering an ExecuTorch program one op per delegate call took past a
#: 5-minute step budget on MobileViTv2): past it the check reports the miss without it, within its own budget.
LOCALISE_BUDGET_S = 120.0


def _own_words(values: dict[str, Any]) -> str:
    """PyTorch float32's distance from float64 in words: "cosine 0.9, max_rel 0.27"."""
    return ", ".join(f"{k} {v:g}" for k, v in sorted(values.items()) if isinstance(v, (int, float)))


def _size_budget(ctx: StepContext, allowed: float | None) -> dict[str, Any] | None:
    """The artifact's size (every file it ships, side files included) against max_size_mb."""
    if allowed is None or ctx.input_path is None:
        return None
    from buildsys.formats.base import DIAGNOSTICS_DIR

    tree = ctx.input_path.parent  # the checked-out node: the artifact and its side files, and its diagnostics
    observed = sum(p.stat().st_size for p in tree.rglob("*")
                   if p.is_file() and p.relative_to(tree).parts[0] != DIAGNOSTICS_DIR) / 1e6
    return {"observed": round(observed, 6), "allowed": allowed, "op": "<=", "ok": observed <= allowed}


def _inspected(structure: Any, size: Any, weights: Any) -> dict[str, Any]:
    """What the check measured of the artifact without running it, as its metrics name it (what was measured only)."""
    found = {"structure": structure, "size_mb": size, "quantized_weights": weights}
    return {k: v for k, v in found.items() if v is not None}
