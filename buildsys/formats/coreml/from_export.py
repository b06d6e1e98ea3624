"""Core ML from the torch.export program: the second route to every Core ML format.

coremltools converts an `ExportedProgram` directly (its torch.export frontend). Models the
TorchScript trace cannot take (a trace that bakes in Python scalars, ops the trace frontend has no
conversion for) may convert this way, and the reverse holds too, so both routes stay: the trace
route comes first (it is coremltools' mature frontend), this one is the fallback (`route_cost`),
and `via: [pt2]` pins it. Everything after loading (I/O names and types, compute precision,
weight compression, metadata, reproducible bytes) is the trace route's code.
"""

from __future__ import annotations

from typing import Any

from buildsys.formats import register, register_variants
from buildsys.formats.base import StepContext
from buildsys.formats.coreml.convert import STATIC_SHAPES, CoremlFromTorchScript, Int8Member
from buildsys.formats.coreml.options import CoremlOptions
from buildsys.formats.torch.export import PROGRAM


class _FromExport(CoremlFromTorchScript):
    """Shared body: load the `.pt2` program, decomposed to the core ATen opset coremltools converts."""

    accepts_ops = ("coremltools", "core")  # ct.convert(ExportedProgram) decomposes first
    symptoms = (STATIC_SHAPES,)  # this is the torch.export frontend already
    decomposes_unnamed = True

    version = 6  # 2: op nodes named apart from string arguments (names_apart_from_strings); 3: outputs in torch's
    # shape (output_shapes.py), the project's own decompositions (lowering/decompose.core_table); 4: past the core
    # set (decompose.to_core), input mutations dropped (lowering/export.without_input_mutations); 5: fills (convert's
    # 3); 6: convert's 4
    route_cost = 1.5  # after pytorch → torchscript → coreml (2 steps of 1); before longer detours
    description = "coremltools.convert of the torch.export program (decomposed to core ATen)."

    def _load(self, ctx: StepContext[CoremlOptions]) -> Any:
        import torch

        try:
            program = torch.export.load(str(ctx.input_path))
        except Exception as exc:
            raise self.fail(ctx, f"'{ctx.input_path}' is not a readable torch.export program: "
                                 f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        from buildsys.lowering.decompose import to_core
        from buildsys.lowering.export import without_input_mutations
        from buildsys.lowering.reads import with_asserted_values

        with_asserted_values(program.graph_module)  # coremltools has no sym_ite: a flag read from the data, pinned
        program, mutated = without_input_mutations(to_core(program))  # core ATen (new_ones → full, …)
        if mutated:  # Core ML has no write-back of an input (metric `input_mutations_dropped`)
            ctx.extra["input_mutations_dropped"] = mutated
        return names_apart_from_strings(program)


def names_apart_from_strings(program: Any) -> Any:
    """`program` with every op node whose name is also a string argument of some node renamed (`floor` → `floor_1`).

    coremltools' torch.export frontend looks a string argument up among the graph's values by name first
    (its own open issue, rdar://138953006), and FX names nodes after their ops: `div(y, 3, rounding_mode='floor')`
    in a program that also computes `floor(x)` read the floor node's tensor as its rounding mode (RT-DETR: "rounding
    mode "%floor: (…)" not supported"), as would gelu(approximate='tanh') beside a tanh or a reduction named
    'sum' / 'mean'. Inputs, parameters and outputs keep their names (the program's signature holds them)."""
    import torch

    graphs = [m.graph for m in program.graph_module.modules() if isinstance(getattr(m, "graph", None), torch.fx.Graph)]
    strings: set[str] = set()
    for graph in graphs:
        for node in graph.nodes:
            torch.fx.node.map_aggregate((node.args, node.kwargs),
                                        lambda a: strings.add(a) if isinstance(a, str) else None)
    for graph in graphs:
        for node in graph.nodes:
            if node.op == "call_function" and node.name in strings:
                node._rename(f"{node.name}_node")  # noqa: SLF001 - FX's own renaming, unique within the graph
    program.graph_module.recompile()
    return program


@register_variants({"fp32": PROGRAM, "fp16": PROGRAM})
class CoremlFromPt2(_FromExport):
    """Convert the torch.export program to a Core ML ML Program computing in float32 (fp32) or float16 (fp16)."""

    produces = "coreml"


@register
class CoremlInt8FromPt2(Int8Member, _FromExport):
    """Convert the torch.export program to an fp16 ML Program, then compress its weights (int8 or palettes)."""

    name = "coreml-int8-from-pt2"
    consumes = PROGRAM
    version = 7  # Int8Member's 5, the route's names_apart_from_strings, to_core and without_input_mutations
