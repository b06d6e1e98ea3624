"""The ExecuTorch formats: a torch.export program lowered to the XNNPACK delegate and saved as a .pte.

Both members start from the .pt2 (`pt2`, or a `pt2-file` source): the program is re-exported with
fixed shapes (ExecuTorch plans every tensor's memory ahead of time, so a .pte has static shapes),
then `to_edge_transform_and_lower` hands what XNNPACK supports to its delegate and `to_executorch`
serializes the rest for the portable kernels. The int8 member first quantizes with PT2E
(quantize.py: XNNPACKQuantizer, static with observers calibrated on the model's own calibration
set, or dynamic as the fallback route), the flow ExecuTorch documents; `ExportedProgram.module()`
of the loaded .pt2 is the graph PT2E wants, so no second trace of the Python code is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence, Union

from pydantic import Field

from buildsys.errors import StepError
from buildsys.formats import register, register_formats
from buildsys.formats.base import Format, SearchingOptions, Step, StepContext, StepOptions
from buildsys.formats.executorch.contract import fill, loads
from buildsys.formats.executorch.delegation import QuantizedOutsideDelegate
from buildsys.formats.executorch.lowering import first_line as _first_line
from buildsys.formats.executorch.lowering import lower
from buildsys.formats.keep_float import searched
from buildsys.formats.torch.export import PROGRAM
from buildsys.lowering import DETACHED_VIEW

if TYPE_CHECKING:
    import torch

    from buildsys.config.schema import Model

PTE = register_formats(Format.variants("executorch", {
    "fp32": "ExecuTorch program (.pte), float32, lowered to the XNNPACK delegate (CPU on Android, iOS, Linux); "
            "fixed shapes: the batch axis is the step's `batch` (default 1).",
    "int8": "ExecuTorch program (.pte) quantized to int8 with PT2E (XNNPACKQuantizer: static, calibrated on the "
            "model's calibration set, or dynamic: int8 weights, inputs quantized per call), lowered to the "
            "XNNPACK delegate; float32 inputs and outputs.",
}, filename="model.pte", runtime="executorch"))

#: How many times the int8 step quantizes again with the layers XNNPACK left outside its delegate kept in float
#: (each time the partitioner may decline another layer whose input was int8 only because of its neighbour).
UNDELEGATED_RETRIES = 2

_NEEDS_CALIBRATION = ("ExecuTorch int8 needs calibration data: add data.calibration to the model (an .npz of "
                      "representative inputs), or build the fp32 'executorch' format instead")


class PteOptions(StepOptions):
    """Options both ExecuTorch steps share."""

    batch: int | None = Field(
        default=None, ge=1, description="The fixed batch size the program is exported with (a .pte has static "
        "shapes; the check feeds it this many samples per call). Unset: the signature's first axis where it "
        "is a number, else 1 (one sample per call, the usual on-device use).")


def fixed_batch_problem(model: Model, options: StepOptions) -> str | None:
    """A `batch` that contradicts the signature's fixed first axis, as a plan-time message."""
    batch = getattr(options, "batch", None)
    fixed = {i.shape[0] for i in model.inputs if i.shape and isinstance(i.shape[0], int)}
    if batch is not None and fixed and fixed != {batch}:
        return (f"batch {batch} contradicts the signature, whose first axis is fixed to "
                f"{', '.join(map(str, sorted(fixed)))}; remove batch or make the first axis a name like 'batch'")
    return None


def program_batch(model: Model, options: StepOptions) -> int:
    """The batch size the .pte is exported with (see PteOptions.batch)."""
    fixed = next((i.shape[0] for i in model.inputs if i.shape and isinstance(i.shape[0], int)), None)
    return getattr(options, "batch", None) or fixed or 1


class _PteFromPt2(Step):
    """Shared body: load the .pt2, fix its shapes, (quantize,) lower to XNNPACK and write model.pte."""

    consumes = PROGRAM
    packages = ("torch", "executorch", "torchao")
    version = 10  # 2: aten.lstm lowered as a scan loop (XNNPACK inside the loop body); 3: a program with an
    # operator the runtime has no kernel for is refused here, naming it (a cached one would fail to load);
    # 4: a program that already holds quantize/dequantize ops (a QAT model) is lowered without re-quantizing;
    # 5: the lowered program saved in the node's diagnostics (debug/program.pt2) for localisation; 6: aten.gru and
    # aten.rnn_* lowered as scan loops too, zero-stride constants copied to standard strides; 7: 3-D conv refused;
    # 8: a program that writes into its inputs lowered on copies of them (torch/loading.inputs_copied); 9: exported and
    # lowered without autograd (a scan loop's program no longer carries what its backward needed); 10: lowering/ranks
    extra = "executorch"
    toolchain = "torch"
    Options = PteOptions
    accepts_ops = ("executorch", "core")  # the edge dialect: core ATen, run by the runtime's kernels
    fixes_shapes = True  # re-exported at the program's batch: a .pte has static shapes
    symptoms = (DETACHED_VIEW,)  # then the decompositions of the ops it names (a kernel the runtime lacks)
    delegates_ops = ("xnnpack", "core")  # what XNNPACK's partitioner has a config for; the rest runs portable
    decomposes_unnamed = True  # XNNPACK's passes fail without naming the op ("ChannelsLastTaggedReshapePass")

    @classmethod
    def check_config(cls, model: Model, options: StepOptions, root: Path) -> str | None:
        return fixed_batch_problem(model, options)

    def _prepare(self, ctx: StepContext, module: torch.nn.Module, args: tuple[Any, ...],
                 undelegated: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
        """Hook of the precision: the module to lower (the int8 step quantizes it, leaving the `undelegated`
        nodes in float: those whose quantized form XNNPACK would not take) and its metrics."""
        return module, {}

    def _coarser_scales_needed(self, buffer: bytes, metrics: dict[str, Any]) -> bool:
        """Hook of the precision: whether the program must be quantized again at XNNPACK's own scale floor."""
        return False

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        import torch

        from buildsys.formats.executorch.contract import executorch_unavailable

        reason = executorch_unavailable()
        if reason:
            raise self.fail(ctx, reason)
        from buildsys.config.data import Batch
        from buildsys.formats.torch.loading import example_args
        from buildsys.lowering.ranks import folded_ranks
        from buildsys.lowering.reads import with_asserted_values

        batch = program_batch(ctx.model, ctx.options)
        args = example_args(ctx.model, Batch(fill(ctx.example().inputs, batch), None, "example"))
        try:
            module = torch.export.load(str(ctx.input_path)).module()
        except Exception as exc:
            raise self.fail(ctx, f"'{Path(str(ctx.input_path)).name}' is not a loadable torch.export program: "
                                 f"{_first_line(exc)}") from exc
        with_asserted_values(module)  # exported again below at fixed shapes: see there
        folded = folded_ranks(module)  # XNNPACK holds tensors of rank ≤ 6 only: a window partition's 8 fails to load
        from buildsys.formats.executorch.recurrent import recurrent_to_scan

        source = module
        undelegated: list[str] = []  # layers kept in float because XNNPACK would not take them in int8
        retries = 0
        while True:
            module, metrics = self._prepare(ctx, source, args, undelegated)
            # After PT2E: the quantizer leaves aten.lstm / gru in float, as before; the loop keeps lowering linear in T.
            loops = recurrent_to_scan(module)
            if loops:
                metrics = {**metrics, "recurrent_as_scan": loops}
            try:
                buffer, structure = self._lower(ctx, module, args)
            except QuantizedOutsideDelegate as exc:
                more = [n for n in exc.consumers(module) if n not in undelegated]
                if not more or retries == UNDELEGATED_RETRIES or metrics.get("scheme") == "qat":
                    raise self.fail(ctx, f"{exc}; the ExecuTorch runtime has no kernels for them outside it"
                                         + ("" if more else " (and they feed no layer that could be kept in float)"))
                undelegated += more  # quantized again with those consumers in float
                retries += 1
                continue
            if not self._coarser_scales_needed(buffer, metrics):
                break
        if undelegated:
            metrics = {**metrics, "kept_float_undelegated": undelegated}
        path = ctx.out_dir / PTE[self.precision].filename
        path.write_bytes(buffer)
        ranks = {"ranks_folded": folded} if folded else {}
        return {"bytes": len(buffer), "batch": batch, **structure, **metrics, **ranks}

    @staticmethod
    def _save_program(ctx: StepContext, program: Any) -> None:
        """The program about to be lowered (quantized already for int8), saved as debug/program.pt2 in the node
        (stored with it, never delivered with the .pte): localisation re-lowers it one op per delegate call,
        since the .pte's own XNNPACK calls are opaque (formats/executorch/intermediates.py). A program torch.export cannot save (a control-flow loop) is
        skipped: its localisation then says why it is not available."""
        import torch

        from buildsys.formats.executorch.intermediates import PROGRAM

        # `from_node` provenance holds graph ids (id() of a graph: differs per run); the .pte does not keep it,
        # the lowering may read it, so it is left out of the saved file only.
        graphs = [m.graph for m in program.graph_module.modules() if isinstance(getattr(m, "graph", None), torch.fx.Graph)]
        held = [(node, node.meta.pop("from_node")) for graph in graphs for node in graph.nodes if "from_node" in node.meta]
        try:
            (ctx.out_dir / PROGRAM).parent.mkdir(exist_ok=True)
            torch.export.save(program, str(ctx.out_dir / PROGRAM))
        except Exception:
            (ctx.out_dir / PROGRAM).unlink(missing_ok=True)
        finally:
            for node, provenance in held:
                node.meta["from_node"] = provenance

    def _lower(self, ctx: StepContext, module: Any, args: tuple[Any, ...]) -> tuple[bytes, dict[str, Any]]:
        """torch.export with fixed shapes → XNNPACK partition → ExecuTorch program bytes (reproducible)."""
        import torch

        with torch.no_grad():  # an inference program: see `lower`
            return self._lowered(ctx, module, args)

    def _lowered(self, ctx: StepContext, module: Any, args: tuple[Any, ...]) -> tuple[bytes, dict[str, Any]]:
        import torch

        from buildsys.formats.reproducible import exported_program_without_stack_traces
        from buildsys.formats.torch.loading import inputs_copied

        try:  # a program that writes into its inputs (a given .pt2) would return the write-backs as outputs
            program = torch.export.export(inputs_copied(module, args), args, strict=False)
        except Exception as exc:
            raise self.fail(ctx, f"torch.export with fixed shapes {[tuple(a.shape) for a in args]} failed: "
                                 f"{_first_line(exc)}") from exc
        exported_program_without_stack_traces(program)  # build-host paths must not reach the .pte
        self._save_program(ctx, program)
        return lower(self, ctx, program)


@register
class ExecutorchFromPt2(_PteFromPt2):
    """Lower the float32 program to XNNPACK and save it as an ExecuTorch .pte."""

    name = "executorch-from-pt2"
    produces = "executorch"
    precision = "fp32"
    description = ("torch.export with fixed shapes, to_edge_transform_and_lower with XnnpackPartitioner, "
                   "to_executorch.")


class Int8Options(PteOptions, SearchingOptions):
    scheme: Literal["static", "dynamic"] = Field(
        default="static", description="'static': int8 weights and activations, activation ranges calibrated on "
        "data.calibration (the fastest program; what XNNPACK's int8 kernels are built for). 'dynamic': int8 "
        "weights of linear layers (recurrent cells' included) and of convolutions XNNPACK can run dynamically "
        "(not depthwise, not 1-D), their inputs quantized per call from the values seen then; everything "
        "else stays float32 (no calibration; recurrent state and embedding lookups stay float: the usual "
        "scheme for transformers and RNNs).")
    per_channel: bool = Field(
        default=True, description="One weight scale per output channel of each convolution and linear layer "
        "(XNNPACK's recommended setting; better accuracy) instead of one per tensor.")
    calibration_samples: int | None = Field(
        default=None, ge=1, description="static only: calibrate on at most this many samples of data.calibration "
        "(all when unset).")
    keep_float: Union[Literal["sensitive"], tuple[str, ...]] = Field(
        default=(), description="Nodes left in float (their quantization annotations dropped): a torch.export "
        "node name (`linear_5`, as the repair record lists them) or a module path (`head`: all its nodes). "
        "'sensitive': measure each quantized node's cost on the calibration set and keep the fewest most "
        "sensitive ones in float that meet the target's tolerance (docs/repair.md); bounded, recorded in "
        "deploy.lock. Usually set by accuracy repair, not by hand; a list pins the nodes.")
    max_unrolled_cells: int | None = Field(
        default=None, ge=1, description="The most recurrent cells (steps x layers x directions) unrolled into "
        "linears PT2E makes int8 (unset: quantize.MAX_UNROLLED_CELLS, 128; lowering time grows with them): past "
        "it the layers stay whole with float weights, which the int8 share counts.")
    omitted_when_unset = ("max_unrolled_cells",)  # the keys of nodes that leave it unset stay what they were


@register
class ExecutorchInt8FromPt2(_PteFromPt2):
    """Quantize the program to int8 with PT2E and XNNPACKQuantizer, then lower it to XNNPACK."""

    name = "executorch-int8-from-pt2"
    produces = "executorch-int8"
    precision = "int8"
    Options = Int8Options
    version = 16  # 4: keep_float (accuracy repair keep-float: nodes left unquantized); a QAT program lowered as is;
    # 5: debug/program.pt2 in the node (localisation); 6: the share of weights in int8 measured on the program;
    # 7: layers whose quantized form XNNPACK leaves outside its delegate kept in float (QuantizedOutsideDelegate),
    # integer values never annotated (formats/torch/pt2e.py); 8: GRU / RNN layers as scan loops; 9: 3-D conv
    # refused; 10: observers' scale floor at float32's epsilon, not 2^-12 (pt2e.finer_scales); 11: no input write-back;
    # 12: weights contracted by einsum / matmul quantized as linears (torch/linear.weight_contractions_as_linear);
    # 13: exported and lowered without autograd (the fp32 step's 9); recurrent layers unrolled into linears before
    # PT2E, up to 128 cells in all (quantize.recurrent_weights_as_linears), the others' weights counted in the share;
    # 14: a dynamic program's int8 layers delegated one by one first (lowering.partitioners), and its convolutions
    # read by a ReLU quantized (quantize.dynamic_convs_before_relu); 15: embedding tables stored int8 with per-row
    # scales (torch/embedding.embeddings_as_int8); 16: the fp32 step's 10
    #: Static int8 first; dynamic (linear and convolution weights): the fallback route where activations fail int8
    #: (indices, state) or miss the tolerance.
    alternatives = {"dynamic": {"scheme": "dynamic"}}
    #: Accuracy repair (docs/repair.md): tried after the static route's int8 check misses, before `dynamic`.
    repairs = {"keep-float": {"keep_float": "sensitive"}}
    #: The keep-float search's record, once run in this step (kept when the program is quantized again).
    searched: dict[str, Any] | None = None
    #: Scales floored at float32's epsilon (pt2e.finer_scales), until XNNPACK refuses to load the program.
    fine_scales = True
    committed_metrics = ("repair", "scheme", "quantized_weights", "scale_floor")  # scheme: its activations' (static, dynamic)
    keeps_learned = ("pt2e",)  # a converted PT2E QAT program is lowered as it is (buildsys.formats.torch.qat)
    description = ("PT2E: prepare_pt2e with XNNPACKQuantizer (symmetric int8; static: observers run on "
                   "data.calibration; dynamic: linear and convolution weights, inputs quantized per call), "
                   "convert_pt2e, then lowered like executorch. Fails when nothing was quantized.")

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        static = ("calibration",) if getattr(options, "scheme", "static") == "static" else ()
        return tuple(dict.fromkeys(static + searched(options)))

    @classmethod
    def check_config(cls, model: Model, options: StepOptions, root: Path) -> str | None:
        if getattr(options, "keep_float", ()) == "sensitive" and model.data.calibration is None:
            return ("keep_float 'sensitive' needs calibration data: add data.calibration to the model "
                    "(an .npz of representative inputs)")
        if getattr(options, "scheme", "static") == "static" and model.data.calibration is None:
            return _NEEDS_CALIBRATION
        return fixed_batch_problem(model, options)

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.planning.repair import describe

        return describe(facts.get("repair"))

    def _prepare(self, ctx: StepContext[Int8Options], module: torch.nn.Module, args: tuple[Any, ...],
                 undelegated: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        from buildsys.formats.executorch.quantize import (calibrate, float_filter, int8_weights, quantizer,
                                                          has_recurrent_layers, recurrent_weights_as_linears,
                                                          unknown_nodes)
        from buildsys.formats.executorch.sensitivity import NoRecipe, search
        from buildsys.formats.torch.pt2e import COARSE_FLOOR
        from buildsys.formats.executorch.weights import measure
        from buildsys.formats.keep_float import pinned

        from buildsys.formats.torch.embedding import embeddings_as_int8
        from buildsys.formats.torch.linear import weight_contractions_as_linear
        from buildsys.formats.torch.qat import fold_weights, is_quantized_program

        opts = ctx.options
        if is_quantized_program(module):
            # A QAT model (or any program PT2E already converted) carries its learned scales: quantizing it
            # again would re-calibrate what training learned. Its weights are folded to int8 and it is lowered.
            try:
                converted = fold_weights(module)
            except Exception as exc:
                raise self.fail(ctx, f"folding the QAT program's weights to int8 failed: {_first_line(exc)}") from exc
            int8, total = int8_weights(converted)
            return converted, {"scheme": "qat", "calibration_samples": 0, "per_channel": opts.per_channel,
                               "int8_weights": round(int8 / total, 4) if total else 0.0,
                               "quantized_weights": measure(converted, self.precision),
                               "qat": "lowered with the learned quantization parameters (no calibration)"}
        dynamic = opts.scheme == "dynamic"
        calibration = None if dynamic else ctx.data("calibration")
        coarse = {} if self.fine_scales else {"scale_floor": COARSE_FLOOR}  # the runtime refused the finer scales
        if calibration is None and not dynamic:
            raise self.fail(ctx, _NEEDS_CALIBRATION)
        repair: dict[str, Any] | None = None
        if opts.keep_float == "sensitive" and undelegated and self.searched:
            repair = self.searched  # quantized again for XNNPACK's sake: the search's answer stands
        elif opts.keep_float == "sensitive":
            try:
                repair = self.searched = search(self, ctx, module, opts.per_channel, dynamic, len(args[0]))
            except NoRecipe as exc:
                raise self.fail(ctx, f"keep_float 'sensitive': {exc}") from exc
            except StepError:
                raise
            except Exception as exc:
                raise self.fail(ctx, f"keep_float 'sensitive': the search failed: {_first_line(exc)}") from exc
        elif opts.keep_float:
            repair = pinned(opts.keep_float, "int8")
        kept = [*(repair["kept_float"] if repair else []), *undelegated]
        try:
            # PT2E annotates the ATen graph of a fixed-shape export (the shapes the .pte will have).
            program, unrolled = recurrent_weights_as_linears(torch.export.export(module, args, strict=False), dynamic,
                                                            opts.max_unrolled_cells)
            # past MAX_UNROLLED_CELLS: the `recurrent` rewrite would unroll them all the same, past any budget
            declined = ["recurrent"] if has_recurrent_layers(program) else []
            unknown = unknown_nodes(program.graph_module, [k for k in kept if k not in undelegated])
            if unknown:  # a name that keeps nothing in float would deliver full int8 under the name of a repair
                raise self.fail(ctx, f"keep_float names {', '.join(map(repr, unknown))}, which is neither a node "
                                     "nor a module of the exported program (see `modelbuild explain` of a node "
                                     "whose repair searched, or use module paths like 'head')")
            float_graph = program.module()
            linears = weight_contractions_as_linear(float_graph)  # einsum / matmul weights: the quantizer's linears
            tables = embeddings_as_int8(float_graph, kept)  # no quantizer has a pattern for aten.embedding
            prepared = prepare_pt2e(float_graph, quantizer(per_channel=opts.per_channel, dynamic=dynamic,
                                                                float_nodes=float_filter(kept) if kept else None,
                                                                fine=self.fine_scales))
            if calibration is not None:
                samples = calibrate(ctx, prepared, calibration, len(args[0]), opts.calibration_samples)
            else:
                with torch.no_grad():
                    prepared(*args)  # dynamic: one call records the weights' observers; no activation ranges
                samples = 0
            converted = convert_pt2e(prepared)
        except StepError:
            raise
        except Exception as exc:
            raise self.fail(ctx, f"PT2E int8 quantization ({opts.scheme}) failed: {_first_line(exc)}") from exc
        int8, total = int8_weights(converted)
        if not int8:  # an "int8" program that is float32 throughout would pass any check: it is not int8
            raise self.fail(ctx, f"PT2E int8 quantization ({opts.scheme}) quantized none of the model's weights "
                                 f"({total:,} stay float): XNNPACKQuantizer's {opts.scheme} scheme has no pattern "
                                 "for its layers")
        facts = {"scheme": opts.scheme, "calibration_samples": samples, "per_channel": opts.per_channel,
                 "int8_weights": round(int8 / total, 4), **({"repair": repair} if repair else {}), **coarse,
                 **({"weights_as_linear": len(linears)} if linears else {}),
                 **({"embeddings_int8": len(tables)} if tables else {}),
                 **({"recurrent_unrolled": unrolled} if unrolled else {}),
                 **({"declined_rewrites": declined} if declined else {})}
        return converted, {**facts, "quantized_weights": measure(converted, self.precision, kept)}


    def _coarser_scales_needed(self, buffer: bytes, metrics: dict[str, Any]) -> bool:
        """XNNPACK refuses a requantization that a scale at float32's epsilon can imply (an output far smaller than
        its inputs) when the runtime loads the program: then it is quantized again at XNNPACK's own 2^-12."""
        if self.fine_scales and metrics.get("scheme") != "qat" and not loads(buffer):
            self.fine_scales = False
            return True
        return False
