"""The torch.export format (.pt2): an ExportedProgram with dynamic axes, saved with torch.export.save."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, StepContext
from buildsys.formats.reproducible import exported_program_without_stack_traces
from buildsys.formats.torch.rewritten import FromPyTorch, RewritableOptions, program_ops, rewrite_metrics
from buildsys.lowering import STATIC_EXPORT

PT2 = register_format(Format(
    name="pt2", filename="model.pt2", runtime="torch-export",
    description="torch.export program (.pt2), the input of AOTInductor, ExecuTorch and the dynamo ONNX exporter.",
))
PT2_FILE = register_format(PT2.given("A torch.export program file (.pt2)"))
#: What a step that reads a torch.export program consumes: the one exported here, or a .pt2 given as the source.
PROGRAM = (PT2.name, PT2_FILE.name)


@register
class Pt2FromPyTorch(FromPyTorch):
    """Capture the PyTorch module with torch.export.export and save the program."""

    name = "pt2-from-pytorch"
    version = 5  # 2: saved without stack traces (build paths), byte-identical across checkouts; 3: a QAT
    # module is exported converted with its learned quantization parameters (buildsys.formats.torch.qat); 4: linear layers in
    # disguise (transformers' Conv1D) exported as nn.Linear (formats/torch/linear.py); 5: a model that writes into its
    # inputs exported on copies of them (loading.signature_module)
    produces = "pt2"
    description = "torch.export.export with the signature's dynamic axes, then torch.export.save."
    symptoms = (STATIC_EXPORT,)  # torch.export's shape constraint: exported again at static shapes, where allowed

    class Options(RewritableOptions):
        dynamic: bool = Field(
            default=True, description="Export the axes the signature names with strings (e.g. 'batch') as "
            "dynamic (torch.export.Dim); false fixes them to the example's size, with a batch axis of 1.")
        strict: bool = Field(
            default=False, description="Capture with TorchDynamo's strict tracing (torch.export strict=True) "
            "instead of the default non-strict Python tracing.")

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import torch

        from buildsys.formats.torch.rewritten import load_rewritten
        from buildsys.lowering.export import decomposed, export_program

        opts = ctx.options
        module = load_rewritten(self, ctx)
        program, metrics = export_program(self, ctx, module, opts.dynamic, opts.strict)
        program, decomposition = decomposed(self, ctx, program)
        exported_program_without_stack_traces(program)  # they name the build host's paths
        path = ctx.out_dir / PT2.filename
        torch.export.save(program, str(path))
        return {**metrics, "bytes": path.stat().st_size, **decomposition,
                **rewrite_metrics(ctx, program_ops(program, custom=True), module)}


