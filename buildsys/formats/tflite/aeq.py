"""int8 schemes and the keep-float search on a float .tflite with ai-edge-quantizer (docs/repair.md).

litert-torch's PT2E quantizer (tflite-int8-from-pt2's default) quantizes every supported op; the
accuracy repair recipes of that step work on the float flatbuffer instead, where ai-edge-quantizer
takes per-op recipes (a regex on the op's scope: its output tensor names):

- keep-float: static int8 (int8 weights per channel, int8 activations calibrated on data.calibration),
  except the ops named, which stay float with float tensors around them. `keep_float: sensitive`
  measures each op's int8 cost on the calibration set and keeps the fewest most sensitive ops in
  float that meet the target's tolerance: the bounded search of buildsys/formats/onnx/sensitivity.py
  (its limits, its judge and its record), judged here in the LiteRT interpreter against the float
  flatbuffer's own outputs;
- weight-only: int8 weights dequantized at load time, float activations and compute.

The calibration statistics are gathered once, on the float flatbuffer, and serve every trial (which
ops are quantized does not change a float tensor's range).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.formats.onnx.sensitivity import MAX_FLOAT, SHOWN, TRIALS, Judge, NoRecipe

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model, OutputSpec
    from buildsys.config.data import Batch
    from buildsys.formats.base import Step, StepContext

#: What each scheme delivers, in words (the node's committed `scheme` fact).
SCHEMES = {
    "full": "full int8: int8 weights and activations (calibrated)",
    "dynamic": "dynamic range: int8 weights, activations quantized per call",
    "weight-only": "weight-only: int8 weights dequantized to float at load, float activations and compute",
    "keep-float": "full int8 except the ops kept in float",
}


def uses_aeq(options: Any) -> bool:
    """Whether a tflite-int8 step's options are ai-edge-quantizer's (kept float ops, weight-only)."""
    return bool(options.keep_float) or options.mode == "weight-only"


def scheme(options: Any) -> str:
    """What a tflite-int8 step's options deliver, in words."""
    return SCHEMES["keep-float" if options.keep_float else options.mode]


def requantize(step: "Step", ctx: "StepContext", path: Path, samples: "list[dict[str, np.ndarray]] | None",
               record: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
    """Replace the float flatbuffer at `path` by ai-edge-quantizer's int8 for the step's options: weight-only,
    or static int8 with `keep_float` ops left float ('sensitive': the bounded search, judged in LiteRT on the
    calibration set (`record`: the file's layout record), its record in metrics["repair"]). `samples`: the
    calibration set as signature feeds (None for weight-only)."""
    import tempfile

    from buildsys.errors import ModelbuildError, describe
    from buildsys.formats.onnx.sensitivity import split_timings
    from buildsys.nodes.verify import DEFAULTS, SCORE_ONLY, VALUES_ONLY

    opts = ctx.options
    if opts.mode == "full" and not samples:
        raise step.fail(ctx, "full int8 needs calibration data: add data.calibration to the model, or set "
                             "mode: dynamic")
    float_flatbuffer = path.read_bytes()
    quantizer = Quantizer(float_flatbuffer, samples, float_io=opts.io == "float")
    metrics["quantizer"] = "ai-edge-quantizer"
    # Trials live in a hidden folder of out_dir that is gone before the step returns.
    with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".work-") as tmp:
        work = Path(tmp)
        (work / "float.tflite").write_bytes(float_flatbuffer)
        try:
            if opts.mode == "weight-only":
                quantizer.weight_only(path)
            elif opts.keep_float == "sensitive":
                batch = ctx.data("calibration")
                assert batch is not None  # samples came from it
                if opts.calibration_samples:
                    batch.inputs = {k: v[:opts.calibration_samples] for k, v in batch.inputs.items()}
                goal = opts.repair_goal or {
                    o.name: {k: v for k, v in DEFAULTS["int8"].items()
                             if k not in (VALUES_ONLY if o.kind == "scores" else SCORE_ONLY)}
                    for o in ctx.model.outputs}
                judge = LiteRtJudge(work / "float.tflite", batch, ctx.model, record, goal)
                metrics["repair"] = keep_float_search(quantizer, work / "float.tflite", judge, work / "search", path)
                metrics["repair_ms_per_sample"] = split_timings(metrics["repair"])
            else:
                quantizer.static(list(opts.keep_float), None, path)
                metrics["repair"] = {"recipe": "keep-float", "kept_float": list(opts.keep_float)}
        except ModelbuildError:
            raise
        except NoRecipe as exc:
            raise step.fail(ctx, f"keep_float 'sensitive': {exc}") from exc
        except Exception as exc:
            raise step.fail(ctx, f"ai-edge-quantizer failed: {describe(exc)[:400]}") from exc
    metrics["mode"] = opts.mode
    if opts.mode == "full":
        metrics["io"] = opts.io


def _scope(name: str) -> str:
    """The regex that selects exactly one op by its scope (its output tensor names, ';'-joined)."""
    return "^" + re.escape(name) + "$"


def op_scopes(flatbuffer: bytes) -> dict[str, str]:
    """Scope → op type of every op of the main subgraph, in execution order (ai-edge-quantizer's naming)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    graph = tfl.read_model(flatbuffer).subgraphs[0]
    types = [d["op_name"] for d in Interpreter(model_content=flatbuffer)._get_ops_details()]  # the same order
    return {tfl.get_op_scope(op, graph.tensors): t for op, t in zip(graph.operators, types)}


class Quantizer:
    """ai-edge-quantizer on one float flatbuffer, its calibration gathered once (static int8).

    `samples`: the calibration set as signature feeds (keys and layout of the artifact), one call each."""

    def __init__(self, flatbuffer: bytes, samples: "list[dict[str, np.ndarray]] | None", float_io: bool) -> None:
        self.flatbuffer, self.samples, self.float_io = flatbuffer, samples, float_io
        self._calibration: Any = None

    def calibration(self, quantizer: Any) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        if self._calibration is None:
            if not self.samples:
                raise ValueError("static int8 needs calibration data")
            signature = next(iter(Interpreter(model_content=self.flatbuffer).get_signature_list()))
            self._calibration = quantizer.calibrate({signature: self.samples}, num_threads=1)
        return self._calibration

    def static(self, keep_float: list[str], only: list[str] | None, out: Path) -> None:
        """Static int8 into `out`: every op but `keep_float`, or only the `only` ops when not None."""
        from ai_edge_quantizer import quantizer, recipe
        from ai_edge_quantizer.qtyping import TFLOperationName

        q = quantizer.Quantizer(bytearray(self.flatbuffer), recipe.static_wi8_ai8())
        calibration = self.calibration(q)  # on the full recipe: every tensor's range
        if only is not None:
            q = quantizer.Quantizer(bytearray(self.flatbuffer))
            for name in only:
                q.add_static_config(_scope(name), TFLOperationName.ALL_SUPPORTED, 8, 8)
        for name in keep_float:
            q.update_quantization_recipe(regex=_scope(name), operation_name=TFLOperationName.ALL_SUPPORTED,
                                         algorithm_key="no_quantize")
        if self.float_io:  # io: float: the file quantizes its inputs and dequantizes its outputs itself
            for edge in (TFLOperationName.INPUT, TFLOperationName.OUTPUT):
                q.update_quantization_recipe(regex=".*", operation_name=edge, algorithm_key="no_quantize")
        self._write(q, calibration, out)

    def weight_only(self, out: Path) -> None:
        from ai_edge_quantizer import quantizer, recipe

        self._write(quantizer.Quantizer(bytearray(self.flatbuffer), recipe.weight_only_wi8_afp32()), None, out)

    @staticmethod
    def _write(q: Any, calibration: Any, out: Path) -> None:
        result = q.quantize(calibration, enable_progress_report=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bytes(result.quantized_model))


class LiteRtJudge(Judge):
    """sensitivity.Judge with the LiteRT interpreter in place of ONNX Runtime (the layout record of
    the float flatbuffer maps the model's inputs and outputs to signature keys)."""

    def __init__(self, float_model: Path, batch: "Batch", model: "Model", record: dict[str, Any] | None,
                 goal: dict[str, Any]) -> None:
        self.model, self.record = model, record
        outputs: list[OutputSpec] = list(model.outputs)
        super().__init__(float_model, batch, outputs, goal)

    def run(self, path: Path) -> tuple[dict[str, Any], float]:
        import time

        import numpy as np

        from buildsys.formats.tflite.litert import LiteRtSession

        session = LiteRtSession(path, self.model, self.record)
        parts: list[list[Any]] = []
        started = time.perf_counter()
        for chunk in self.batch.chunks(session.fixed or 32):
            parts.append(session.run(chunk))
        per_sample = (time.perf_counter() - started) * 1000 / max(len(self.batch), 1)
        names = [o.name for o in self.outputs]
        return {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}, per_sample


def keep_float_search(quantizer: Quantizer, float_model: Path, judge: Judge, work: Path, out: Path) -> dict[str, Any]:
    """onnx sensitivity's search on a flatbuffer: the full int8 model; if it misses the goal on the
    calibration set, each op quantized alone (at most TRIALS measurements, contiguous groups beyond),
    then the most sensitive kept in float one more at a time (at most MAX_FLOAT trials) until the goal
    holds. Writes `out`; returns the record (facts.repair). Raises NoRecipe when the bound is reached."""
    full = work / "full" / "model.tflite"
    quantizer.static([], None, full)
    base = judge.judge(full)
    record: dict[str, Any] = {"recipe": "keep-float", "full_int8": base, "sensitivity": [], "trials": []}
    if base["passed"]:
        out.write_bytes(full.read_bytes())
        record["kept_float"] = []
        return record
    ops = op_scopes(float_model.read_bytes())
    layers = [s for s in ops if s]
    size = -(-len(layers) // TRIALS)
    units = [layers[i:i + size] for i in range(0, len(layers), size)]
    scores = []
    for i, unit in enumerate(units):
        path = work / f"one-{i}" / "model.tflite"
        quantizer.static([], unit, path)
        scores.append(judge.judge(path)["error"])
    order = sorted(range(len(units)), key=lambda i: (-scores[i], i))
    record["sensitivity"] = [["+".join(units[i]), scores[i]] for i in order[:SHOWN]]
    record["measured"] = f"{len(layers)} ops in {len(units)} trial(s), each quantized alone"
    kept: list[str] = []
    for i in order[:MAX_FLOAT]:
        kept = [*kept, *units[i]]
        path = work / f"keep-{len(record['trials'])}" / "model.tflite"
        quantizer.static(kept, None, path)
        trial = {"keep_float": kept, **judge.judge(path)}
        record["trials"].append(trial)
        if trial["passed"]:
            out.write_bytes(path.read_bytes())
            record["kept_float"] = kept
            record["kept_ops"] = [ops[k] for k in kept]  # their types, in the same order
            return record
    best = min(record["trials"], key=lambda t: t["error"]) if record["trials"] else base
    raise NoRecipe(f"keeping the {len(kept)} most sensitive of {len(layers)} ops in float did not meet the "
                   f"tolerance on the calibration set (best: {best['metrics']})")
