"""torch.export of the loaded module for the steps that load it: the signature's dynamic axes, at static shapes when
those violate a constraint and the step's `static_fallback` allows it, then the `decompose` option (docs/lowering.md).

Worker side (torch is imported inside the functions). What was done goes to the step's metrics: `dynamic`, a
fallback caveat when the program was exported again at static shapes, and `decomposition` (decompose.describe).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.lowering.answers import CONSTRAINT_VIOLATED

if TYPE_CHECKING:
    from torch.export import ExportedProgram

    from buildsys.formats.base import Step, StepContext


def constraint_violated(exc: BaseException) -> bool:
    """Whether torch.export refused the dynamic axes because the code specialises them (not another failure)."""
    from torch._dynamo.exc import UserError, UserErrorType

    if isinstance(exc, UserError) and exc.error_type is UserErrorType.CONSTRAINT_VIOLATION:
        return True
    return bool(CONSTRAINT_VIOLATED.search(str(exc)))


def export_program(step: "Step", ctx: "StepContext[Any]", module: Any, dynamic: bool,
                   strict: bool = False) -> tuple["ExportedProgram", dict[str, Any]]:
    """`module` exported with torch.export: the signature's named axes dynamic when `dynamic`, else the fixed batch
    (the signature's, else 1). A dynamic export that violates a constraint is exported again at static shapes when
    the step's options set `static_fallback`, with a fallback caveat saying so; otherwise it fails naming the
    constraint (what a .pt2 delivered with its dynamic axes must do). Returns the program and the metrics."""
    import torch

    from buildsys.errors import describe
    from buildsys.formats.torch.loading import example_args, export_dims, shapes_for, signature_module, trace_batch

    shapes = export_dims(ctx.model) if dynamic else None
    if shapes is not None and all(s is None for s in shapes):
        shapes = None
    args = example_args(ctx.model, trace_batch(ctx.model, ctx.example(), dynamic=shapes is not None))
    wrapped = signature_module(module, ctx.model, args)  # dict outputs → tuple in signature order
    try:
        program = torch.export.export(wrapped, args, dynamic_shapes=shapes_for(wrapped, shapes), strict=strict)
        return program, {"dynamic": shapes is not None}
    except Exception as exc:
        if shapes is None or not constraint_violated(exc) or not getattr(ctx.options, "static_fallback", False):
            raise step.fail(ctx, f"torch.export failed: {describe(exc)}") from exc
        refusal = describe(exc)
    static = example_args(ctx.model, trace_batch(ctx.model, ctx.example(), dynamic=False))
    wrapped = signature_module(module, ctx.model, static)
    try:
        program = torch.export.export(wrapped, static, strict=strict)
    except Exception as exc:
        raise step.fail(ctx, f"torch.export failed with dynamic axes ({refusal}) and at static shapes: "
                             f"{describe(exc)}") from exc
    return program, {"dynamic": False, "caveats": [static_caveat(step, ctx, static, refusal)]}


def static_caveat(step: "Step", ctx: "StepContext[Any]", args: tuple[Any, ...], refusal: str) -> dict[str, str]:
    """The fallback caveat of a static re-export: the shapes used, and the constraint the dynamic axes violated."""
    from buildsys.status import Caveat, CaveatKind

    shapes = ", ".join(f"{i.name} {list(a.shape)}" for i, a in zip(ctx.model.inputs, args))
    return Caveat(CaveatKind.FALLBACK, f"exported at static shapes: {shapes}",
                  f"the dynamic export violated a constraint ({refusal.splitlines()[0][:200]}); the formats after "
                  "this one have fixed shapes", step.name).as_dict()


def decomposed(step: "Step", ctx: "StepContext[Any]", program: "ExportedProgram") -> tuple["ExportedProgram", dict[str, Any]]:
    """`program` decomposed as the step's `decompose` option says (unchanged when unset), and the metrics entry."""
    spec = getattr(ctx.options, "decompose", None)
    if spec is None:
        return program, {}
    from buildsys.lowering.decompose import NoDecomposition, decompose

    try:
        program, record = decompose(program, spec)
    except NoDecomposition as exc:
        raise step.fail(ctx, str(exc)) from exc
    return program, {"decomposition": record}


def lowered(step: "Step", ctx: "StepContext[Any]", module: Any, dynamic: bool) -> tuple[Any, dict[str, Any]]:
    """For a step that traces or exports the module itself (TorchScript, the ONNX exporters): with `decompose` set,
    the module exported, decomposed, and compiled back to TorchScript that keeps its dynamic sizes
    (decompose.scriptable; a module otherwise), with the metrics; without it, the module as it is."""
    if getattr(ctx.options, "decompose", None) is None:
        return module, {}
    from buildsys.formats.torch.qat import info_of

    info = info_of(module)
    if info is not None and info.flow == "eager":
        raise step.fail(ctx, "decompose would lower an eager-mode QAT model's fake quantization to arithmetic and lose "
                             "it: leave decompose unset for this model")
    program, metrics = export_program(step, ctx, module, dynamic)
    program, record = decomposed(step, ctx, program)
    from buildsys.errors import describe
    from buildsys.lowering.decompose import scriptable

    try:
        return scriptable(program), {**metrics, **record}
    except Exception as exc:
        raise step.fail(ctx, f"the decomposed program does not compile to TorchScript: {describe(exc)}") from exc


def without_input_mutations(program: "ExportedProgram") -> tuple["ExportedProgram", list[str]]:
    """`program` without the write-backs of the inputs it mutates in place (`x.clamp_()`, `x[:, 0] = …`, a batch
    norm updating running statistics passed in), and the names of those inputs.

    A functionalised program returns each mutated user input's new value ahead of its outputs, for the runtime to
    copy back (`OutputKind.USER_INPUT_MUTATION`). A deployed artifact's inputs are the caller's copies and its
    outputs are what is checked, so the write-back only costs a format that cannot express it: Core ML refuses the
    program ("Core ML cannot handle user input mutation"). The outputs are computed from the mutated values
    either way: the functional graph already reads them."""
    from torch.export import ExportedProgram, ExportGraphSignature
    from torch.export.graph_signature import OutputKind

    specs = program.graph_signature.output_specs
    drop = {i for i, spec in enumerate(specs) if spec.kind == OutputKind.USER_INPUT_MUTATION}
    if not drop:
        return program, []
    module = program.graph_module
    out = module.graph.output_node()
    out.args = (tuple(v for i, v in enumerate(out.args[0]) if i not in drop),)
    module.graph.eliminate_dead_code()
    module.recompile()
    signature = ExportGraphSignature(input_specs=program.graph_signature.input_specs,
                                     output_specs=[spec for i, spec in enumerate(specs) if i not in drop])
    mutated = sorted(str(specs[i].target) for i in drop)
    return ExportedProgram(root=module, graph=module.graph, graph_signature=signature,
                           state_dict=program.state_dict, range_constraints=program.range_constraints,
                           module_call_graph=program.module_call_graph, example_inputs=program.example_inputs,
                           constants=program.constants, verifiers=[program.verifier]), mutated
