"""TFLite straight from the torch.export program with litert-torch: the default route to `tflite*`.

litert-torch (the renamed ai-edge-torch) lowers the torch.export graph to a .tflite without ONNX or
TensorFlow, so it converts models onnx2tf cannot (recurrent layers, attention, some ONNX ops such as
ReduceL2 or a dynamic Expand). The other route goes pytorch → onnx → saved_model (onnx2tf) → tflite.
This one consumes `pt2`, so `via: [pt2]` pins it.

Route cost: this is the default route to TFLite, onnx2tf the fallback. The cost of this step (1.5) puts
pytorch → pt2 → tflite (1 + 1.5) ahead of pytorch → onnx → saved_model → tflite (3), and makes
pt2 → tflite cheaper than pt2 → onnx → saved_model → tflite (3), which is what `via: [pt2]` has to pick.
Measured on the 62 public architectures of the model matrix (docs/coverage.md) with onnx2tf first:
onnx2tf converted 7 of the 53 whose route it led (plain CNNs: ResNet-18/50, MobileNetV2/V3/V4, EfficientNet-B0,
RegNetY) and failed on every transformer, detector and segmenter and on most modern CNNs (layer scales,
re-parameterised blocks, upsampling: broadcasts its channels-last inference mismatched, Resize, Expand),
20-360 s each before litert-torch, which then delivered 54 of the 55 it was tried on. `via: [onnx]` or
`routes:` still pins the onnx2tf route (its NHWC graph, its parameter-replacement switches).

Layout: litert-torch keeps the model's own layout (channels first), so the layout.json written
next to the flatbuffer records identity permutations and maps the model's input and output names
to the signature keys litert-torch chose (args_0…, output_0…): the LiteRT runtime feeds it as is.
The batch axis is fixed (the example's fixed batch, else 1); the runtime feeds one chunk per call.

Precisions: fp32; fp16 weights through litert-torch's fp16 recipe (ai-edge-quantizer, float32
I/O); int8 through PT2E: 'dynamic' (int8 weights, activations quantized per call) or 'full'
(static, calibrated on data.calibration; litert-torch then makes the inputs int8 too, which the
runtime quantizes with the tensor's scale). The accuracy repair recipes (`keep_float`, 'weight-only':
buildsys/formats/tflite/aeq.py) quantize litert-torch's float file with ai-edge-quantizer instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from buildsys.errors import StepError
from buildsys.formats import register_variants
from buildsys.formats.base import OpTable, Step, StepContext, StepOptions, without_unset
from buildsys.formats.keep_float import searched
from buildsys.formats.registry import register_op_table
from buildsys.formats.tflite.aeq import requantize, scheme, uses_aeq
from buildsys.formats.tflite.layout import LAYOUT_FILE, SIGNATURE, letters
from buildsys.formats.tflite.litert_passes import (fixed_output_ranges, fold_generated_constants, implicit_broadcasts,
                                                   shared_through_layout_ops)
from buildsys.formats.torch.pt2e import COARSE_FLOOR
from buildsys.formats.tflite.tflite import FLATBUFFER, TfliteInt8FromSavedModel, TfliteOptions, tensor_dtypes
from buildsys.lowering import DETACHED_VIEW, Answer, Symptom

if TYPE_CHECKING:
    from buildsys.config.schema import Model


_SAME_OPTIONS = "Accepted so that one target's `options:` serve both routes to TFLite (see the onnx2tf steps). "
_SELECT_TF_OPS = _SAME_OPTIONS + "No effect here: litert-torch lowers to TFLite builtins only, and fails on an op that has none."


_FOLD_CONSTANTS = ("Fold the values the model generates from nothing (torch.eye, arange, full and what it computes "
                   "from them) into stored constants before converting (litert_passes.fold_generated_constants): "
                   "litert-torch lowers some of them to StableHLO ops LiteRT's runtime has no kernel for. Set by the "
                   "route answering that refusal; off by default.")


class LiteRtTorchOptions(TfliteOptions):
    """The options of the onnx2tf route's TFLite steps, so one target's `options:` serve either route."""

    select_tf_ops: bool = Field(default=False, description=_SELECT_TF_OPS)
    fold_constants: bool = Field(default=False, description=_FOLD_CONSTANTS)

    omitted_when_unset = ("fold_constants",)  # the keys of nodes that do not fold stay what they were

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return without_unset(self, handler(self))


class LiteRtTorchInt8Options(TfliteInt8FromSavedModel.Options):
    """The int8 options of the onnx2tf route (mode, io, calibration_samples), read the same way."""

    select_tf_ops: bool = Field(default=False, description=_SELECT_TF_OPS)
    fold_constants: bool = Field(default=False, description=_FOLD_CONSTANTS)
    max_unrolled_steps: int | None = Field(
        default=None, ge=1, description="int8: the longest recurrent layer (steps) unrolled into linear layers the "
        "quantizer makes int8 (formats/torch/linear.py; unset: MAX_UNROLLED_STEPS, 128). Conversion time grows with "
        "the unrolled graph (a one-layer LSTM over 130 steps: minutes); a longer layer stays whole with float "
        "weights, which the int8 share counts, and the `recurrent` rewrite's route can still unroll it.")
    omitted_when_unset = ("fold_constants", "max_unrolled_steps")  # SearchingOptions' serializer leaves them out
    io: Literal["float", "int8"] = Field(
        default="float", description=_SAME_OPTIONS + "litert-torch decides the element type itself: 'full' "
        "comes out with int8 inputs and outputs (the LiteRT runtime quantizes feeds with the input's scale and "
        "zero point), 'dynamic' with float; the node's metrics report which (`io`). keep_float (ai-edge-quantizer) "
        "honours it.")


#: litert-torch wrote a StableHLO op the runtime has no kernel for (STABLEHLO_IOTA: `torch.eye` in XLNet's attention
#: mask): where the values are generated constants, stored they need no op at all.
RUNTIME_LACKS_STABLEHLO = Symptom(
    (r"Didn't find op for builtin opcode 'STABLEHLO_",),
    Answer.of("litert constants folded", {"fold_constants": True}, why="litert-torch wrote a StableHLO op LiteRT "
              "has no kernel for; the constants the model generates are folded before converting"))


@register_variants({"fp32": "pt2", "fp16": "pt2", "int8": "pt2"})
class TfliteFromPt2(Step):
    """Convert the torch.export program to TFLite with litert-torch (no ONNX, no TensorFlow)."""

    produces = "tflite"
    version = 4  # 2: a program already holding quantize/dequantize ops (a QAT model) is lowered as it is; 3: expands
    # that only make a broadcast explicit removed (implicit_broadcasts: MobileViTv2's linear attention was refused);
    # 4: tensors over rank 6 folded (lowering/ranks.py: XNNPACK could not prepare video Swin's window partition)
    # `fold_constants` is an option: off, the step is what it was (the option is in the key only where set)
    route_cost = 1.5  # ahead of the onnx2tf route by default, see the module docstring
    accepts_ops = ("litert-torch", "core")  # its lowering registry, after the decompositions
    unrolls = ("lstm", "gru", "rnn_tanh", "rnn_relu")  # decomposed step by step (onnx2tf's LSTM is TFLite's fused one)
    fixes_shapes = True  # converted at a fixed batch
    symptoms = (DETACHED_VIEW, RUNTIME_LACKS_STABLEHLO)  # then the decompositions of the ops it names ("Lowering
    # not found: aten.x")
    decomposes_unnamed = True
    packages = ("litert-torch", "litert-converter", "ai-edge-quantizer", "ai-edge-litert", "torch", "torchao")
    extra = "litert-torch"
    toolchain = "torch"
    description = "litert_torch.convert on the program's module: float32, fp16 weights (full_fp16_recipe), or " \
                  "int8 through PT2E (dynamic range, or static calibrated on data.calibration)."
    Options: ClassVar[type[StepOptions]] = LiteRtTorchOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "precision", "fp32") == "int8":
            cls.Options = LiteRtTorchInt8Options
            cls.alternatives = TfliteInt8FromSavedModel.alternatives
            cls.version = 10  # 2: keep_float and weight-only (ai-edge-quantizer), the `scheme` fact; QAT programs as
            # above; 3: the share of weights in int8 measured on the flatbuffer (quantized_weights); 4: integer
            # values are never annotated (formats/torch/pt2e.py: T5's position buckets failed calibration); softmax,
            # sigmoid, tanh outputs at the fixed ranges TFLite's int8 kernels require (fixed_output_ranges: YOLO's head);
            # 5: observers' scale floor at float32's epsilon, not 2^-12 (pt2e.finer_scales), 2^-12 again where
            # XNNPACK cannot prepare the file (`scale_floor`); 6: transposes, reshapes and zero pads share their input's
            # range (shared_through_layout_ops: GPT-NeoX's heads, RT-DETR's stem failed TFLite's same-scale constraint);
            # 7: expands that only make a broadcast explicit removed (implicit_broadcasts); 8: weights contracted by
            # einsum / matmul quantized as linears (formats/torch/linear.weight_contractions_as_linear), recurrent
            # layers' too (unrolled: with_recurrent_layers_unrolled); 9: embedding tables stored int8 with per-row scales
            # (formats/torch/embedding.embeddings_as_int8); 10: the fp32 step's 4
            cls.repairs = TfliteInt8FromSavedModel.repairs
            cls.scheme_repairs = TfliteInt8FromSavedModel.scheme_repairs
            cls.committed_metrics = (*TfliteInt8FromSavedModel.committed_metrics, "scale_floor")
            cls.keeps_learned = ("pt2e",)  # a converted PT2E QAT program is lowered as it is (buildsys.formats.torch.qat)
        elif getattr(cls, "precision", "fp32") == "fp16":
            cls.version += 1  # the share of weights in float16 measured on the flatbuffer (quantized_weights)
            cls.committed_metrics = (*cls.committed_metrics, "quantized_weights")

    @classmethod
    def data_used(cls, options: Any) -> tuple[str, ...]:
        full = ("calibration",) if getattr(options, "mode", "") == "full" else ()
        return tuple(dict.fromkeys(("example", *full, *searched(options))))

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        return TfliteInt8FromSavedModel.describe_facts(facts)

    @classmethod
    def check_config(cls, model: Model, options: Any, root: Path) -> str | None:
        if cls.precision == "int8":
            return TfliteInt8FromSavedModel.check_config(model, options, root)
        return None

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        import torch

        from buildsys.errors import describe
        from buildsys.formats.torch.loading import example_args, trace_batch
        from buildsys.lowering.ranks import folded_ranks
        from buildsys.lowering.reads import with_asserted_values

        try:
            import litert_torch
        except ImportError as exc:
            raise self.fail(ctx, f"litert-torch is not installed ({exc}); see the README's litert-torch "
                                 "install line") from exc
        try:
            module = torch.export.load(str(ctx.input_path)).module()
        except Exception as exc:
            raise self.fail(ctx, f"could not load the torch.export program: {describe(exc)}") from exc
        with_asserted_values(module)  # litert-torch exports it again at fixed shapes: see there
        # The program was captured from the module in eval mode, so its graph already computes eval
        # behaviour; an unlifted program refuses .eval(), and litert-torch warns on the training flag.
        for sub in module.modules():
            sub.training = False
        broadcasts = implicit_broadcasts(module)  # expands that only make a broadcast explicit: see there
        ranks = folded_ranks(module)  # XNNPACK prepares tensors of rank ≤ 6 only (lowering/ranks.py)
        folded = fold_generated_constants(module) if ctx.options.fold_constants else []
        # A fixed batch: the example's fixed size, else 1 (what a phone runs); see trace_batch.
        args = example_args(ctx.model, trace_batch(ctx.model, ctx.example(), dynamic=False))
        metrics: dict[str, Any] = {"converter": f"litert-torch {litert_torch.__version__}"}
        if broadcasts:
            metrics["implicit_broadcasts"] = len(broadcasts)
        if ranks:
            metrics["ranks_folded"] = ranks
        if folded:
            metrics["folded_constants"] = len(folded)
        path = ctx.out_dir / FLATBUFFER
        pt2e = self.precision == "int8" and not uses_aeq(ctx.options)
        for fine in (True, False) if pt2e else (True,):
            try:
                with torch.no_grad():
                    if self.precision == "int8" and not pt2e:
                        converted = litert_torch.convert(module, args)  # float: ai-edge-quantizer quantizes it below
                    elif pt2e:
                        quantized, quant = self._pt2e(ctx, module, args, metrics, fine=fine)
                        converted = litert_torch.convert(quantized, args, quant_config=quant)
                    elif self.precision == "fp16":
                        from litert_torch.generative.quantize import quant_recipes

                        converted = litert_torch.convert(module, args, quant_config=quant_recipes.full_fp16_recipe())
                        metrics["weights"] = "float16"
                    else:
                        converted = litert_torch.convert(module, args)
            except Exception as exc:
                raise self.fail(ctx, f"litert-torch could not convert the model: {describe(exc)[:400]}") from exc
            converted.export(str(path))
            flatbuffer = path.read_bytes()
            try:
                record = self._layout(ctx, flatbuffer, args)
                break
            except StepError:
                if not (pt2e and fine) or metrics.get("mode") == "qat":
                    raise
                # XNNPACK refuses a requantization that a scale at float32's epsilon implies (an output far
                # smaller than its inputs): quantize again at XNNPACK's own floor (formats/torch/pt2e.finer_scales)
                metrics["scale_floor"] = COARSE_FLOOR
        if self.precision == "int8" and uses_aeq(ctx.options):
            step = int(args[0].shape[0]) if args else 1
            keys = {i["name"]: i["key"] for i in record["inputs"]}
            batch = ctx.data("calibration") if ctx.options.mode == "full" else None
            samples = None
            if batch is not None:  # whole chunks of the fixed batch, as the PT2E calibration feeds them
                count = min(len(batch), ctx.options.calibration_samples or len(batch))
                samples = [{keys[k]: v[start:start + step] for k, v in batch.inputs.items() if k in keys}
                           for start in range(0, count - step + 1, step)]
            requantize(self, ctx, path, samples, record, metrics)
            flatbuffer = path.read_bytes()
            record = self._layout(ctx, flatbuffer, args)
        if self.precision == "int8":  # a QAT program's scales were learned, not calibrated
            from buildsys.formats.quantized_weights import kept_float
            from buildsys.formats.tflite.weights import measure

            metrics["scheme"] = scheme(ctx.options) if metrics.get("mode") != "qat" else \
                "full int8: int8 weights and activations (learned quantization parameters, not calibrated)"
            metrics["quantized_weights"] = measure(path, self.precision, kept_float(metrics, ctx.options))
        elif self.precision == "fp16":
            from buildsys.formats.tflite.weights import measure

            metrics["quantized_weights"] = measure(path, self.precision)
        (ctx.out_dir / LAYOUT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        io = sorted({i["dtype"] for i in record["inputs"]})
        return {**metrics, "bytes": len(flatbuffer), "batch": int(args[0].shape[0]) if args else 1,
                "io": "/".join(io), "tensor_dtypes": tensor_dtypes(flatbuffer)}

    def _pt2e(self, ctx: StepContext, module: Any, args: tuple[Any, ...], metrics: dict[str, Any],
              fine: bool = True) -> tuple[Any, Any]:
        """The PT2E-quantized module and the QuantConfig litert-torch needs to lower it; `fine`: scales floored at
        float32's epsilon, not litert-torch's 2^-12 (formats/torch/pt2e.finer_scales)."""
        import torch
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        from buildsys.formats.torch.loading import example_args
        from buildsys.formats.torch.qat import is_quantized_program

        opts = ctx.options
        if is_quantized_program(module):
            # A QAT model's program already holds its learned quantize/dequantize ops (float weights behind
            # them, the form litert-torch lowers): no quantizer runs, no calibration; the config only tells
            # litert-torch the program is statically quantized.
            metrics.update(mode="qat", calibration_samples=0,
                           qat="lowered with the learned quantization parameters (no calibration)")
            qat_config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
            return module, QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(qat_config))
        from buildsys.formats.torch.embedding import embeddings_as_int8
        from buildsys.formats.torch.linear import (MAX_UNROLLED_STEPS, weight_contractions_as_linear,
                                                   with_recurrent_layers_unrolled)
        from buildsys.formats.torch.pt2e import fast_range_search, finer_scales, float_values_only

        fast_range_search()  # the histogram observers' range search, the same result without torch indexing

        class FloatValuesQuantizer(PT2EQuantizer):  # integer values (position buckets, indices) stay unquantized
            # Recurrent layers reach it unrolled into linears (with_recurrent_layers_unrolled), which it quantizes,
            # or, past the unrolling bound, whole and float. Its GRU pattern annotates a fused GRU's input and state
            # only, and fails on one given no initial state (an IndexError, the one the GRU sensor model of issue 35
            # met on this route): left out.
            STATIC_OPS = [op for op in PT2EQuantizer.STATIC_OPS if op != "gru_io_only"]

            def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
                model = super().annotate(model)
                float_values_only(model)
                shared_through_layout_ops(model)
                fixed_output_ranges(model)
                return model

        dynamic = opts.mode == "dynamic"
        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
        quantizer = FloatValuesQuantizer().set_global(finer_scales(config) if fine else config)
        program, recurrent = with_recurrent_layers_unrolled(  # their weights too
            torch.export.export(module, args), max_steps=opts.max_unrolled_steps or MAX_UNROLLED_STEPS)
        float_graph = program.module()
        linears = weight_contractions_as_linear(float_graph)  # einsum / matmul weights: the quantizer's linears
        if linears:
            metrics["weights_as_linear"] = len(linears)
        kept = opts.keep_float if isinstance(opts.keep_float, (list, tuple)) else ()
        tables = embeddings_as_int8(float_graph, kept)  # no quantizer has a pattern for aten.embedding
        if tables:
            metrics["embeddings_int8"] = len(tables)
        if recurrent:
            metrics["recurrent_unrolled"] = recurrent
        prepared = prepare_pt2e(float_graph, quantizer)
        if dynamic:
            prepared(*args)  # dynamic observers record nothing that matters; one call initialises them
            metrics["mode"] = "dynamic"
        else:
            batch = ctx.data("calibration")
            if batch is None or len(batch) == 0:
                raise self.fail(ctx, "full int8 needs calibration data: add data.calibration to the model, or "
                                     "set mode: dynamic")
            step, count = int(args[0].shape[0]), len(batch)
            count = min(count, opts.calibration_samples or count)
            calls = 0
            for start in range(0, count - step + 1, step):  # the program's batch is fixed: whole chunks only
                sub = type(batch)({k: v[start:start + step] for k, v in batch.inputs.items()}, None, batch.origin)
                prepared(*example_args(ctx.model, sub))
                calls += 1
            metrics.update(mode="full", calibration_samples=calls * step)
        return convert_pt2e(prepared, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer)

    def _layout(self, ctx: StepContext, flatbuffer: bytes, args: tuple[Any, ...]) -> dict[str, Any]:
        """layout.json: the source layout kept, model names mapped to litert-torch's signature keys."""
        from ai_edge_litert.interpreter import Interpreter

        from buildsys.errors import describe

        interpreter = Interpreter(model_content=flatbuffer)
        try:
            # litert-torch can write a file LiteRT cannot prepare (seen: dynamic int8 quantizes an
            # embedding table with a non-zero zero point, which EMBEDDING_LOOKUP refuses): fail here.
            interpreter.allocate_tensors()
        except Exception as exc:
            raise self.fail(ctx, f"litert-torch wrote a model LiteRT cannot prepare: {describe(exc)[:300]}") from exc
        signatures = interpreter.get_signature_list()
        key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
        runner = interpreter.get_signature_runner(key)
        ins, outs = runner.get_input_details(), runner.get_output_details()
        model = ctx.model
        in_keys, out_keys = [f"args_{i}" for i in range(len(model.inputs))], \
            [f"output_{i}" for i in range(len(model.outputs))]
        if len(model.outputs) == 1 and "output_0" not in outs and len(outs) == 1:
            out_keys = list(outs)
        missing = [k for k in in_keys if k not in ins] + [k for k in out_keys if k not in outs]
        if missing:
            raise self.fail(ctx, f"litert-torch's signature has inputs [{', '.join(ins)}] and outputs "
                                 f"[{', '.join(outs)}], not the {len(model.inputs)} input(s) and "
                                 f"{len(model.outputs)} output(s) the model declares")
        record: dict[str, Any] = {"signature": key, "converter": "litert-torch", "kept_source_layout": True,
                                  "inputs": [], "outputs": []}
        for inp, k, arg in zip(model.inputs, in_keys, args):
            rank = len(ins[k]["shape"])
            axes = letters(inp.layout, rank)
            record["inputs"].append({"name": inp.name, "key": k, "perm": list(range(rank)),
                                     "dtype": ins[k]["dtype"].__name__, "source_layout": axes, "layout": axes,
                                     "shape": [int(d) for d in ins[k]["shape"]]})
        for out, k in zip(model.outputs, out_keys):
            rank = len(outs[k]["shape"])
            record["outputs"].append({"name": out.name, "key": k, "perm": list(range(rank)),
                                      "shape": [int(d) for d in outs[k]["shape"]]})
        return record


def lowering_ops() -> list[str]:
    """The ATen ops litert-torch converts: those it has a lowering for, and those it decomposes itself before
    lowering (its pre-convert and pre-lower tables, core ATen's decompositions: native_group_norm is one, and
    without it a wav2vec2's route here was ordered behind three onnx2tf routes that failed)."""
    from litert_torch.backend.lowerings import registry
    from litert_torch.fx_infra import decomp

    lowered = {op.__name__.split(".")[0] for op in registry.global_registry.registered_ops
               if getattr(op, "namespace", "") == "aten"}
    decomposed = {op.__name__.split(".")[0] for table in (decomp.pre_convert_decomp(), decomp.pre_lower_decomp())
                  for op in table if getattr(op, "namespace", "") == "aten"}
    return sorted(lowered | decomposed)


register_op_table(OpTable("litert-torch", ("litert-torch", "torch"), f"{__name__}:lowering_ops",
                           "litert-torch's lowering registry"))
