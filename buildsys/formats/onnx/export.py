"""The ONNX format: export from PyTorch, TorchScript or a torch.export program, or take a given ONNX file.

What every ONNX-producing step shares (saving, the checker, axis names) is in `onnxfile.py`.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from pydantic import Field, model_validator

from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.onnx.onnxfile import (MODEL_FILE, SIDE_FILE, finish, load, name_axes, save, uses_external_data,
                                            weights_once)
from buildsys.formats.torch.rewritten import FromPyTorch, RewritableOptions, dispatched_ops, rewrite_metrics
from buildsys.formats.torch.export import PROGRAM
from buildsys.formats.torch.torchscript import TRACED, load_input
from buildsys.lowering import STATIC_EXPORT, Answer, Symptom

ONNX = register_format(Format(
    name="onnx", filename=MODEL_FILE, runtime="onnxruntime",
    description="ONNX model (weights embedded, or in a model.onnx.data side file), run with ONNX Runtime.",
))
ONNX_FILE = register_format(ONNX.given("An ONNX file"))

# --- exporters -----------------------------------------------------------------------------------


def export_failure(exc: BaseException, opset: int) -> str:
    """One line saying why an ONNX export failed, naming the operator when the exporter does."""
    text = str(exc)
    legacy = re.search(r"operator '([^']+)' to ONNX opset version (\d+)", text)
    if legacy:
        return (f"ONNX export failed: operator '{legacy.group(1)}' is not supported at opset {legacy.group(2)} "
                "(try another opset, the other exporter (dynamo), or rewrite that part of the model)")
    dispatch = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if dispatch:
        op = dispatch.group(1).replace(".", "::", 1)  # aten._linalg_eigh → aten::_linalg_eigh, as the legacy exporter says
        return (f"ONNX export failed: operator '{op}' has no ONNX translation at opset {opset} "
                "(try another opset, the legacy exporter (dynamo: false), or rewrite that part of the model)")
    # The dynamo exporter wraps the real error in a long report; its summary names the cause.
    inner = re.findall(r"<class '([\w.]+)'>: ([^\n]+)", text)
    if inner:
        cls, msg = inner[0]
        return f"ONNX export failed: {cls.rsplit('.', 1)[-1]}: {_plain(msg)}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"ONNX export failed: {type(exc).__name__}: {_plain(first)}"


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip()


def _example(ctx: StepContext, dynamic: bool = True) -> tuple[Any, ...]:
    """Example inputs for export: two samples on a dynamic batch axis, one when exporting fixed shapes."""
    from buildsys.formats.torch.loading import example_args, trace_batch

    return example_args(ctx.model, trace_batch(ctx.model, ctx.example(), dynamic=dynamic))


def _legacy_export(step: Step, ctx: StepContext, module: Any, opset: int, dynamic: bool, folding: bool) -> Path:
    """The TorchScript-based exporter (dynamo=False): one self-contained file."""
    import warnings

    import torch

    from buildsys.formats.torch.loading import dynamic_axes, signature_module

    path = ctx.out_dir / ONNX.filename
    args = _example(ctx, dynamic)
    if isinstance(module, torch.nn.Module) and not isinstance(module, torch.jit.ScriptModule):
        module = signature_module(module, ctx.model, args)
    axes: dict[str, dict[int, str]] | None = None
    if dynamic:
        axes = dict(dynamic_axes(ctx.model))
        batch_names = {a[0] for a in axes.values() if 0 in a}
        if len(batch_names) == 1:  # outputs share the inputs' batch axis
            axes.update({o.name: {0: next(iter(batch_names))} for o in ctx.model.outputs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                              input_names=[i.name for i in ctx.model.inputs],
                              output_names=[o.name for o in ctx.model.outputs],
                              dynamic_axes=axes or None, do_constant_folding=folding)
        except Exception as exc:
            raise step.fail(ctx, export_failure(exc, opset)) from exc
    weights_once(path)  # a tied embedding and output head: the legacy exporter writes the table twice
    return path


def _dynamo_export(step: Step, ctx: StepContext, model: Any, opset: int, external: bool,
                   dynamic_shapes: Any = None, dynamic: bool = True) -> Path:
    """The torch.export-based exporter (dynamo=True), from a module or an ExportedProgram."""
    import torch

    from buildsys.formats.torch.loading import shapes_for, signature_module

    path = ctx.out_dir / ONNX.filename
    args = _example(ctx, dynamic)
    if isinstance(model, torch.nn.Module):
        model = signature_module(model, ctx.model, args)
        dynamic_shapes = shapes_for(model, dynamic_shapes)
        output_names = [o.name for o in ctx.model.outputs]
    else:
        output_names = _program_output_names(model, ctx)
    try:
        program = torch.onnx.export(model, args, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes)
        assert program is not None  # dynamo=True returns the ONNXProgram (None is the TorchScript exporter's)
        _name_io(program.model, [i.name for i in ctx.model.inputs], output_names)
        program.save(str(path), external_data=external)
    except Exception as exc:
        raise step.fail(ctx, export_failure(exc, opset)) from exc
    side = ctx.out_dir / SIDE_FILE
    if side.exists() and side.stat().st_size == 0 and not uses_external_data(path):
        side.unlink()  # small models: every tensor was embedded and the side file is empty
    name_axes(path, ctx)
    return path


def _name_io(model: Any, inputs: list[str], outputs: list[str]) -> None:
    """Give the graph's inputs and outputs the signature's names, keeping it in SSA form.

    torch's own input_names/output_names only relabel the boundary values: an internal value that
    already bears a wanted name (BERT's `embedding` node when the output is called 'embedding') would
    then be written twice and the checker refuses the graph. Such a value is renamed aside first.
    """
    import onnx_ir as ir

    graph = model.graph
    wanted = {id(v): n for v, n in [*zip(graph.inputs, inputs), *zip(graph.outputs, outputs)]}
    values = [*graph.inputs, *graph.initializers.values(),
              *(v for node in ir.traversal.RecursiveGraphIterator(graph) for v in node.outputs)]
    used = {v.name for v in values} | set(wanted.values())
    for value in values:
        if value.name in wanted.values() and wanted.get(id(value)) != value.name:
            value.name = next(f"{value.name}_{n}" for n in range(1, len(used) + 2) if f"{value.name}_{n}" not in used)
            used.add(value.name)
    for value in [*graph.inputs, *graph.outputs]:
        value.name = wanted.get(id(value), value.name)


def _program_output_names(program: Any, ctx: StepContext) -> list[str]:
    """ONNX output names for an ExportedProgram, in its flattened output order.

    A program that returns a dict keyed by the signature's names flattens in its own key order; name
    the ONNX outputs after those keys so that each name lands on its tensor. Otherwise positional.
    """
    wanted = [o.name for o in ctx.model.outputs]
    spec = getattr(getattr(program, "call_spec", None), "out_spec", None)
    keys = getattr(spec, "context", None) if spec is not None and getattr(spec, "type", None) is dict else None
    if keys and set(wanted) <= set(keys) and len(keys) == getattr(spec, "num_leaves", len(keys)):
        return [str(k) for k in keys]
    return wanted


def _legal(path: Path) -> dict[str, Any]:
    """Cast what the exporter wrote in types ONNX's schemas forbid (legalise.py); the casts, as a metric."""
    from buildsys.formats.onnx.legalise import legalise

    casts = legalise(path)
    return {"legalised": casts} if casts else {}


PROTOBUF_LIMIT = 2**31  # bytes: protobuf cannot serialize a larger message, so one ONNX file cannot either


# Field factories: each options model gets its own FieldInfo.
#: The opsets torch 2.13's exporters write (torch.onnx._constants; a test holds these to the installed torch):
#: the legacy TorchScript-based exporter 7–20, the dynamo exporter up to 23.
MIN_OPSET, LEGACY_MAX_OPSET, DYNAMO_MAX_OPSET = 7, 20, 23


def _opset(high: int) -> Any:
    return Field(default=18, ge=MIN_OPSET, le=high, description=f"ONNX opset version to export to ({MIN_OPSET}–{high}); "
                 "the artifact is checked to carry exactly this opset.")


def _dynamic_axes() -> Any:
    return Field(default=True, description="Export the axes the signature names with strings (e.g. 'batch') as "
                 "dynamic; false fixes them to the example's size, with a batch axis of 1.")


def _folding() -> Any:
    return Field(default=True, description="Fold constant subgraphs into initializers (legacy exporter only).")


def _external() -> Any:
    return Field(default=False, description="Write the weights to a side file model.onnx.data next to model.onnx "
                 "(dynamo exporter only; the artifact is then two files). False embeds them (up to the 2 GB "
                 "protobuf limit).")


# --- steps ---------------------------------------------------------------------------------------

#: The other exporter answers an op one exporter has no translation for (export_failure's wording of each).
EXPORTER_SWITCHES = (
    Symptom((r"is not supported at opset \d+", r"Unsupported: ONNX export of operator"), Answer.of(
        "onnx dynamo", {"dynamo": True}, why="the legacy exporter has no symbolic for the op; the dynamo exporter "
        "translates it through torchlib, decomposing what torchlib lacks")),
    Symptom((r"has no ONNX translation at opset \d+",), Answer.of(
        "onnx legacy", {"dynamo": False}, why="the dynamo exporter's torchlib has no translation for the op; the legacy "
        "exporter's symbolics may")),
    Symptom((r"ONNX Runtime cannot load the model the legacy exporter wrote",), Answer.of(  # onnxfile._validate
        "onnx dynamo", {"dynamo": True}, why="ONNX Runtime cannot load what the legacy exporter wrote; the dynamo "
        "exporter writes the graph from torch.export's program")),
    Symptom((r"ONNX Runtime cannot load the model the dynamo exporter wrote",), Answer.of(
        "onnx legacy", {"dynamo": False}, why="ONNX Runtime cannot load what the dynamo exporter wrote; the legacy "
        "exporter writes the graph from its own trace")),
)


@register
class OnnxFromPyTorch(FromPyTorch):
    """Export the PyTorch module to ONNX (legacy TorchScript-based exporter, or dynamo)."""

    name = "onnx-from-pytorch"
    version = 8  # 2: the written opset must be the one asked for (dynamo fell back to 18 silently); 3: a QAT
    # module is exported converted, as QDQ, by the dynamo exporter (buildsys.formats.torch.qat); 4: an eager QAT module is
    # exported by the TorchScript exporter, its fake quantization as QDQ; 5: linear layers in disguise
    # (transformers' Conv1D) exported as nn.Linear (formats/torch/linear.py); 6: types ONNX forbids cast (legalise.py);
    # 7: a model that writes into its inputs exported on copies of them (loading.signature_module); 8: a tied weight
    # stored once (onnxfile.weights_once: the legacy exporter wrote the output head's transposed copy)
    produces = "onnx"
    packages = ("torch", "onnx", "onnxscript")
    extra = "server"
    description = "torch.onnx.export of the factory's module."
    symptoms = (STATIC_EXPORT, *EXPORTER_SWITCHES)  # the dynamo exporter's shape constraint; the other exporter
    # The legacy exporter looks up the ops of its own TorchScript trace in its symbolic registry; dynamo: true
    # reads the exported graph, decomposing what torchlib has no translation for. (A QAT module is exported
    # with dynamo whatever the option: it is still read against the legacy table, whose ATen ops it shares.)
    accepts_ops = ("onnx-legacy", "traced")

    @classmethod
    def accepts(cls, options: Mapping[str, Any] | None = None) -> tuple[str, str] | None:
        return ("onnx-dynamo", "decomposed") if (options or {}).get("dynamo") is True else cls.accepts_ops

    @classmethod
    def accepts_any(cls) -> set[str]:
        return {"onnx-legacy", "onnx-dynamo"}

    class Options(RewritableOptions):
        opset: int = _opset(DYNAMO_MAX_OPSET)
        dynamo: bool = Field(
            default=False, description="Use the torch.export-based exporter (dynamo=True). The default, the legacy "
            "TorchScript-based exporter, writes one self-contained file and handles more models today.")
        external_data: bool = _external()
        dynamic_axes: bool = _dynamic_axes()
        do_constant_folding: bool = _folding()

        @model_validator(mode="after")
        def _external_needs_dynamo(self) -> "OnnxFromPyTorch.Options":
            if self.external_data and not self.dynamo:
                raise ValueError("external_data needs dynamo: true (the legacy exporter writes one file)")
            if self.opset > LEGACY_MAX_OPSET and not self.dynamo:
                raise ValueError(f"opset {self.opset} needs dynamo: true (the legacy exporter writes opsets "
                                 f"{MIN_OPSET}–{LEGACY_MAX_OPSET})")
            return self

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        from buildsys.formats.torch.loading import export_dims
        from buildsys.formats.torch.rewritten import load_rewritten

        opts = ctx.options
        module = load_rewritten(self, ctx, fold=True, eager_qat=True)  # a QAT model's weights as int8 initializers (QDQ)
        size = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
        if size >= PROTOBUF_LIMIT and not opts.external_data:
            raise self.fail(ctx, f"the model's weights take {size / 1e9:.2f} GB, past the 2 GB a single ONNX file "
                                 "can hold: set options: {onnx: {dynamo: true, external_data: true}} on its targets")
        from buildsys.formats.torch.qat import info_of

        # A converted PT2E QAT module holds quantized_decomposed ops: only the dynamo exporter turns them into
        # QuantizeLinear/DequantizeLinear (the legacy one has no symbolic for them). An eager QAT module holds
        # fake_quantize_per_tensor/channel_affine calls: the legacy exporter's symbolics write those as QDQ
        # (opset 13 for per-channel scales and the (0, 127) range).
        info = info_of(module)
        if info is not None and info.flow == "eager":
            if opts.dynamo:
                raise self.fail(ctx, "an eager-mode QAT model is exported by the TorchScript exporter (its fake-quant "
                                     "symbolics write QuantizeLinear/DequantizeLinear): drop dynamo: true")
            if opts.opset < 13:
                raise self.fail(ctx, f"an eager-mode QAT model's fake quantization needs opset 13 or later "
                                     f"(per-channel QuantizeLinear), not {opts.opset}")
        dynamo = opts.dynamo or (info is not None and info.flow == "pt2e")
        lowering: dict[str, Any] = {}
        if dynamo and (opts.decompose is not None or opts.static_fallback):  # the program exported here, then ONNX
            from buildsys.lowering.export import decomposed, export_program

            program, lowering = export_program(self, ctx, module, opts.dynamic_axes)
            program, decomposition = decomposed(self, ctx, program)
            lowering.update(decomposition)
            path = _dynamo_export(self, ctx, program, opts.opset, opts.external_data, dynamic=lowering["dynamic"])
        elif dynamo:
            shapes = export_dims(ctx.model) if opts.dynamic_axes else None
            path = _dynamo_export(self, ctx, module, opts.opset, opts.external_data,
                                  shapes if shapes and any(s is not None for s in shapes) else None,
                                  dynamic=opts.dynamic_axes)
        else:
            from buildsys.lowering.export import lowered

            exported, lowering = lowered(self, ctx, module, dynamic=opts.dynamic_axes)  # scripted when decomposed
            path = _legacy_export(self, ctx, exported, opts.opset, opts.dynamic_axes, opts.do_constant_folding)
        folded = {}
        if info is not None and info.flow == "eager":  # int8 weight initializers, as the PT2E export writes them
            from buildsys.formats.torch.qat import fold_onnx_weights

            folded = {"int8_weights": fold_onnx_weights(path)}
        # The module's ATen ops: a refusal downstream (OpenVINO's, onnx2tf's) names ONNX ops, matched through these
        ops = dispatched_ops(module, _example(ctx, False))
        written = "dynamo" if dynamo else "legacy"
        return {**_legal(path), **finish(self, ctx, path, opset=opts.opset, writer=f"the {written} exporter"),
                "exporter": written, **rewrite_metrics(ctx, ops, module), **folded, **lowering}


@register
class OnnxFromTorchScript(Step):
    """Export a TorchScript module to ONNX with the legacy (TorchScript-based) exporter."""

    name = "onnx-from-torchscript"
    version = 3  # 2: types ONNX forbids cast (legalise.py); 3: a tied weight stored once (onnxfile.weights_once)
    consumes = TRACED
    produces = "onnx"
    packages = ("torch", "onnx")
    toolchain = "torch"
    description = "torch.onnx.export(dynamo=False) of a TorchScript module."
    accepts_ops = ("onnx-legacy", "traced")  # the module's graph, looked up in the symbolic registry

    class Options(StepOptions):
        opset: int = _opset(LEGACY_MAX_OPSET)
        dynamic_axes: bool = _dynamic_axes()
        do_constant_folding: bool = _folding()

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        opts = ctx.options
        module = load_input(self, ctx)
        path = _legacy_export(self, ctx, module, opts.opset, opts.dynamic_axes, opts.do_constant_folding)
        return {**_legal(path), **finish(self, ctx, path, opset=opts.opset, writer="the legacy exporter"), "exporter": "legacy"}


@register
class OnnxFromPt2(Step):
    """Export a torch.export program (.pt2) to ONNX with the dynamo exporter; its dynamic dims carry over."""

    name = "onnx-from-pt2"
    version = 3  # 2: the written opset must be the one asked for; 3: types ONNX forbids cast (legalise.py)
    consumes = PROGRAM
    produces = "onnx"
    packages = ("torch", "onnx", "onnxscript")
    toolchain = "torch"
    description = "torch.onnx.export(dynamo=True) of an ExportedProgram."
    accepts_ops = ("onnx-dynamo", "decomposed")  # what torchlib cannot translate is decomposed first

    class Options(StepOptions):
        opset: int = _opset(DYNAMO_MAX_OPSET)
        external_data: bool = _external()

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import torch

        opts = ctx.options
        try:
            program = torch.export.load(str(ctx.input_path))
        except Exception as exc:
            raise self.fail(ctx, f"'{Path(str(ctx.input_path)).name}' is not a loadable torch.export program: "
                                 f"{type(exc).__name__}") from exc
        path = _dynamo_export(self, ctx, program, opts.opset, opts.external_data)
        return {**_legal(path), **finish(self, ctx, path, opset=opts.opset, writer="the dynamo exporter"), "exporter": "dynamo"}


@register
class OnnxFromOnnxFile(Step):
    """Take a given ONNX file as the artifact: copied, checked, and its input/output names matched to the signature."""

    name = "onnx-from-onnx-file"
    consumes = ("onnx-file",)
    produces = "onnx"
    packages = ("onnx",)
    toolchain = "onnx"
    extra = "server"
    description = "Copy of a given ONNX file, validated against the signature."

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        src = Path(str(ctx.input_path))
        if not src.is_file():
            raise self.fail(ctx, f"ONNX file '{src.name}' does not exist")
        try:
            external = uses_external_data(src)
        except Exception as exc:
            raise self.fail(ctx, f"'{src.name}' is not a readable ONNX file: {type(exc).__name__}") from exc
        if external:
            # The side file may have any name; the artifact's is always model.onnx.data.
            save(load(src), ctx.out_dir, external=True)
        else:
            shutil.copyfile(src, ctx.out_dir / ONNX.filename)
        return finish(self, ctx, ctx.out_dir / ONNX.filename, exact=True)
