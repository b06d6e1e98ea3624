"""The openvino family's formats (fp32, fp16, int8) and the IR conversion from ONNX (`openvino.convert_model`).

Also the saving helper every OpenVINO step shares (`save_ir`): volatile rt_info removed, weights
compressed to float16 or not, the IR's I/O checked against the signature.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from buildsys.formats import register_formats, register_variants
from buildsys.formats.base import Format, Step, StepContext
from buildsys.formats.openvino.ir import BIN, VOLATILE_RT_INFO, XML, telemetry_off
from buildsys.formats.prune_search import PruningOptions, PruningStep
from buildsys.formats.torch.export import PROGRAM

if TYPE_CHECKING:
    import openvino


OPENVINO = register_formats(Format.variants(
    "openvino", {
        "fp32": "OpenVINO IR (model.xml + model.bin weights), float32, run with OpenVINO's CPU plugin.",
        "fp16": "OpenVINO IR with float16-compressed weights (half the size); the CPU plugin computes in "
                "float32, GPUs and NPUs in float16.",
        "int8": "OpenVINO IR quantized to int8 by NNCF (FakeQuantize with int8 weights), calibrated on the "
                "model's own calibration set; optionally accuracy-controlled on its labelled validation set.",
    }, filename=XML, runtime="openvino"))

#: The pip extra and the packages whose versions enter the keys of the OpenVINO steps.
EXTRA = "openvino"


def save_ir(step: Step, ctx: StepContext, model: openvino.Model, fp16: bool) -> dict[str, Any]:
    """Save `model` as out_dir/model.xml + model.bin reproducibly; returns the step's metrics.

    `save_model` compresses weights to float16 unless told not to (its default is True), so the
    fp32 format passes False explicitly.
    """
    import openvino as ov

    rt_info = model.get_rt_info()
    for key in VOLATILE_RT_INFO:
        if model.has_rt_info(key):
            del rt_info[key]
    _check_io(step, ctx, model)
    _stable_names(model)
    path = ctx.out_dir / XML
    ov.save_model(model, str(path), compress_to_fp16=fp16)
    ops: dict[str, int] = {}
    for op in model.get_ordered_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
    return {"bytes": path.stat().st_size + (ctx.out_dir / BIN).stat().st_size,
            "weights_bytes": (ctx.out_dir / BIN).stat().st_size, "ops": len(model.get_ordered_ops()),
            "fake_quantize": ops.get("FakeQuantize", 0), "openvino": ov.get_version().split("-")[0]}


#: A friendly name OpenVINO made up: the op type and a process-wide instance counter ("Constant_19477").
_AUTO_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_\d+$")


def _stable_names(model: openvino.Model) -> None:
    """Rename nodes that carry an automatic name after their position in the graph.

    OpenVINO names unnamed nodes (folded constants, converts NNCF inserts) "<Type>_<n>" with a
    counter global to the process, so the same conversion in a worker that converted something
    before writes other names: the bytes would depend on build order. Inputs and outputs keep
    their names; tensor names (what the runtime feeds by) are untouched.
    """
    for index, op in enumerate(model.get_ordered_ops()):
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        match = _AUTO_NAME.match(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match.group(1)}_{index}")


def _check_io(step: Step, ctx: StepContext, model: openvino.Model) -> None:
    """The IR must take the signature's inputs and give its outputs, by name (the runtime feeds by name)."""
    want_in = [i.name for i in ctx.model.inputs]
    want_out = [o.name for o in ctx.model.outputs]
    ins = [port.get_names() for port in model.inputs]
    outs = [port.get_names() for port in model.outputs]
    # An exporter may drop an input the model never reads; every input left must be a declared one.
    if not all(names & set(want_in) for names in ins) or not all(any(w in n for n in outs) for w in want_out):
        inputs = [min(n) if n else "?" for n in ins]
        outputs = [min(n) if n else "?" for n in outs]
        raise step.fail(ctx, f"the OpenVINO model has inputs [{', '.join(inputs)}] and outputs "
                             f"[{', '.join(outputs)}] but the signature declares inputs "
                             f"[{', '.join(want_in)}] and outputs [{', '.join(want_out)}]")


@register_variants({"fp32": "onnx", "fp16": "onnx"})
class OpenVinoFromOnnx(PruningStep):
    """Convert an ONNX model to OpenVINO IR (openvino.convert_model); the fp16 variant saves the weights
    compressed to float16 (save_model(compress_to_fp16=True)), the fp32 one keeps them float32. With
    `sparsity`, the weights are pruned by magnitude first (buildsys/formats/openvino/prune.py); the IR stores
    them dense."""

    produces = "openvino"
    packages: ClassVar[tuple[str, ...]] = ("openvino",)
    extra = EXTRA
    toolchain = "openvino"
    description = "openvino.convert_model of the ONNX file, saved with float32 (fp16: float16-compressed) weights; " \
                  "with sparsity, its weight constants pruned by magnitude."
    Options = PruningOptions
    version = 2  # 2: an fp16 IR's share of weights in float16 (quantized_weights), judged by its floor
    committed_metrics = (*PruningStep.committed_metrics, "quantized_weights")
    #: The ONNX it reads was exported from a PyTorch program: what its frontend has no rule for (the ONNX sequence
    #: ops dstack's atleast_3d over a list exports to, a loss's GatherElements on constants) is gone once that
    #: program is decomposed to core ATen, which exports as plain tensor ops.
    decomposes_unnamed = True

    def _convert(self, ctx: StepContext[PruningOptions]) -> "openvino.Model":
        """The input converted to an OpenVINO model (StepError when OpenVINO cannot)."""
        import openvino as ov

        try:
            # By path: ONNX external data (model.onnx.data) next to it is found by the frontend.
            return ov.convert_model(str(Path(str(ctx.input_path))))
        except Exception as exc:
            raise self.fail(ctx, f"OpenVINO could not convert the ONNX model: {_unconverted(exc)}") from exc

    def _run(self, ctx: StepContext[PruningOptions]) -> dict[str, Any]:
        with telemetry_off():
            model = self._convert(ctx)
            fp16 = self.precision == "fp16"
            if ctx.options.sparsity is None:
                metrics = save_ir(self, ctx, model, fp16=fp16)
            else:
                from buildsys.formats.openvino.prune import deflated, prune_model

                pruned = prune_model(self, ctx, model, fp16)
                metrics = {**save_ir(self, ctx, model, fp16=fp16), **pruned,
                           "weights_deflated_bytes": deflated(ctx.out_dir / BIN)}
        if fp16:  # compress_to_fp16 leaves float32 what would overflow float16
            from buildsys.formats.openvino.weights import measure

            metrics["quantized_weights"] = measure(ctx.out_dir / XML, self.precision)
        return metrics


def _unconverted(exc: BaseException) -> str:
    """OpenVINO's conversion failure in one line: the ops it has no rule for, where its report names them ("No
    conversion rule found for operations: SequenceMap-18, ..."; the first line alone is a C++ source location)."""
    import re

    text = str(exc).strip()
    named = re.search(r"No conversion rule found for operations: ([^\n]+)", text)
    failed = re.findall(r"^-- (\S+) with a message", text, re.MULTILINE)
    first = text.splitlines()[0] if text else ""
    if named:
        return f"{type(exc).__name__}: no conversion rule for the ONNX operations {named.group(1).strip()}"
    if failed:
        return f"{type(exc).__name__}: the conversion of {', '.join(dict.fromkeys(failed))} failed"
    return f"{type(exc).__name__}: {first}"


@register_variants({"fp32": PROGRAM, "fp16": PROGRAM})
class OpenVinoFromPt2(OpenVinoFromOnnx):
    """Convert the torch.export program with OpenVINO's PyTorch frontend (`openvino.convert_model` of the
    ExportedProgram): the route beside the ONNX one, for a model whose ONNX graph OpenVINO's ONNX frontend refuses
    (a `Transpose` or `Add` its rules fail on) while the PyTorch frontend never sees that graph. Behind the ONNX
    route (`route_cost`), which stays first; what follows the conversion (pruning, saving, the fp16 share) is the
    ONNX route's code."""

    version = 1
    packages = ("openvino", "torch")  # torch loads the program
    route_cost = 1.5  # after pytorch → onnx → openvino (2 steps of 1); before longer detours
    description = ("openvino.convert_model of the torch.export program (OpenVINO's PyTorch frontend), saved with "
                   "float32 (fp16: float16-compressed) weights; with sparsity, its weight constants pruned by magnitude.")

    def _convert(self, ctx: StepContext[PruningOptions]) -> "openvino.Model":
        """The program converted, its inputs given the signature's shapes (the named axes dynamic) and its outputs
        the signature's names: the PyTorch frontend leaves every axis dynamic and names outputs after their ops."""
        import openvino as ov
        import torch

        from buildsys.lowering.reads import with_asserted_values

        try:
            program = torch.export.load(str(ctx.input_path))
        except Exception as exc:
            raise self.fail(ctx, f"'{Path(str(ctx.input_path)).name}' is not a loadable torch.export program: "
                                 f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        with_asserted_values(program.graph_module)
        try:
            model = ov.convert_model(program)
        except Exception as exc:
            raise self.fail(ctx, f"OpenVINO could not convert the torch.export program: {_unconverted(exc)}") from exc
        shapes = {port: ov.PartialShape([-1 if isinstance(d, str) else d for d in spec.shape])
                  for port, spec in zip(model.inputs, ctx.model.inputs) if spec.shape is not None}
        if shapes:
            model.reshape(shapes)
        for port, spec in zip(model.outputs, ctx.model.outputs):
            port.get_tensor().set_names({spec.name})
        return model
