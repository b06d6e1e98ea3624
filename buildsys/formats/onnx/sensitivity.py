"""Per-layer int8 sensitivity and the keep-float search of onnx-int8's `keep_float: sensitive` (docs/repair.md).

Run in the onnx worker, on the model's calibration set, against the float ONNX model's own outputs, and
judged by the check's comparisons (`verify.compare`) at the target's own tolerance (`repair_goal`, the
check's resolved limits, never loosened). Bounded: at most `TRIALS` measurements, each quantizing one layer
alone ("quantize one layer at a time": what that layer's int8 costs, even where keeping one other layer
float could not show it, e.g. a Concat and the Gemm it feeds; a model with more layers is measured in
contiguous groups), then at most `MAX_FLOAT` trials keeping one more of the most sensitive in float,
until the tolerance holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from buildsys.config.schema import OutputSpec
    from buildsys.config.data import Batch

#: At most this many sensitivity measurements (layers, or groups of layers), and MAX_FLOAT keep-float trials.
TRIALS, MAX_FLOAT = 48, 8
#: The most sensitive layers the record lists (deploy.lock, explain).
SHOWN = 8

#: quantize(keep_float, only, out): writes an int8 model, keeping `keep_float` nodes in float, or
#: quantizing only the `only` nodes when that is not None.
Quantize = Callable[[list[str], "list[str] | None", Path], None]


class NoRecipe(Exception):
    """The search kept MAX_FLOAT layers in float and the tolerance still did not hold."""


def search(step: Any, ctx: Any, quantize: Quantize, model_in: Path, out: Path, work: Path) -> dict[str, Any]:
    """onnx-int8's keep_float 'sensitive' (a `StepContext` of its options): the bounded search, its record."""
    from buildsys.formats.onnx.onnxfile import uses_external_data
    from buildsys.nodes.verify import DEFAULTS, SCORE_ONLY, VALUES_ONLY

    batch = ctx.data("calibration")
    if batch is None or uses_external_data(model_in):
        raise step.fail(ctx, "keep_float 'sensitive' needs calibration data and a model without external data")
    goal = ctx.options.repair_goal or {
        o.name: {k: v for k, v in DEFAULTS["int8"].items() if k not in (VALUES_ONLY if o.kind == "scores" else SCORE_ONLY)}
        for o in ctx.model.outputs}
    work.mkdir(parents=True, exist_ok=True)
    return keep_float_search(quantize, model_in, Judge(model_in, batch, list(ctx.model.outputs), goal), work, out)


def split_timings(record: dict[str, Any]) -> list[float]:
    """Take the latencies out of a search record (committed to deploy.lock, which holds only what two
    clean builds agree on): ms per sample of the full int8 model, then of each trial, for the build record."""
    return [part.pop("ms") for part in [record.get("full_int8") or {}, *record.get("trials", [])] if "ms" in part]


class Judge:
    """Runs a model on the calibration inputs and compares its outputs with the float model's."""

    def __init__(self, float_model: Path, batch: "Batch", outputs: "list[OutputSpec]", goal: dict[str, Any]):
        self.batch, self.outputs, self.goal = batch, outputs, goal
        self.reference = self.run(float_model)[0]

    def run(self, path: Path) -> tuple[dict[str, Any], float]:
        """Outputs by name, and milliseconds per sample."""
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        names = [o.name for o in self.outputs]
        parts: list[list[Any]] = []
        started = time.perf_counter()
        for chunk in self.batch.chunks(1 if _fixed_one(session) else 32):
            parts.append(session.run(names, {k: v for k, v in chunk.items() if k in wanted}))
        per_sample = (time.perf_counter() - started) * 1000 / max(len(self.batch), 1)
        return {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}, per_sample

    def judge(self, path: Path) -> dict[str, Any]:
        """{"passed", "error" (a scalar: larger is worse), "metrics" (observed, per output), "ms", "bytes"}."""
        from buildsys.nodes.verify import compare

        observed, ms = self.run(path)
        passed, error, shown = True, 0.0, {}
        for out in self.outputs:
            result = compare(out.name, out.kind, self.reference[out.name], observed[out.name], self.goal.get(out.name))
            passed = passed and result.passed
            values = {m.name: float(m.observed) for m in result.metrics if m.observed is not None}
            error += (1 - values.get("cosine", 1.0)) + (1 - values.get("top1_agreement", 1.0)) \
                + values.get("range_error", 0.0)
            shown[out.name] = {k: round(v, 6) for k, v in values.items() if k in ("cosine", "top1_agreement",
                                                                                  "range_error")}
        size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
        return {"passed": passed, "error": round(error, 6), "metrics": shown, "ms": round(ms, 4), "bytes": size}


def _fixed_one(session: Any) -> bool:
    shapes = [i.shape for i in session.get_inputs()]
    return any(s and s[0] == 1 for s in shapes)


def quantized_layers(float_model: Path, int8_model: Path) -> list[str]:
    """The float model's nodes that quantization changed: QDQ keeps their names and feeds them from a
    DequantizeLinear; integer operators are named after them with a `_quant` suffix."""
    import onnx

    names = [n.name for n in onnx.load(str(float_model), load_external_data=False).graph.node if n.name]
    graph = onnx.load(str(int8_model), load_external_data=False).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed = {n.name for n in graph.node if any(i in dequantized for i in n.input)}
    renamed = {n.name.removesuffix("_quant") for n in graph.node if n.name.endswith("_quant")}
    return [n for n in names if n in fed or n in renamed]


def keep_float_search(quantize: Quantize, float_model: Path, judge: Judge, work: Path, out: Path) -> dict[str, Any]:
    """Quantize into `out` keeping the fewest most sensitive layers in float that make the tolerance hold
    on the calibration set; returns the record of the search (metrics `repair`). Raises NoRecipe when
    MAX_FLOAT layers in float do not make it hold (NoRecipe: the route fails, and the next recipe is tried)."""
    full = work / "full" / "model.onnx"
    full.parent.mkdir(parents=True)
    quantize([], None, full)
    base = judge.judge(full)
    record: dict[str, Any] = {"recipe": "keep-float", "full_int8": base, "sensitivity": [], "trials": []}
    if base["passed"]:
        quantize([], None, out)
        record["kept_float"] = []
        return record
    layers = quantized_layers(float_model, full)
    size = -(-len(layers) // TRIALS)  # more layers than trials: contiguous groups, each measured as one
    units = [layers[i:i + size] for i in range(0, len(layers), size)]
    scores = []
    for i, unit in enumerate(units):
        path = work / f"one-{i}" / "model.onnx"
        path.parent.mkdir()
        quantize([], unit, path)
        scores.append(judge.judge(path)["error"])
    order = sorted(range(len(units)), key=lambda i: (-scores[i], i))
    record["sensitivity"] = [["+".join(units[i]), scores[i]] for i in order[:SHOWN]]
    record["measured"] = f"{len(layers)} quantized layers in {len(units)} trial(s), each quantized alone"
    kept: list[str] = []
    for i in order[:MAX_FLOAT]:
        kept = [*kept, *units[i]]
        path = work / f"keep-{len(record['trials'])}" / "model.onnx"
        path.parent.mkdir()
        quantize(kept, None, path)
        trial = {"keep_float": kept, **judge.judge(path)}
        record["trials"].append(trial)
        if trial["passed"]:
            quantize(kept, None, out)
            record["kept_float"] = kept
            return record
    best = min(record["trials"], key=lambda t: t["error"]) if record["trials"] else base
    raise NoRecipe(f"keeping the {len(kept)} most sensitive of {len(layers)} quantized layers "
                       f"in float did not meet the tolerance on the calibration set (best: {best['metrics']})")
