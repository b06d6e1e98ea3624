"""torch.export of the loaded module for the steps that load it: the signature's dynamic axes, at static shapes when
those violate a constraint and the step's `static_fallback` allows it, with the example's values where the code
branches on its data, then the `decompose` option (docs/lowering.md).

Worker side (torch is imported inside the functions). What was done goes to the step's metrics: `dynamic`, a
fallback caveat when the program was exported again at static shapes or with values taken from the example, and
`decomposition` (decompose.describe).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.lowering.answers import CONSTRAINT_VIOLATED, DATA_DEPENDENT

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
    constraint (what a .pt2 delivered with its dynamic axes must do). Either export stopped by a value read from
    the data is done again with the example's values (`export_module`). Returns the program and the metrics."""

    from buildsys.errors import describe
    from buildsys.formats.torch.loading import example_args, export_dims, shapes_for, signature_module, trace_batch

    shapes = export_dims(ctx.model) if dynamic else None
    if shapes is not None and all(s is None for s in shapes):
        shapes = None
    args = example_args(ctx.model, trace_batch(ctx.model, ctx.example(), dynamic=shapes is not None))
    wrapped = signature_module(module, ctx.model, args)  # dict outputs → tuple in signature order
    caveats: list[dict[str, str]] = []
    try:
        program = export_module(wrapped, args, shapes_for(wrapped, shapes), strict, caveats, step.name)
        return program, {"dynamic": shapes is not None, **({"caveats": caveats} if caveats else {})}
    except Exception as exc:
        if shapes is None or not constraint_violated(exc) or not getattr(ctx.options, "static_fallback", False):
            raise step.fail(ctx, f"torch.export failed: {describe(exc)}") from exc
        refusal = describe(exc)
    static = example_args(ctx.model, trace_batch(ctx.model, ctx.example(), dynamic=False))
    wrapped = signature_module(module, ctx.model, static)
    try:
        program = export_module(wrapped, static, None, strict, caveats, step.name)
    except Exception as exc:
        raise step.fail(ctx, f"torch.export failed with dynamic axes ({refusal}) and at static shapes: "
                             f"{describe(exc)}") from exc
    return program, {"dynamic": False, "caveats": [static_caveat(step, ctx, static, refusal), *caveats]}


def data_dependent(exc: BaseException) -> bool:
    """Whether torch.export stopped on a value read from the data that the code branches, loops or sizes on."""
    return bool(DATA_DEPENDENT.search(f"{type(exc).__name__}: {exc}"))


def export_module(module: Any, args: tuple[Any, ...], shapes: Any, strict: bool, caveats: list[dict[str, str]],
                  step: str) -> "ExportedProgram":
    """torch.export of `module` (`shapes`: its dynamic_shapes, or None); where it stops on a data-dependent value,
    exported again with the example's real tensors propagated beside the fake ones (what PyTorch's draft export
    does): each decision on such a value takes the example's, and the program asserts it at run time
    (`aten._assert_scalar`). A caveat of `step` appended to `caveats` names the values assumed; the check's
    validation data, not the example, judges whether they hold."""
    import torch
    from torch._functorch import config as functorch_config

    from buildsys.errors import describe
    from buildsys.lowering.reads import assumptions, without_dead_reads
    from buildsys.status import Caveat, CaveatKind

    try:
        return torch.export.export(module, args, dynamic_shapes=shapes, strict=strict)
    except Exception as exc:
        if not data_dependent(exc):
            raise
        refusal = describe(exc)
    with functorch_config.patch(fake_tensor_propagate_real_tensors=True):
        program = torch.export.export(module, args, dynamic_shapes=shapes, strict=strict)
    without_dead_reads(program.graph_module)
    assumed = assumptions(program.graph_module)
    shown = "; ".join(assumed[:4]) + (f" and {len(assumed) - 4} more" if len(assumed) > 4 else "")
    caveats.append(Caveat(CaveatKind.FALLBACK, f"data-dependent values taken from the example: {shown or 'none kept'}",
                          f"torch.export stopped on a value the code reads from its data ({refusal.splitlines()[0][:200]}); "
                          "exported with the example's values, which the program asserts at run time", step).as_dict())
    return program


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
