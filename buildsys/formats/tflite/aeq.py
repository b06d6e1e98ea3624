"""int8 schemes and the keep-float search on a float .tflite with ai-edge-quantizer (docs/repair.md).

litert-torch's PT2E quantizer (tflite-int8-from-pt2's default) quantizes every supported op; the
accuracy repair recipes of that step work on the float flatbuffer instead, where ai-edge-quantizer
takes per-op recipes (a regex on the op's scope: its output tensor names):

- keep-float: static int8 (int8 weights per channel, int8 activations calibrated on data.calibration),
  except the ops named, which stay float with float tensors around them. `keep_float: sensitive`
  measures each op's int8 cost on the calibration set and keeps the fewest most sensitive ops in
  float that meet the target's tolerance: the one keep-float search (buildsys/formats/keep_float.py),
  with ai-edge-quantizer as its `Candidates`, judged in the LiteRT interpreter against the float
  flatbuffer's own outputs;
- weight-only: int8 weights dequantized at load time, float activations and compute.

The calibration statistics are gathered once, on the float flatbuffer, and serve every trial (which
ops are quantized does not change a float tensor's range).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from buildsys.formats.keep_float import (FileCandidates, Judge, default_goal, pinned, quantizer_failures,
                                         search_data)
from buildsys.formats.keep_float import search as keep_float_search

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
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
        with quantizer_failures(step, ctx, "ai-edge-quantizer failed"):
            if opts.mode == "weight-only":
                quantizer.weight_only(path)
            elif opts.keep_float == "sensitive":
                batch, split = search_data(ctx, opts.calibration_samples)
                assert batch is not None  # samples came from its calibration set
                candidates = AeqCandidates(ctx.model, batch, ctx.root, quantizer, work / "float.tflite", record,
                                           work / "search")
                goal = default_goal(opts.repair_goal, ctx.model.outputs, "int8")
                judge = Judge(ctx.model.outputs, goal, candidates.run(work / "float.tflite")[0], split)
                chosen, found = keep_float_search(candidates, judge, "int8", deadline=ctx.deadline)
                path.write_bytes(chosen.read_bytes())
                metrics["repair"], metrics["repair_ms_per_sample"] = found.as_fact(), found.timings()
            else:
                quantizer.static(list(opts.keep_float), None, path)
                metrics["repair"] = pinned(opts.keep_float, "int8")
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


class AeqCandidates(FileCandidates):
    """ai-edge-quantizer's static int8 of one float flatbuffer, with chosen ops `no_quantize`, run in the LiteRT
    interpreter (`record`: the float file's layout record, mapping the model's inputs and outputs to signature
    keys). A unit is an op, by its scope."""

    what = "ops"

    def __init__(self, model: "Model", batch: "Batch", root: Path, quantizer: Quantizer, float_model: Path,
                 record: dict[str, Any] | None, work: Path) -> None:
        super().__init__(model, batch, root, work)
        self.quantizer, self.record = quantizer, record
        self.ops = op_scopes(float_model.read_bytes())

    def make(self, keep: Sequence[str], only: Sequence[str] | None, slot: str) -> Path:
        path = self.file(slot, "model.tflite")
        self.quantizer.static(list(keep), None if only is None else list(only), path)
        return path

    def units(self, baseline: Path) -> list[str]:
        return [s for s in self.ops if s]

    def kinds(self, kept: Sequence[str]) -> list[str] | None:
        return [self.ops[k] for k in kept]

    def run(self, artifact: Path) -> tuple[dict[str, "np.ndarray"], float | None]:
        import time

        import numpy as np

        from buildsys.formats.tflite.litert import LiteRtSession

        session = LiteRtSession(artifact, self.model, self.record)
        parts: list[list[Any]] = []
        started = time.perf_counter()
        for chunk in self.batch.chunks(session.fixed or 32):
            parts.append(session.run(chunk))
        per_sample = (time.perf_counter() - started) * 1000 / max(len(self.batch), 1)
        return {o.name: np.concatenate([p[i] for p in parts]) for i, o in enumerate(self.model.outputs)}, per_sample
