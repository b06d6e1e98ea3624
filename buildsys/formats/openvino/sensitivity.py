"""openvino-int8's `keep_float: sensitive` (docs/repair.md): NNCF as the `Candidates` of the one keep-float search
(buildsys/formats/keep_float.py). A unit is an operation of the float IR that NNCF quantized (one reading a
FakeQuantize or an int8 weight: a Convolution, a MatMul, an Add, a Concat), by friendly name; it is kept in float
with NNCF's `ignored_scope`, or quantized alone by ignoring every other unit. Each artifact is an IR saved in the
search's folder and run by the check's own runtime (the OpenVINO CPU plugin) on the search's data, against
the float IR's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from buildsys.formats.keep_float import FileCandidates, Judge, default_goal, search_data
from buildsys.formats.keep_float import search as keep_float_search

if TYPE_CHECKING:
    import openvino

    from buildsys.config.schema import Model
    from buildsys.config.data import Batch

#: quantize(ignored): the float IR quantized by NNCF with these friendly names in its ignored_scope.
Quantize = Callable[[list[str]], "openvino.Model"]


class NncfCandidates(FileCandidates):
    runtime = "openvino"
    what = "quantized operations"

    def __init__(self, model: "Model", batch: "Batch", root: Path, quantize: Quantize, work: Path) -> None:
        super().__init__(model, batch, root, work)
        self.quantize = quantize
        self.all: list[str] = []

    def make(self, keep: Sequence[str], only: Sequence[str] | None, slot: str) -> Path:
        import openvino as ov

        ignored = list(keep) if only is None else [u for u in self.all if u not in only]
        path = self.file(slot, "model.xml")
        ov.save_model(self.quantize(ignored), str(path), compress_to_fp16=False)
        return path

    def units(self, baseline: Path) -> list[str]:
        self.all = quantized_operations(baseline)
        return list(self.all)


def quantized_operations(ir: Path) -> list[str]:
    """Friendly names of the IR's operations NNCF quantized, in order: those reading a FakeQuantize output (an
    int8 activation) or an int8 weight (an int8 Constant behind its Convert / Subtract / Multiply decompression)."""
    import openvino as ov

    def weight(node: Any, depth: int = 0) -> bool:  # an int8 constant, or its decompression
        kind = node.get_type_name()
        if kind == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
        return kind in _DECOMPRESSION and depth < 4 and any(
            weight(i.get_source_output().get_node(), depth + 1) for i in node.inputs())

    names: list[str] = []
    for op in ov.Core().read_model(str(ir)).get_ordered_ops():
        if op.get_type_name() in ("FakeQuantize", "Constant") or (op.get_type_name() in _DECOMPRESSION and weight(op)):
            continue  # the quantization's own ops
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        if any(n.get_type_name() == "FakeQuantize" or weight(n) for n in sources) and op.get_friendly_name() not in names:
            names.append(op.get_friendly_name())
    return names


#: The ops that turn an int8 weight back into float (NNCF's compressed weights).
_DECOMPRESSION = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose")


def search(ctx: Any, quantize: Quantize, float_ir: Path, work: Path) -> tuple["openvino.Model", dict[str, Any]]:
    """openvino-int8's keep_float 'sensitive' (a `StepContext` of its options): the chosen model and the step's
    metrics (`repair`: the committed record; `repair_ms_per_sample`: its latencies in the CPU plugin)."""
    import openvino as ov

    batch, split = search_data(ctx)
    assert batch is not None  # the step refuses a model without calibration data before it searches
    candidates = NncfCandidates(ctx.model, batch, ctx.root, quantize, work)
    judge = Judge(ctx.model.outputs, default_goal(ctx.options.repair_goal, ctx.model.outputs, "int8"),
                  candidates.run(float_ir)[0], split)
    chosen, record = keep_float_search(candidates, judge, "int8", deadline=ctx.deadline)
    return ov.Core().read_model(str(chosen)), {"repair": record.as_fact(), "repair_ms_per_sample": record.timings()}
