"""The one accuracy-repair search of every quantized or reduced-precision format: the fewest layers kept at
higher precision that make the target's tolerance hold (docs/repair.md, "keep-float").

A format supplies only a `Candidates`: how to make its artifact with chosen layers kept at higher precision
(ONNX Runtime's `nodes_to_exclude`, XNNPACK's dropped annotations, an ai-edge-quantizer `no_quantize` recipe,
NNCF's `ignored_scope`, Core ML's `op_selector` of `FP16ComputePrecision`, the ONNX float16 converter's
`node_block_list`), which layers it can keep, and how an artifact runs. This module does the rest, the same for
every format, judged by the check's own comparisons (`comparison.compare`) at the target's resolved tolerance
(`repair_goal`, never loosened) on the search's data (`search_data`: the calibration set, then the evaluation set
the check judges, where the model has one apart from it), against the float model's own outputs:

1. **baseline**: every layer reduced (full int8, all float16). If it meets the goal, nothing is kept.
2. **sensitivity**: each layer reduced *alone*, everything else at higher precision, its error measured.
   Reducing one layer at a time finds layers that only fail together (a Concat and the Gemm it feeds:
   keeping either one alone changes nothing, each reduced alone shows the whole loss). At most `TRIALS`
   measurements (a model with more layers is measured in contiguous groups) and at most `BUDGET_S` seconds;
   where the format can rank its layers from the baseline's own intermediates (`Candidates.seed`, the
   localisation of buildsys/localise/), the most suspect are measured first, so a budget that runs out has
   measured those.
3. **search**: the most sensitive unit kept at higher precision, then the two most sensitive, ... at most
   `MAX_KEPT` trials, until the goal holds on the evaluation set and **with a margin** (`MARGIN` of every
   allowance left unused) on the calibration set. Judged on calibration alone, a quantizer calibrated on that
   very data looks better than it is (EfficientNet-B0's NNCF int8: top-1 agreement 0.97 on its calibration set,
   0.81 in the check), and an artifact that only just meets the goal on one sample of data misses it on another
   (MobileNetV3's int8 .pte: past 0.9 on calibration, 0.875 in the check); the evaluation set is what the check
   judges, as NNCF's accuracy control judges its validation set. Without a trial that clears the margin, the
   first that meets the goal itself is taken; `NoRecipe` when none does: the route fails, the next recipe is
   tried.

The result is one typed `RepairRecord`: deploy.lock's `facts.repair` of the node (`as_fact`), its latencies
(host-specific) kept apart for the build record (`timings`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Mapping, Sequence, TypeVar

from buildsys.errors import ModelbuildError, describe
from buildsys.formats.repair_record import Measured, RepairRecord, Trial

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.data import Batch
    from buildsys.config.schema import Model, OutputSpec
    from buildsys.formats.base import Step, StepContext

#: At most this many sensitivity measurements (units, or groups of units), and MAX_KEPT keep trials.
TRIALS, MAX_KEPT = 48, 8
#: The most sensitive units the record lists (deploy.lock, explain).
SHOWN = 8
#: Seconds of sensitivity measurement at most; the units not measured by then rank after the measured ones.
BUDGET_S = 900.0
#: The share of the step's time left at the search's start that the search may take: the step goes on after it
#: (ExecuTorch lowers the chosen program to a .pte, every step writes its artifact).
SHARE = 0.8
#: The error a trial's fault adds (an fp16 overflow): more than any metric's own miss, so faulting units rank first.
FAULT = 10.0
#: The fewest sensitivity groups a step's time budget may leave (below, a ranking tells nothing).
MIN_GROUPS = 4
#: A keep trial is started only with this many times the baseline's cost left before the step's deadline (a trial
#: also saves its artifact; the step then writes the chosen one).
OVERRUN = 1.5
#: The metrics a record shows per output (those the goal limits, and the cosine).
SHOWN_METRICS = ("cosine", "top1_agreement", "range_error", "max_rel")
#: The share of each allowance a search result must leave unused on the search's data (a cosine limit of 0.9, room
#: 0.1, is met with margin at 0.925; a range error limit of 0.1 at 0.075): what another sample of data may take.
MARGIN = 0.25
#: The data sets a searching step reads (their digests enter its key): the calibration set it searches, and the
#: evaluation set the check judges (validation, else example: buildsys.config.data.PURPOSES).
SEARCHED = ("calibration", "evaluation")
#: Limit name → the observed metric it bounds (`comparison.compare`'s names), and whether larger is worse.
LIMITS = {"max_rel": ("max_rel", True), "max_range_error": ("range_error", True),
          "min_cosine": ("cosine", False), "min_top1_agreement": ("top1_agreement", False)}

A = TypeVar("A")


def sensitive_help(unit: str) -> str:
    """What `keep_float: sensitive` does, in the words of every quantizing step's `keep_float` option (each says
    first what a kept `unit` is in its format)."""
    return (f"'sensitive': measure each quantized {unit}'s cost on the calibration set and keep the fewest most "
            "sensitive ones in float that meet the target's tolerance there with a margin and on the data the check "
            "judges (docs/repair.md); the search is bounded and its result recorded in deploy.lock.")


class NoRecipe(Exception):
    """The search kept MAX_KEPT units at higher precision and the tolerance still did not hold."""


@contextmanager
def quantizer_failures(step: "Step", ctx: "StepContext", failed: str) -> Iterator[None]:
    """Around a quantizer and its keep_float search: modelbuild's own errors pass as they are, a search whose
    tolerance never held (NoRecipe) fails the step under keep_float 'sensitive', and anything else the
    quantizer raises fails it as `failed` (e.g. 'NNCF int8 quantization failed') with the exception's type
    and first line."""
    try:
        yield
    except ModelbuildError:
        raise
    except NoRecipe as exc:
        raise step.fail(ctx, f"keep_float 'sensitive': {exc}") from exc
    except Exception as exc:
        raise step.fail(ctx, f"{failed}: {describe(exc)[:400]}") from exc


def pinned(kept: Sequence[str], reduced: str) -> dict[str, Any]:
    """The record of units kept at higher precision by hand (a list in `keep_float`): no search."""
    return RepairRecord(reduced=reduced, kept_float=list(kept)).as_fact()


class Candidates(Generic[A]):
    """What a format supplies to the search: artifacts of type A with chosen units kept at higher precision.

    A subclass implements `make` and `units`, and `run` unless the artifact is a file its format's runtime loads
    (then `runtime` names that runtime)."""

    #: The runtime (buildsys.formats registry name) that runs a file artifact, for the default `run`.
    runtime: str | None = None
    #: What a unit is, in the record's words ("quantized layers", "ops", "MIL ops").
    what: str = "layers"

    def __init__(self, model: "Model", batch: "Batch", root: Path) -> None:
        self.model, self.batch, self.root = model, batch, root
        #: What the runtime saw inside the last artifact `run` ran that fails a check whatever its outputs (an fp16
        #: overflow the MIL reference finds: the Neural Engine would make it inf); the search fails such a trial.
        self.faults: list[str] = []

    def make(self, keep: Sequence[str], only: Sequence[str] | None, slot: str) -> A:
        """The artifact with the `keep` units at higher precision; or, when `only` is given, with only those
        units reduced (everything else at higher precision). `slot`: a name for its files, unique per call."""
        raise NotImplementedError

    def units(self, baseline: A) -> list[str]:
        """The units of the fully reduced artifact that can be kept at higher precision, in graph order."""
        raise NotImplementedError

    def run(self, artifact: A) -> tuple[dict[str, "np.ndarray"], float | None]:
        """The artifact's outputs by name on the search's data, and milliseconds per sample."""
        from buildsys.formats import get_runtime
        from buildsys.formats.prune_search import session_outputs

        assert self.runtime is not None, f"{type(self).__name__} runs no file: it must define run()"
        started = time.perf_counter()
        with get_runtime(self.runtime).load(Path(str(artifact)), self.model, self.root) as session:
            outputs = session_outputs(session, self.model, self.batch)
            self.faults = [str(f["text"]) for f in session.findings() if f.get("fails")]
        return outputs, (time.perf_counter() - started) * 1000 / max(len(self.batch), 1)

    def size(self, artifact: A) -> int | None:
        """Bytes of the artifact (a file and its side files, or a directory); None where it has no file."""
        path = Path(str(artifact))
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if f.is_file())

    def seed(self, baseline: A, units: list[str]) -> dict[str, float] | None:
        """A cheap prior of each unit's sensitivity from the baseline (larger: more suspect), which orders the
        measurements; None: measured in graph order."""
        return None

    def kinds(self, kept: Sequence[str]) -> list[str] | None:
        """The op types of kept units, where the format names them apart (TFLite's scopes do not say)."""
        return None


class FileCandidates(Candidates[Path]):
    """Candidates that are files, each written into a folder of its own in the search's `work` folder."""

    def __init__(self, model: "Model", batch: "Batch", root: Path, work: Path) -> None:
        super().__init__(model, batch, root)
        self.work = work

    def file(self, slot: str, name: str) -> Path:
        """Where candidate `slot` writes its file `name` (the folder is made)."""
        path = self.work / slot / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def searched(options: Any) -> tuple[str, ...]:
    """The data sets a step's `keep_float: sensitive` reads, for its `data_used` (none when it does not search)."""
    return SEARCHED if getattr(options, "keep_float", ()) == "sensitive" else ()


def search_data(ctx: "StepContext", limit: int | None = None) -> tuple["Batch | None", int | None]:
    """The search's data: the calibration set (its first `limit` samples), then the evaluation set the check judges
    where the model has one that is not the calibration set itself; and how many samples are calibration's (None:
    the calibration set alone). (None, None) without calibration data."""
    import numpy as np

    from buildsys.config.data import Batch, load_set, resolve_set

    calibration = ctx.data("calibration")
    if calibration is None:
        return None, None
    if limit:
        calibration = Batch({k: v[:limit] for k, v in calibration.inputs.items()}, None, calibration.origin)
    which = resolve_set(ctx.model, "evaluation")
    if which is None or getattr(ctx.model.data, which) == ctx.model.data.calibration:
        return calibration, None
    evaluation = load_set(ctx.model, which, ctx.root)
    if evaluation is None or set(evaluation.inputs) != set(calibration.inputs):
        return calibration, None
    inputs = {k: np.concatenate([v, evaluation.inputs[k]]) for k, v in calibration.inputs.items()}
    return Batch(inputs, None, f"{calibration.origin}, then {evaluation.origin}"), len(calibration)


class Judge:
    """The check's comparisons of an artifact's outputs with the float model's, at the goal: on the search's
    data, whose first `split` samples are the calibration set (held to the goal with MARGIN) and the rest the
    evaluation set (held to the goal itself); `split` None: all of it is calibration."""

    def __init__(self, outputs: "Sequence[OutputSpec]", goal: Mapping[str, Any], reference: dict[str, "np.ndarray"],
                 split: int | None = None):
        self.outputs, self.goal, self.reference, self.split = list(outputs), goal, reference, split

    def describe(self) -> str:
        """On what data the search judged, in words (the record's `judged`)."""
        total = len(next(iter(self.reference.values())))
        if self.split is None:
            return f"{total} calibration samples, with a margin of {MARGIN:.0%} of each allowance"
        return (f"{self.split} calibration samples with a margin of {MARGIN:.0%} of each allowance, and the "
                f"{total - self.split} samples the check judges")

    def _meets(self, out: "OutputSpec", observed: "np.ndarray", limits: Mapping[str, Any]) -> tuple[bool, bool]:
        """(meets the goal, meets it with the margin where it must) for one output."""
        from buildsys.comparison import compare

        reference, split = self.reference[out.name], self.split
        if split is None:
            met = compare(out.name, out.kind, reference, observed, limits).passed
            return bool(met), bool(met) and bool(compare(out.name, out.kind, reference, observed,
                                                         with_margin(limits)).passed)
        searched = compare(out.name, out.kind, reference[:split], observed[:split], limits).passed
        judged = compare(out.name, out.kind, reference[split:], observed[split:], limits).passed
        clear = compare(out.name, out.kind, reference[:split], observed[:split], with_margin(limits)).passed
        return bool(searched and judged), bool(clear and judged)

    def __call__(self, observed: dict[str, "np.ndarray"], ms: float | None = None,
                 size: int | None = None) -> Measured:
        from buildsys.comparison import compare

        passed, clear, error, shown = True, True, 0.0, {}
        for out in self.outputs:
            limits = self.goal.get(out.name) or {}
            result = compare(out.name, out.kind, self.reference[out.name], observed[out.name], limits)
            met, met_clear = self._meets(out, observed[out.name], limits)
            passed, clear = passed and met, clear and met_clear
            values = {m.name: float(m.observed) for m in result.metrics if m.observed is not None}
            if result.problem:  # NaN / inf where the float model has numbers: as bad as it gets
                error += 1e6
            for limit, (metric, larger_is_worse) in LIMITS.items():
                allowed = limits.get(limit)
                if allowed is None or metric not in values:
                    continue
                value = values[metric]
                room = allowed if larger_is_worse else 1 - allowed
                error += (value if larger_is_worse else 1 - value) / room if room > 0 else float(value != allowed)
            wanted = {LIMITS[k][0] for k, v in limits.items() if k in LIMITS and v is not None} | {"cosine"}
            shown[out.name] = {k: round(v, 6) for k, v in values.items() if k in SHOWN_METRICS and k in wanted}
        return Measured(passed, round(error, 6), shown, size, None if ms is None else round(ms, 4), passed and clear)


def with_margin(limits: Mapping[str, Any]) -> dict[str, Any]:
    """`limits` with MARGIN of each allowance taken away (max_rel 1e-2 → 7.5e-3, min_cosine 0.9 → 0.925)."""
    out = dict(limits)
    for limit, (_, larger_is_worse) in LIMITS.items():
        allowed = limits.get(limit)
        if isinstance(allowed, (int, float)):
            out[limit] = allowed * (1 - MARGIN) if larger_is_worse else 1 - (1 - allowed) * (1 - MARGIN)
    return out


def default_goal(goal: Mapping[str, Any] | None, outputs: "Sequence[OutputSpec]", precision: str) -> dict[str, Any]:
    """The search's goal: the target's resolved limits (`repair_goal`), else the precision's defaults."""
    from buildsys.comparison import DEFAULTS, SCORE_ONLY, VALUES_ONLY

    if goal:
        return dict(goal)
    return {o.name: {k: v for k, v in DEFAULTS[precision].items()
                     if k not in (VALUES_ONLY if o.kind == "scores" else SCORE_ONLY)} for o in outputs}


def _groups(units: list[str], trials: int = TRIALS) -> list[list[str]]:
    size = -(-len(units) // max(1, min(TRIALS, trials)))  # more units than trials: contiguous groups, each one trial
    return [units[i:i + size] for i in range(0, len(units), size)]


def _affordable(seconds_left: float, trial_s: float) -> int:
    """How many sensitivity trials fit in half the step's remaining time (the keep trials get the rest), at the
    baseline's cost per trial; at least MIN_GROUPS, so that the ranking means something."""
    if seconds_left == float("inf"):
        return TRIALS
    return max(MIN_GROUPS, int(seconds_left / 2 / max(trial_s, 1e-3)))


def search(candidates: Candidates[A], judge: Judge, reduced: str, budget_s: float = BUDGET_S,
           deadline: float | None = None) -> tuple[A, RepairRecord]:
    """The artifact with the fewest most sensitive units at higher precision that meets the judge's goal, and
    the record. Raises NoRecipe (its message: what the best trial measured) when MAX_KEPT units do not do.

    `deadline` (time.monotonic(), the step's: StepContext.deadline) bounds the whole search so that it ends with
    a result or a NoRecipe rather than be stopped by the step's budget with neither: the baseline's cost per trial
    sets how many sensitivity groups are measured (half of the time left at most), and a keep trial that would
    not finish in time is not started."""

    def measure(artifact: A) -> Measured:
        candidates.faults = []
        observed, ms = candidates.run(artifact)
        measured = judge(observed, ms, candidates.size(artifact))
        if candidates.faults:  # failed whatever its outputs: each fault counts as a whole allowance missed, and more
            return replace(measured, passed=False, clear=False, error=measured.error + FAULT * len(candidates.faults))
        return measured

    began = time.monotonic()
    end = None if deadline is None else began + SHARE * (deadline - began)

    def seconds_left() -> float:
        return float("inf") if end is None else end - time.monotonic()

    full = candidates.make([], None, "full")
    record = RepairRecord(reduced=reduced, baseline=measure(full), judged=judge.describe())
    if record.baseline is not None and record.baseline.clear:
        return full, record
    trial_s = time.monotonic() - began  # one artifact made and run: what each later trial costs, about
    units = candidates.units(full)
    if not units:
        raise NoRecipe(f"the {reduced} artifact has no {candidates.what} that can be kept at higher precision")
    groups = _groups(units, _affordable(seconds_left(), trial_s))
    prior = candidates.seed(full, units) or {}
    queue = sorted(range(len(groups)), key=lambda i: (-max(prior.get(u, 0.0) for u in groups[i]), i))
    scores: dict[int, float] = {}
    started = time.monotonic()
    room = min(budget_s, seconds_left() / 2)
    for i in queue:
        if scores and time.monotonic() - started > room:
            break
        scores[i] = measure(candidates.make([], groups[i], f"one-{i}")).error
    order = sorted(scores, key=lambda i: (-scores[i], i)) + [i for i in queue if i not in scores]
    record.sensitivity = [("+".join(groups[i]), scores[i]) for i in order[:SHOWN] if i in scores]
    left = len(groups) - len(scores)
    record.measured = (f"{len(units)} {candidates.what} in {len(scores)} trial(s), each reduced to {reduced} alone"
                       + (f"; {left} group(s) not measured within {room:.0f} s, ranked "
                          + ("by the baseline's own error" if prior else "in graph order") if left else ""))
    kept: list[str] = []
    # met without the margin: the fallback where no trial clears it
    barely: tuple[A, list[str]] | None = (full, []) if record.baseline is not None and record.baseline.passed else None
    out_of_time = False
    for i in order[:MAX_KEPT]:
        if seconds_left() < OVERRUN * trial_s:  # it would not finish: stop with what was measured
            out_of_time = True
            break
        kept = [*kept, *groups[i]]
        artifact = candidates.make(kept, None, f"keep-{len(record.trials)}")
        record.trials.append(Trial(kept, measure(artifact)))
        if record.trials[-1].measured.clear:
            record.kept_float, record.kinds = kept, candidates.kinds(kept)
            return artifact, record
        if barely is None and record.trials[-1].measured.passed:
            barely = (artifact, kept)
    if barely is not None:  # no trial cleared the margin: the fewest units that met the goal itself
        record.kept_float, record.kinds = barely[1], candidates.kinds(barely[1]) if barely[1] else None
        return barely[0], record
    best = min((t.measured for t in record.trials), key=lambda m: m.error, default=record.baseline)
    stopped = (f"; stopped before the step's time budget ran out (a trial takes about {trial_s:.0f} s)"
               if out_of_time else "")
    raise NoRecipe(f"keeping the {len(kept)} most sensitive of {len(units)} {candidates.what} at higher precision "
                   f"did not meet the tolerance on the search's data (best: {best.metrics if best else {}}){stopped}")
