"""Post-training magnitude pruning shared by the formats that offer `sparsity:` (Core ML, TFLite, OpenVINO): the
option class, NumPy magnitude pruning, and the search of `sparsity: auto`.

The search runs in the format's worker, after conversion. Each candidate is the converted artifact pruned by
magnitude at one ratio (as for a fixed `sparsity`), saved, and run by the format's own runtime (the MIL reference
interpreter, the LiteRT interpreter, the OpenVINO CPU plugin) on the model's **validation set**; its outputs are
compared with PyTorch's outputs on the same samples by the check's comparisons (`comparison.compare`) at the target's
resolved acceptance (`repair_goal`, filled in by the planner: the search never loosens it). That is the
comparison the check makes afterwards, on the same data, as in NNCF's accuracy-aware mode: pruning needs no
calibration data, and a ratio chosen on other samples missed the check on these (examples/digits: 0.6 passed
on the calibration set, then missed the check with cosine 0.6937 < 0.7). The error grows with the ratio,
so the search bisects the grid `RATIOS` (at most four artifacts for nine ratios) and keeps the highest ratio
that passed; the check still judges the result.

Torch- and NumPy-free at module level: the planner validates options with `PruningOptions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from buildsys.formats.base import SearchingOptions, Step, StepOptions

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.config.data import Batch
    from buildsys.formats.base import StepContext

#: The ratios `auto` chooses from, lowest first.
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: A ratio in (0, 1) or the search.
Sparsity = Optional[Union[Annotated[float, Field(gt=0, lt=1)], Literal["auto"]]]

AUTO_NEEDS_VALIDATION = ("sparsity: auto measures each ratio on the validation set, as the check does: declare "
                         "data.validation for the model, or give a ratio (sparsity: 0.5)")


class PruningStep(Step):
    """A step that offers `sparsity:` (Core ML, TFLite, OpenVINO float): `auto` reads the validation set, its
    search record is a committed fact that `explain` describes, and `auto` without validation data is refused
    at plan time. A subclass with checks of its own calls `sparsity_problem` from its `check_config`."""

    # What `sparsity: auto` tried: it chose the delivered ratio, a fact of this output (its figures are the
    # building host's runtime's; the check re-measures the result wherever it runs).
    committed_metrics: ClassVar[tuple[str, ...]] = ("sparsity_search",)

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        return ("validation",) if getattr(options, "sparsity", None) == "auto" else ()

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        return describe(facts.get("sparsity_search"))

    @staticmethod
    def sparsity_problem(model: "Model", options: StepOptions) -> str | None:
        """Why these options cannot prune this model (None: they can)."""
        if getattr(options, "sparsity", None) == "auto" and model.data.validation is None:
            return AUTO_NEEDS_VALIDATION
        return None

    @classmethod
    def check_config(cls, model: "Model", options: StepOptions, root: Path) -> str | None:
        return cls.sparsity_problem(model, options)


class PruningOptions(SearchingOptions):
    """Options of a step that prunes float weights after conversion (TFLite, OpenVINO). Unset, `sparsity` and
    `weight_threshold` are left out of the dump, so the keys of nodes that prune nothing stay what they were."""

    sparsity: Sparsity = Field(
        default=None, description="Post-training magnitude pruning: this share of each float weight tensor of the "
        "convolutions and matrix products (those with at least weight_threshold elements), the smallest in "
        "magnitude, is set to zero. TFLite stores a pruned tensor sparse (from about 0.3, where the file shrinks; "
        "the interpreter densifies it at load); OpenVINO's IR stores it dense (smaller only when compressed). "
        "'auto': the highest of 0.1 … 0.9 that meets the target's acceptance on the validation set "
        "(docs/mobile.md); the ratio chosen and every ratio tried are recorded in deploy.lock.")
    weight_threshold: int = Field(
        default=2048, ge=0, description="With sparsity: weights with fewer elements than this are not pruned "
        "(biases, tiny layers), as in Core ML's pruning.")

    @model_serializer(mode="wrap")
    def _without_unset_search(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            if data.get("repair_goal") is None:
                data.pop("repair_goal", None)
            if data.get("sparsity") is None:
                data.pop("sparsity", None)
                data.pop("weight_threshold", None)
        return data


def magnitude_prune(weights: "np.ndarray", ratio: float) -> "np.ndarray":
    """A copy of `weights` with round(ratio × size) of its entries, the smallest in magnitude, set to zero
    (ties broken by position, so the result is deterministic)."""
    import numpy as np

    flat = np.array(weights, copy=True).reshape(-1)
    count = int(round(ratio * flat.size))
    if count:
        flat[np.argsort(np.abs(flat.astype(np.float32)), kind="stable")[:count]] = 0
    return flat.reshape(weights.shape)


def zero_share(arrays: "list[np.ndarray]") -> float:
    """The share of zeros over all of `arrays` (the sparsity measured on what was delivered)."""
    total = sum(a.size for a in arrays)
    return round(sum(int((a == 0).sum()) for a in arrays) / total, 4) if total else 0.0


class NoRatio(Exception):
    """Even the lowest ratio misses the tolerance: the record says what it measured."""

    def __init__(self, record: dict[str, Any]):
        super().__init__("no ratio meets the tolerance")
        self.record = record


def highest_ratio(prune: Callable[[float, Path], Path], evaluate: Callable[[Path], dict[str, "np.ndarray"]],
                  reference: dict[str, "np.ndarray"], dense: Path, model: "Model", batch: "Batch",
                  goal: dict[str, Any], work: Path) -> tuple[float, dict[str, Any]]:
    """The highest of `RATIOS` whose pruned artifact (`prune(ratio, out_dir)` saves it, returns its path)
    meets `goal` against `reference` (PyTorch's outputs on `batch`), its outputs being `evaluate(path)`;
    and the search's record: the goal, the dense artifact's size and every trial with its agreement and size.
    Raises NoRatio with the record when the lowest ratio misses."""
    trials: list[dict[str, Any]] = []

    def trial(i: int) -> bool:
        path = prune(RATIOS[i], work / f"sparsity-{RATIOS[i]:g}")
        passed, metrics = _judge(model, reference, evaluate(path), goal, batch.labels)
        trials.append({"sparsity": RATIOS[i], "passed": passed, "metrics": metrics, "bytes": _bytes(path)})
        return passed

    low, high, best = 0, len(RATIOS) - 1, None  # bisect for the last index that passes
    while low <= high:
        mid = (low + high) // 2
        if trial(mid):
            best, low = mid, mid + 1
        else:
            high = mid - 1
    record = {"goal": goal, "samples": len(batch), "dense_bytes": _bytes(dense),
              "trials": sorted(trials, key=lambda t: t["sparsity"])}
    if best is None:
        raise NoRatio(record)
    return RATIOS[best], record


def search(step: "Step", ctx: "StepContext", module: Any, prune: Callable[[float, Path], Path],
           evaluate: Callable[[Path], dict[str, "np.ndarray"]], dense: Path, work: Path) -> tuple[float, dict[str, Any]]:
    """`sparsity: auto` for `step`: the chosen ratio and the record (`facts.sparsity_search`), judged against
    `module` (what was converted: the traced module, or the model's PyTorch module) on the validation set at
    the target's goal; a tolerance no ratio meets fails the step with what each ratio measured."""
    from buildsys.comparison import DEFAULTS, SCORE_ONLY, VALUES_ONLY

    batch = ctx.data("validation")
    assert batch is not None  # check_config requires it
    goal = ctx.options.repair_goal or {
        o.name: {k: v for k, v in DEFAULTS[step.precision].items()
                 if k not in (VALUES_ONLY if o.kind == "scores" else SCORE_ONLY)} for o in ctx.model.outputs}
    try:
        chosen, record = highest_ratio(prune, evaluate, torch_outputs(module, ctx.model, batch), dense, ctx.model,
                                       batch, goal, work)
    except NoRatio as exc:
        raise step.fail(ctx, "sparsity auto: even the lowest ratio misses the tolerance on the validation set ("
                             + "; ".join(describe(exc.record)[1:]) + "); deliver it dense (remove sparsity) or "
                             "loosen the acceptance you wrote", every_route=True) from exc
    return chosen, {**record, "chosen": chosen}


def describe(record: Any) -> list[str]:
    """The committed search record in words (explain, report)."""
    if not isinstance(record, dict):
        return []
    from buildsys.planning.repair import _kb, _measured

    lines = [f"sparsity auto: tried {len(record.get('trials', []))} ratio(s) on {record.get('samples')} validation "
             f"sample(s) against PyTorch (dense artifact {_kb(record.get('dense_bytes'))})"]
    for t in record.get("trials", []):
        lines.append(f"sparsity {t['sparsity']:g}: {'passed' if t['passed'] else 'missed'}, {_measured(t['metrics'])}, "
                     f"{_kb(t['bytes'])}")
    return lines


def torch_outputs(module: Any, model: "Model", batch: "Batch") -> dict[str, "np.ndarray"]:
    """What the converted module (a torch.nn.Module, a TorchScript module or an ExportedProgram) computes on
    `batch`, in float32."""
    import numpy as np
    import torch

    call = module.module() if hasattr(module, "module") and not isinstance(module, torch.nn.Module) else module
    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for chunk in batch.chunks(32):
            out = call(*[torch.from_numpy(np.asarray(chunk[i.name])) for i in model.inputs])
            outs = out if isinstance(out, (tuple, list)) else [out]
            parts.append([o.detach().float().numpy() for o in outs])
    return {o.name: np.concatenate([p[i] for p in parts]) for i, o in enumerate(model.outputs)}


def session_outputs(session: Any, model: "Model", batch: "Batch") -> dict[str, "np.ndarray"]:
    """What a runtime Session (`run(feeds) -> outputs in the signature's order`, `max_batch`) computes on `batch`."""
    import numpy as np

    names = getattr(session, "inputs", None)  # the inputs the artifact kept, where the session lists their names
    wanted = set(names) if names and all(isinstance(n, str) for n in names) else {i.name for i in model.inputs}
    parts = [session.run({k: v for k, v in chunk.items() if k in wanted})
             for chunk in batch.chunks(getattr(session, "max_batch", None) or 32)]
    return {o.name: np.concatenate([p[i] for p in parts]) for i, o in enumerate(model.outputs)}


def _judge(model: "Model", reference: dict[str, "np.ndarray"], observed: dict[str, "np.ndarray"],
           goal: dict[str, Any], labels: "np.ndarray | None") -> tuple[bool, dict[str, Any]]:
    from buildsys.comparison import compare

    passed, shown = True, {}
    for out in model.outputs:
        result = compare(out.name, out.kind, reference[out.name], observed[out.name], goal.get(out.name),
                         labels if out.kind == "scores" else None)
        passed = passed and result.passed
        shown[out.name] = {m.name: round(float(m.observed), 6) for m in result.metrics
                           if m.observed is not None and m.name in ("cosine", "top1_agreement", "max_rel", "range_error",
                                                               "accuracy")}
    return passed, shown


def _bytes(artifact: Path) -> int:
    """Size of a file, or of a directory's files (an .mlpackage); an IR counts its .bin beside the .xml."""
    if artifact.is_dir():
        return sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    side = artifact.with_suffix(".bin") if artifact.suffix == ".xml" else None
    return artifact.stat().st_size + (side.stat().st_size if side is not None and side.is_file() else 0)
