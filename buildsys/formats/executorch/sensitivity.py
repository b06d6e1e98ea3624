"""Per-node int8 sensitivity and the keep-float search of executorch-int8's `keep_float: sensitive` (docs/repair.md).

The method and bounds of the ONNX search (buildsys/formats/onnx/sensitivity.py, whose TRIALS, MAX_FLOAT,
SHOWN and NoRecipe this uses): at most TRIALS measurements, each quantizing one unit alone, then at most
MAX_FLOAT trials keeping one more of the most sensitive units in float, until the target's tolerance
(`repair_goal`, never loosened) holds on the calibration set. For PT2E:

- a unit is a node XNNPACKQuantizer annotated with a range of its own (`quantize.annotated_units`: a
  Linear, an add, a cat; the view ops that share a range go with their producer);
- a trial is prepare_pt2e with the other units' annotations dropped, the observers run on the calibration
  set, convert_pt2e, and the converted graph run on the calibration set: int8 values through
  quantize/dequantize pairs, PyTorch's reference arithmetic for what XNNPACK runs. It is judged against the
  float program by the check's own comparisons (`verify.compare`); the check then judges the lowered .pte
  in the ExecuTorch runtime, on the validation set, against PyTorch.

The search exports the program once at SEARCH_BATCH samples per call (a fixed first axis keeps its size):
fewer calls, and observers take min/max over every sample whatever the batch, so the nodes it keeps in float
quantize the program (exported at its own batch) to the same ranges.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable

from buildsys.formats.onnx.sensitivity import MAX_FLOAT, SHOWN, TRIALS, NoRecipe

if TYPE_CHECKING:
    import torch

    from buildsys.config.schema import Model, OutputSpec

#: Samples per call of the search's program, where the model's first axis is not fixed.
SEARCH_BATCH = 16

__all__ = ["MAX_FLOAT", "NoRecipe", "SEARCH_BATCH", "TRIALS", "search"]


class Trials:
    """The float program at the search's batch, the calibration set in calls of it, and one quantization per trial."""

    def __init__(self, module: "torch.nn.Module", chunks: list[tuple[Any, ...]], counts: list[int],
                 per_channel: bool, dynamic: bool):
        import torch

        from buildsys.formats.executorch.quantize import with_recurrent_cells_decomposed

        self.chunks, self.counts, self.per_channel, self.dynamic = chunks, counts, per_channel, dynamic
        program = torch.export.export(module, chunks[0], strict=False)
        self.float = (with_recurrent_cells_decomposed(program) if dynamic else program).module()
        self.units: list[str] = []

    def quantize(self, float_nodes: "Callable[[Any], bool] | None") -> "torch.fx.GraphModule":
        """The converted graph with the nodes `float_nodes` holds for left in float."""
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        from buildsys.formats.executorch.quantize import annotated_units, quantizer

        prepared = prepare_pt2e(copy.deepcopy(self.float), quantizer(per_channel=self.per_channel, dynamic=self.dynamic,
                                                                   float_nodes=float_nodes))
        if float_nodes is None:
            self.units = annotated_units(prepared)
        with torch.no_grad():
            for args in self.chunks[:1] if self.dynamic else self.chunks:  # dynamic: weights' observers only
                prepared(*args)
        return convert_pt2e(prepared)

    def run(self, module: Any, model: "Model") -> dict[str, Any]:
        """Outputs by name over the calibration set (a last chunk's padding dropped)."""
        import numpy as np
        import torch

        from buildsys.formats.torch.loading import outputs_in_order

        parts: list[list[Any]] = []
        with torch.no_grad():
            for args, n in zip(self.chunks, self.counts):
                result = outputs_in_order(module(*args), model)
                parts.append([np.asarray(t.detach().numpy())[:n] for t in result])
        return {o.name: np.concatenate([p[i] for p in parts]) for i, o in enumerate(model.outputs)}


def search(step: Any, ctx: Any, module: "torch.nn.Module", per_channel: bool, dynamic: bool,
           batch: int) -> dict[str, Any]:
    """executorch-int8's keep_float 'sensitive' (a `StepContext` of its options; `batch`: the program's) - the
    bounded search, its record (`kept_float`: the node names to keep in float). Raises NoRecipe when
    MAX_FLOAT units in float do not do."""
    from buildsys.config.data import Batch
    from buildsys.formats.executorch.contract import fill
    from buildsys.formats.torch.loading import example_args
    from buildsys.nodes.verify import DEFAULTS, SCORE_ONLY, VALUES_ONLY

    calibration = ctx.data("calibration")
    if calibration is None:
        raise step.fail(ctx, "keep_float 'sensitive' needs calibration data: add data.calibration to the model")
    limit = ctx.options.calibration_samples
    inputs = {k: v[:limit] if limit else v for k, v in calibration.inputs.items()}
    n = len(next(iter(inputs.values())))
    fixed = next((i.shape[0] for i in ctx.model.inputs if i.shape and isinstance(i.shape[0], int)), None)

    def trials_at(size: int) -> Trials:
        chunks, counts = [], []
        for start in range(0, n, size):
            chunk = {k: v[start:start + size] for k, v in inputs.items()}
            counts.append(len(next(iter(chunk.values()))))
            chunks.append(example_args(ctx.model, Batch(fill(chunk, size), None, calibration.origin)))
        return Trials(module, chunks, counts, per_channel, dynamic)

    try:
        trials = trials_at(fixed or min(SEARCH_BATCH, n))
    except Exception:  # a program that exports at its own batch only: the search runs at that batch
        trials = trials_at(batch)
    outputs = list(ctx.model.outputs)
    goal = ctx.options.repair_goal or {
        o.name: {k: v for k, v in DEFAULTS["int8"].items() if k not in (VALUES_ONLY if o.kind == "scores" else SCORE_ONLY)}
        for o in outputs}
    reference = trials.run(trials.float, ctx.model)
    return keep_float_search(trials, lambda m: judge(trials.run(m, ctx.model), reference, outputs, goal, m))


def judge(observed: dict[str, Any], reference: dict[str, Any], outputs: "list[OutputSpec]", goal: dict[str, Any],
          converted: Any) -> dict[str, Any]:
    """{"passed", "error" (larger is worse), "metrics" per output, "bytes" (the graph's weights: int8 and float)}:
    the check's comparisons at the goal, the error as the ONNX search scores it."""
    from buildsys.formats.executorch.quantize import int8_weights
    from buildsys.nodes.verify import compare

    passed, error, shown = True, 0.0, {}
    for out in outputs:
        result = compare(out.name, out.kind, reference[out.name], observed[out.name], goal.get(out.name))
        passed = passed and result.passed
        values = {m.name: float(m.observed) for m in result.metrics if m.observed is not None}
        error += (1 - values.get("cosine", 1.0)) + (1 - values.get("top1_agreement", 1.0)) + values.get("range_error", 0.0)
        shown[out.name] = {k: round(v, 6) for k, v in values.items() if k in ("cosine", "top1_agreement", "range_error")}
    int8, total = int8_weights(converted)
    return {"passed": passed, "error": round(error, 6), "metrics": shown, "bytes": int8 + 4 * (total - int8)}


def keep_float_search(trials: Trials, judged: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The fewest most sensitive units in float that meet the goal on the calibration set: the record."""
    from buildsys.formats.executorch.quantize import float_filter

    base = judged(trials.quantize(None))
    record: dict[str, Any] = {"recipe": "keep-float", "full_int8": base, "sensitivity": [], "trials": []}
    if base["passed"]:
        record["kept_float"] = []
        return record
    units = trials.units
    size = -(-len(units) // TRIALS)  # more units than trials: contiguous groups, each measured as one
    groups = [units[i:i + size] for i in range(0, len(units), size)]
    scores = []
    for group in groups:  # each quantized alone: every other unit float
        others = [u for u in units if u not in group]
        scores.append(judged(trials.quantize(float_filter(others)))["error"])
    order = sorted(range(len(groups)), key=lambda i: (-scores[i], i))
    record["sensitivity"] = [["+".join(groups[i]), scores[i]] for i in order[:SHOWN]]
    record["measured"] = f"{len(units)} quantized nodes in {len(groups)} trial(s), each quantized alone"
    kept: list[str] = []
    for i in order[:MAX_FLOAT]:
        kept = [*kept, *groups[i]]
        trial = {"keep_float": kept, **judged(trials.quantize(float_filter(kept)))}
        record["trials"].append(trial)
        if trial["passed"]:
            record["kept_float"] = kept
            return record
    best = min(record["trials"], key=lambda t: t["error"]) if record["trials"] else base
    raise NoRecipe(f"keeping the {len(kept)} most sensitive of {len(units)} quantized nodes in float did not meet "
                   f"the tolerance on the calibration set (best: {best['metrics']})")
