"""`keep_float: sensitive` of onnx-int8 and onnx-fp16 (docs/repair.md): ONNX Runtime's quantizer and float16
converter as the `Candidates` of the one keep-float search (buildsys/formats/keep_float.py). For int8 a unit is an
ONNX node the quantizer changed, kept in float with `nodes_to_exclude` (or quantized alone with
`nodes_to_quantize`); for fp16 a node the converter would cast, kept in float32 with its `node_block_list`. Run in
the onnx worker on the model's calibration set, in ONNX Runtime, against the float ONNX model's own outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from buildsys.formats.keep_float import FileCandidates, Judge, default_goal, search_data
from buildsys.formats.keep_float import search as keep_float_search

if TYPE_CHECKING:
    from buildsys.config.schema import Model
    from buildsys.config.data import Batch

#: quantize(keep_float, only, out): writes an int8 model, keeping `keep_float` nodes in float, or
#: quantizing only the `only` nodes when that is not None.
Quantize = Callable[[list[str], "list[str] | None", Path], None]


class OnnxCandidates(FileCandidates):
    """ONNX files made by a step's own function, run in ONNX Runtime (also onnx-fp16's, formats/onnx/fp16.py)."""

    runtime = "onnxruntime"

    def __init__(self, model: "Model", batch: "Batch", root: Path, make: Quantize, float_model: Path,
                 work: Path) -> None:
        super().__init__(model, batch, root, work)
        self.quantize, self.float_model = make, float_model

    def make(self, keep: Sequence[str], only: Sequence[str] | None, slot: str) -> Path:
        path = self.file(slot, "model.onnx")
        self.quantize(list(keep), None if only is None else list(only), path)
        return path


class OnnxInt8Candidates(OnnxCandidates):
    what = "quantized layers"

    def units(self, baseline: Path) -> list[str]:
        return quantized_layers(self.float_model, baseline)


class OnnxFp16Candidates(OnnxCandidates):
    what = "float16 nodes"
    #: Nodes that compute nothing in floating point: never worth keeping in float32.
    SKIP = ("Constant", "Shape", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Gather", "Concat")

    def __init__(self, model: "Model", batch: "Batch", root: Path, make: Quantize, float_model: Path, work: Path,
                 blocked: Sequence[str]) -> None:
        super().__init__(model, batch, root, make, float_model, work)
        self.blocked = set(blocked)

    def units(self, baseline: Path) -> list[str]:
        import onnx

        graph = onnx.load(str(self.float_model), load_external_data=False).graph
        return [n.name for n in graph.node if n.name and n.op_type not in self.blocked and n.op_type not in self.SKIP]


def search(step: Any, ctx: Any, quantize: Quantize, model_in: Path, out: Path, work: Path,
           reduced: str = "int8", blocked: Sequence[str] = ()) -> dict[str, Any]:
    """keep_float 'sensitive' of onnx-int8 (`reduced` int8) or onnx-fp16 (`reduced` fp16, `blocked`: the op types
    the converter keeps in float32 anyway), for a `StepContext` of the step's options: the search, `out` written,
    the step's metrics (`repair`: the committed record, `repair_ms_per_sample`: its latencies)."""
    from buildsys.formats.onnx.onnxfile import uses_external_data

    batch, split = search_data(ctx)
    if batch is None or uses_external_data(model_in):
        raise step.fail(ctx, "keep_float 'sensitive' needs calibration data and a model without external data")
    candidates = OnnxInt8Candidates(ctx.model, batch, ctx.root, quantize, model_in, work) if reduced == "int8" else \
        OnnxFp16Candidates(ctx.model, batch, ctx.root, quantize, model_in, work, blocked)
    reference = candidates.run(model_in)[0]
    judge = Judge(ctx.model.outputs, default_goal(ctx.options.repair_goal, ctx.model.outputs, reduced), reference, split)
    chosen, record = keep_float_search(candidates, judge, reduced, deadline=ctx.deadline)
    shutil.copyfile(chosen, out)
    return {"repair": record.as_fact(), "repair_ms_per_sample": record.timings()}


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
