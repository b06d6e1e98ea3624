"""Core ML fp16's `keep_float: sensitive` (docs/repair.md): coremltools' `FP16ComputePrecision(op_selector=...)` as
the `Candidates` of the one keep-float search (buildsys/formats/keep_float.py).

A unit is a MIL operation that the float16 pass would cast (coremltools asks `op_selector` about every op it can
compute in float16; the baseline records their names); kept in float32, the selector says no for it. Every
candidate is a conversion of the same traced module, saved in the search's folder and run by the MIL reference
interpreter (formats/coreml/mil*.py: NumPy, op by op, at the program's own precision) on the calibration set,
against the module's own float32 outputs: the check's comparison, on any host.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from buildsys.formats.keep_float import FileCandidates, Judge, default_goal, search_data
from buildsys.formats.keep_float import search as keep_float_search

if TYPE_CHECKING:
    from buildsys.config.data import Batch
    from buildsys.config.schema import Model

#: convert(selector): the module converted with float16 compute where `selector(op)` is true.
Convert = Callable[[Callable[[Any], bool]], Any]
MLPACKAGE = "model.mlpackage"


class Fp16Candidates(FileCandidates):
    runtime = "coreml-mil"
    what = "MIL operations"

    def __init__(self, model: "Model", batch: "Batch", root: Path, convert: Convert, work: Path) -> None:
        super().__init__(model, batch, root, work)
        self.convert = convert
        self.asked: list[str] = []  # the ops the float16 pass can cast, in program order (from the baseline)
        self.converted: dict[Path, Any] = {}  # path → the MLModel saved there

    def make(self, keep: Sequence[str], only: Sequence[str] | None, slot: str) -> Path:
        kept, reduced = set(keep), None if only is None else set(only)
        record = not self.asked

        def selector(op: Any) -> bool:
            if record and op.name not in self.asked:
                self.asked.append(op.name)
            return op.name in reduced if reduced is not None else op.name not in kept

        mlmodel = self.convert(selector)
        path = self.file(slot, MLPACKAGE)
        mlmodel.save(str(path))
        self.converted[path] = mlmodel
        return path

    def units(self, baseline: Path) -> list[str]:
        return list(self.asked)


def search(step: Any, ctx: Any, module: Any) -> tuple[Any, dict[str, Any]]:
    """coreml-fp16's keep_float 'sensitive' for `step` (a Core ML step, whose `_convert` converts `module`) and its
    `StepContext`: the chosen MLModel and the step's metrics (`repair`: the committed record). Latencies are the
    interpreter's, not Core ML's: not recorded."""
    import tempfile

    import coremltools as ct

    from buildsys.formats.keep_float import NoRecipe
    from buildsys.formats.prune_search import torch_outputs

    def convert(selector: Callable[[Any], bool]) -> Any:
        return step._convert(ctx, module, ct.transform.FP16ComputePrecision(op_selector=selector))

    batch, split = search_data(ctx)
    if batch is None:
        raise step.fail(ctx, "keep_float 'sensitive' needs calibration data: add data.calibration to the model")
    with tempfile.TemporaryDirectory(prefix="keep-float-") as work:
        candidates = Fp16Candidates(ctx.model, batch, ctx.root, convert, Path(work))
        judge = Judge(ctx.model.outputs, default_goal(ctx.options.repair_goal, ctx.model.outputs, "fp16"),
                      torch_outputs(module, ctx.model, batch), split)
        try:
            chosen, record = keep_float_search(candidates, judge, "fp16", deadline=ctx.deadline)
        except NoRecipe as exc:
            raise step.fail(ctx, f"keep_float 'sensitive': {exc}") from exc
        return candidates.converted[chosen], {"repair": record.as_fact()}
