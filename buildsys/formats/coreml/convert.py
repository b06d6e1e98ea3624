"""The Core ML formats: ML Programs (.mlpackage) converted from the traced model by coremltools.

`coreml` computes in float32, `coreml-fp16` in float16 (what the GPU and Neural Engine run), and `coreml-int8`
compresses the weights (linear int8, or a 256/16-entry palette) on top of fp16 compute. Inputs and outputs keep the
signature's names. Conversion works on Linux; running the package needs macOS (formats/coreml/runtime.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from buildsys.formats import register, register_formats, register_variants
from buildsys.formats.base import COREMLTOOLS_IMPORT_PROBES, COREMLTOOLS_PROBES, Format, StepContext, StepOptions
from buildsys.formats.coreml.frontend import conversion_failure, first_line, make_reproducible, frontend_patches
from buildsys.formats.coreml.options import SPEC_VERSION, CoremlInt8Options, CoremlOptions, first_target
from buildsys.formats.coreml import recurrent_fp16
from buildsys.formats.coreml.passes import pipeline
from buildsys.formats.coreml.weights import DEFAULT_THRESHOLD, threshold_for
from buildsys.formats.keep_float import pinned, searched
from buildsys.formats.prune_search import PruningStep
from buildsys.formats.torch.torchscript import TRACED, load_input
from buildsys.lowering import Answer, Symptom

if TYPE_CHECKING:
    from buildsys.config.schema import InputSpec, Model

COREML = register_formats(Format.variants(
    "coreml", {
        "fp32": "Core ML ML Program (.mlpackage directory), float32 compute.",
        "fp16": "Core ML ML Program, float16 weights and compute (GPU / Neural Engine precision).",
        "int8": "Core ML ML Program with compressed weights (int8 linear or palettized), float16 compute.",
    }, filename="model.mlpackage", runtime="coreml"))
MLPACKAGE = COREML["fp32"].filename

#: Refusals of coremltools' symbolic (dynamic) shapes, from either frontend: a reshape whose shape holds a symbol
#: ("Cannot add const [is3, 16, 1, 79]"), an assertion on a shape (group_norm's `x.shape[0] == N`, with no message),
#: a dynamic rank-6 reshape, any refusal that prints a shape holding one of coremltools' symbols (`is750`: adaptive
#: pooling "only supported when input tensor size is known"), a translation calling int() or float() on a symbol
#: (SymPy's "Cannot convert symbols to int", "Cannot convert expression to float": RAFT's flow). Measured: a wav2vec2 encoder (both frontends, until group_norm of a dynamic batch
#: was translated: frontend_ops.py), a Swin encoder (torch.export frontend), a spatial transformer's localisation net.
STATIC_SHAPES = Symptom(
    (r"Cannot add const[^\n]*\b(?:is|s)\d+\b", r"cannot have symbolic values", r"AssertionError: *(?:\(step|$)",
     r"only supports tensors with rank <= 5", r"\((?:[^()\n]*, )?is\d+, [^()\n]*\)", r"size is known",
     r"Cannot convert symbols to int", r"Cannot convert expression to float"),
    Answer.of("coreml static shapes", {"static_shapes": True}, why="coremltools failed on a symbolic (dynamic) size; "
              "converted at fixed shapes it has none"))
#: The TorchScript frontend reading a traced size as an array (an aten::Int of a tensor: YOLO11n, a BERT encoder,
#: grid_sample models): coremltools' torch.export frontend has no such nodes.
EXPORT_FRONTEND = Symptom(
    (r"only 0-dimensional arrays can be converted to Python scalars",),
    Answer.of("coremltools torch.export frontend", via=("pt2",), why="coremltools' TorchScript frontend read a traced "
              "size as an array (aten::Int); its torch.export frontend converts the program without such nodes"))


@register_variants({"fp32": TRACED, "fp16": TRACED})
class CoremlFromTorchScript(PruningStep):
    """Convert the traced model to a Core ML ML Program computing in float32 (fp32) or float16 (fp16).

    Weights are compressed afterwards when `weight_compression` asks for it."""

    produces = "coreml"
    version = 4  # 2: outputs in torch's shape (output_shapes.py); 3: fills; 4: high_rank, broadcast_constants, zero_
    packages = ("coremltools", "torch")
    extra = "coreml"
    toolchain = "coreml"
    unused_imports = COREMLTOOLS_PROBES
    probed_imports = COREMLTOOLS_IMPORT_PROBES
    unnamed_answers = (STATIC_SHAPES.answer,)  # symbolic sizes fail in coremltools without a word that says so
    Options = CoremlOptions
    accepts_ops = ("coremltools", "exported")  # the traced graph, as coremltools' TorchScript frontend reads it
    description = "coremltools.convert(convert_to='mlprogram', compute_precision=FLOAT32 or FLOAT16)."

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "precision", None) == "fp16":  # accuracy repair of float16 compute (docs/repair.md)
            cls.repairs = {"keep-float": {"keep_float": "sensitive"}}
            cls.version += 2  # recurrent weights float16 before iOS 17 (recurrent_fp16.py); quantized_weights measured
            cls.committed_metrics = (*cls.committed_metrics, "quantized_weights")

    # What keep_float 'sensitive' kept in float32 and what `sparsity: auto` tried: facts of this output.
    committed_metrics: ClassVar[tuple[str, ...]] = ("sparsity_search", "repair")

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        return (*super().data_used(options), *searched(options))

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        from buildsys.planning.repair import describe

        return [*super().describe_facts(facts), *describe(facts.get("repair"))]

    @property
    def compute(self) -> str:
        """Core ML's compute precision: float32 for the fp32 format, float16 for the others."""
        return "float32" if self.precision == "fp32" else "float16"

    symptoms: ClassVar[tuple[Symptom, ...]] = (EXPORT_FRONTEND, STATIC_SHAPES)  # then the ops it names, decomposed
    decomposes_unnamed = True  # coremltools' op translations fail in their own words ("Cannot add const")

    @classmethod
    def makes_static(cls, options: Mapping[str, Any] | None = None) -> bool:
        return bool((options or {}).get("static_shapes"))  # else the named axes are bounded ranges

    @classmethod
    def check_config(cls, model: "Model", options: CoremlOptions, root: Path) -> str | None:  # type: ignore[override]
        opts = options
        target = opts.minimum_deployment_target
        spec = SPEC_VERSION[target]
        if opts.keep_float and cls.precision == "fp32":
            return "keep_float keeps operations in float32 out of float16 compute: coreml (fp32) computes in float32 already"
        if opts.keep_float == "sensitive" and model.data.calibration is None:
            return ("keep_float 'sensitive' needs calibration data: add data.calibration to the model "
                    "(an .npz of representative inputs)")
        need = []
        if opts.weight_compression != "none":
            need.append((7, f"weight_compression: {opts.weight_compression}"))
        if opts.sparsity is not None:
            if opts.weight_compression != "none":
                return (f"sparsity prunes float weights (weight_compression: none, formats coreml and coreml-fp16); "
                        f"with weight_compression: {opts.weight_compression} it would need coremltools' joint "
                        "compression (iOS18), which modelbuild does not make yet")
            need.append((7, "sparsity"))
            problem = cls.sparsity_problem(model, opts)
            if problem:
                return problem
        if opts.io_dtype == "float16":
            need.append((7, "io_dtype: float16"))
        if opts.compute_units == "CPU_AND_NE":
            need.append((7, "compute_units: CPU_AND_NE"))
        for minimum, what in need:
            if spec < minimum:
                return (f"{what} needs minimum_deployment_target {first_target(minimum, target)} or later "
                        f"(got {target})")
        if opts.input_type == "image":
            for inp in model.inputs:
                problem = _image_problem(inp)
                if problem:
                    return f"input_type: image needs 4-D NCHW float inputs with 1 or 3 channels: {problem}"
            channels = {inp.shape[1] for inp in model.inputs}
            if len(opts.image_bias) not in (1, *channels):
                return f"image_bias has {len(opts.image_bias)} values; give 1 or one per channel ({sorted(channels)})"
        return None

    def _run(self, ctx: StepContext[CoremlOptions]) -> dict[str, Any]:
        import coremltools as ct

        opts = ctx.options
        module = self._load(ctx)
        precision = ct.precision.FLOAT16 if self.compute == "float16" else ct.precision.FLOAT32
        repair: dict[str, Any] = {}
        if opts.keep_float == "sensitive":
            from buildsys.formats.coreml.fp16_search import search as keep_float_search

            mlmodel, repair = keep_float_search(self, ctx, module)
        elif opts.keep_float:
            kept = set(opts.keep_float)
            mlmodel = self._convert(ctx, module, ct.transform.FP16ComputePrecision(op_selector=lambda op: op.name not in kept))
            repair = {"repair": pinned(opts.keep_float, "fp16")}
        else:
            mlmodel = self._convert(ctx, module, precision)
        search: dict[str, Any] = {}
        if opts.sparsity == "auto":
            self._describe(ctx, mlmodel)
            mlmodel, search = self._prune_auto(ctx, mlmodel, module)
        else:
            mlmodel = self._compress(ctx, mlmodel)
        self._describe(ctx, mlmodel)
        path = ctx.out_dir / MLPACKAGE
        mlmodel.save(str(path))
        make_reproducible(path)
        from buildsys.formats.coreml.runtime import inspect_mlpackage

        facts = inspect_mlpackage(path)
        pruned = {"sparsity": search.get("chosen", opts.sparsity)} if opts.sparsity is not None else {}
        if search:
            pruned["sparsity_search"] = search
        if self.precision in ("int8", "fp16"):  # what it holds: compressed weights, fp16 under the threshold, fp32 kept
            from buildsys.formats.coreml.weights import measure
            from buildsys.formats.quantized_weights import kept_float

            pruned["quantized_weights"] = measure(path, self.precision, threshold_for(
                getattr(mlmodel, "_mil_program", None), opts.weight_threshold), kept_float(repair, opts))
        for fact in ("output_reshaped", "input_mutations_dropped"):  # what the route's loading changed
            if ctx.extra.get(fact):
                pruned[fact] = ctx.extra[fact]
        return {"bytes": facts["bytes"], "compute_precision": self.compute, **pruned, **repair,
                **({"static_shapes": True} if opts.static_shapes else {}),
                "weight_compression": opts.weight_compression, "spec_version": facts["spec_version"],
                "minimum_deployment_target": facts["minimum_deployment_target"],
                "compressed_weight_ops": facts["compressed_weight_ops"], "weight_dtypes": facts["weight_dtypes"]}

    def _convert(self, ctx: StepContext[CoremlOptions], module: Any, precision: Any) -> Any:
        """The ML Program of `module` at `precision` (a ct.precision, or an FP16ComputePrecision with its selector)."""
        import coremltools as ct

        opts = ctx.options
        target = dict(minimum_deployment_target=getattr(ct.target, opts.minimum_deployment_target),
                      compute_units=getattr(ct.ComputeUnit, opts.compute_units), skip_model_load=True)
        # recurrent layers' weights in float16 where they compute in float32 (recurrent_fp16.py; fp16 packages only)
        stored_fp16 = getattr(self, "precision", None) == "fp16" and opts.weight_compression == "none" \
            and not opts.sparsity and recurrent_fp16.needs_pass(opts.minimum_deployment_target)
        passes = pipeline(stored_fp16)
        try:
            with frontend_patches():
                mlmodel = ct.convert(module, convert_to="mlprogram", inputs=self._inputs(ctx),
                                     outputs=self._outputs(ctx), compute_precision=precision, pass_pipeline=passes,
                                     **target)
        except Exception as exc:
            raise self.fail(ctx, conversion_failure(exc)) from exc
        return self._torch_shaped(ctx, module, mlmodel, target)

    def _torch_shaped(self, ctx: StepContext[CoremlOptions], module: Any, mlmodel: Any, target: dict[str, Any]) -> Any:
        """`mlmodel` with each static output in the shape torch gives it, where coremltools changed its rank
        (formats/coreml/output_shapes.py); the metric `output_reshaped` names those outputs."""
        from buildsys.formats.coreml import output_shapes

        program_inputs = output_shapes.program_input_shapes(mlmodel)
        if not program_inputs or any(not isinstance(n, int) for shape in program_inputs.values() for n in shape):
            return mlmodel  # flexible inputs: the outputs' shapes are symbolic, nothing to compare
        try:
            wanted = output_shapes.torch_output_shapes(module, program_inputs, [i.name for i in ctx.model.inputs],
                                                       ctx.example().inputs)
        except Exception:  # noqa: BLE001 - the comparison is a repair; the check still compares the outputs
            return mlmodel
        fixes = output_shapes.mismatched(mlmodel, wanted or [])
        if not fixes:
            return mlmodel
        names = [ctx.model.outputs[i].name if i < len(ctx.model.outputs) else str(i) for i in fixes]
        ctx.extra["output_reshaped"] = {n: list(shape) for n, shape in zip(names, fixes.values())}
        try:
            return output_shapes.reshaped(mlmodel, fixes, **target)
        except Exception as exc:
            raise self.fail(ctx, f"the outputs {', '.join(names)} came out of coremltools in another shape than "
                                 f"torch's, and reshaping them failed: {conversion_failure(exc)}") from exc

    def _load(self, ctx: StepContext[CoremlOptions]) -> Any:
        """What coremltools converts: the traced module (the torch.export route overrides this)."""
        return load_input(self, ctx)

    def _inputs(self, ctx: StepContext[CoremlOptions]) -> list[Any]:
        import coremltools as ct
        import numpy as np

        opts = ctx.options
        sizes = ctx.example().inputs if opts.static_shapes else {}
        types = []
        for inp in ctx.model.inputs:
            if opts.static_shapes:  # the batch axis 1, the other named axes the example's size
                dims = [d if isinstance(d, int) else 1 if axis == 0 else int(sizes[inp.name].shape[axis])
                        for axis, d in enumerate(inp.shape)]
            else:
                dims = [d if isinstance(d, int) else ct.RangeDim(1, opts.dynamic_upper_bound, 1) for d in inp.shape]
            shape = ct.Shape(dims) if any(not isinstance(d, int) for d in inp.shape) else tuple(dims)
            if opts.input_type == "image":
                gray = inp.shape[1] == 1
                layout = ct.colorlayout.GRAYSCALE if gray else getattr(ct.colorlayout, opts.color_layout)
                bias: Any = opts.image_bias[0] if gray else (
                    list(opts.image_bias) if len(opts.image_bias) == 3 else [opts.image_bias[0]] * 3)
                types.append(ct.ImageType(name=inp.name, shape=shape, scale=opts.image_scale, bias=bias,
                                          color_layout=layout))
            elif inp.dtype.startswith("float"):
                types.append(ct.TensorType(name=inp.name, shape=shape, dtype=np.dtype(opts.io_dtype).type))
            else:
                # Core ML has no 64-bit integer tensors: int64 indices travel as int32.
                types.append(ct.TensorType(name=inp.name, shape=shape,
                                           dtype=np.bool_ if inp.dtype == "bool" else np.int32))
        return types

    def _outputs(self, ctx: StepContext[CoremlOptions]) -> list[Any]:
        import coremltools as ct
        import numpy as np

        opts = ctx.options
        return [ct.TensorType(name=o.name, dtype=np.dtype(opts.io_dtype).type) for o in ctx.model.outputs]

    def _compress(self, ctx: StepContext[CoremlOptions], mlmodel: Any) -> Any:
        from coremltools.optimize.coreml import (
            OpLinearQuantizerConfig,
            OpPalettizerConfig,
            OptimizationConfig,
            linear_quantize_weights,
            palettize_weights,
        )

        opts = ctx.options
        mode, threshold = opts.weight_compression, threshold_for(mlmodel._mil_program, opts.weight_threshold)
        if isinstance(opts.sparsity, float):
            return self._prune(ctx, mlmodel, opts.sparsity)
        if mode == "none":
            return mlmodel
        try:
            if mode == "int8":
                config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
                    mode="linear_symmetric", dtype="int8", weight_threshold=threshold))
                return linear_quantize_weights(mlmodel, config)
            config = OptimizationConfig(global_config=OpPalettizerConfig(
                mode="kmeans", nbits=8 if mode == "palettize8" else 4, weight_threshold=threshold))
            return palettize_weights(mlmodel, config)
        except Exception as exc:
            raise self.fail(ctx, f"weight compression '{mode}' failed: {type(exc).__name__}: "
                                 f"{first_line(exc)[:300]}") from exc

    def _prune(self, ctx: StepContext[CoremlOptions], mlmodel: Any, sparsity: float) -> Any:
        """Magnitude pruning of every weight with at least weight_threshold elements, stored sparse."""
        from coremltools.optimize.coreml import OpMagnitudePrunerConfig, OptimizationConfig, prune_weights

        config = OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=sparsity, weight_threshold=(
            DEFAULT_THRESHOLD if ctx.options.weight_threshold is None else ctx.options.weight_threshold)))
        try:
            return prune_weights(mlmodel, config)
        except Exception as exc:
            raise self.fail(ctx, f"pruning to sparsity {sparsity:g} failed: {type(exc).__name__}: "
                                 f"{first_line(exc)[:300]}") from exc

    def _prune_auto(self, ctx: StepContext[CoremlOptions], mlmodel: Any, module: Any) -> tuple[Any, dict[str, Any]]:
        """`sparsity: auto`: the dense package pruned at the highest ratio that meets the target's tolerance
        against `module` (what was converted), and the search's record (buildsys/formats/prune_search.py),
        each candidate run by the MIL reference interpreter."""
        import tempfile

        from buildsys.formats.coreml.mil_runtime import CoreMLReference
        from buildsys.formats.prune_search import search, session_outputs

        batch = ctx.data("validation")
        pruned: dict[float, Any] = {}

        def prune(ratio: float, out: Path) -> Path:
            out.mkdir(parents=True)
            pruned[ratio] = self._prune(ctx, mlmodel, ratio)
            pruned[ratio].save(str(out / MLPACKAGE))
            return out / MLPACKAGE

        def evaluate(path: Path) -> Any:
            assert batch is not None  # check_config requires it
            return session_outputs(CoreMLReference().load(path, ctx.model, ctx.root), ctx.model, batch)

        with tempfile.TemporaryDirectory(prefix="sparsity-") as tmp:
            work = Path(tmp)
            mlmodel.save(str(work / MLPACKAGE))
            chosen, record = search(self, ctx, module, prune, evaluate, work / MLPACKAGE, work)
        return pruned[chosen], record

    def _describe(self, ctx: StepContext[CoremlOptions], mlmodel: Any) -> None:
        opts = ctx.options
        meta = opts.metadata
        mlmodel.author = meta.author
        mlmodel.license = meta.license
        mlmodel.version = meta.version
        mlmodel.short_description = meta.short_description or ctx.model.description
        user = mlmodel.user_defined_metadata
        user.pop("com.github.apple.coremltools.conversion_date", None)  # a date would change every build's bytes
        user["com.modelbuild.model"] = ctx.model_name
        user["com.modelbuild.compute_units"] = opts.compute_units
        if opts.input_type == "image":  # the macOS check un-normalizes reference inputs into pixels with these
            user["com.modelbuild.image_scale"] = repr(opts.image_scale)
            user["com.modelbuild.image_bias"] = ",".join(repr(b) for b in opts.image_bias)
            user["com.modelbuild.image_color_layout"] = opts.color_layout
        if ctx.extra.get("source_digest"):
            user["com.modelbuild.source_digest"] = str(ctx.extra["source_digest"])
        for key, value in sorted(meta.user_defined.items()):
            user[key] = value
        for inp in ctx.model.inputs:
            if inp.layout:
                mlmodel.input_description[inp.name] = f"layout {inp.layout}, shape {inp.shape}"


class Int8Member(CoremlFromTorchScript):
    """What the int8 member of each Core ML route (the trace, the torch.export program) declares alike: an fp16
    ML Program whose weights are then compressed, with the share compressed as a fact. The torch.export route's
    member lists it first among its bases, so that it overrides that route's fp32/fp16 declarations."""

    produces = "coreml-int8"
    precision = "int8"
    version = 5  # 2: the share of weights compressed measured on the package (quantized_weights); 3: outputs in
    # torch's shape (output_shapes.py); 4: uniform constants as fills (uniform_constants.py); 5: convert's 4
    Options = CoremlInt8Options
    committed_metrics = ("sparsity_search", "quantized_weights")


@register
class CoremlInt8FromTorchScript(Int8Member):
    """Convert the traced model to an fp16 ML Program, then compress its weights (int8 or palettes)."""

    name = "coreml-int8-from-torchscript"
    consumes = TRACED
    description = "coremltools.convert (FLOAT16), then coremltools.optimize.coreml linear_quantize_weights " \
                  "or palettize_weights."


def _image_problem(inp: "InputSpec") -> str | None:
    if len(inp.shape) != 4:
        return f"'{inp.name}' has {len(inp.shape)} axes"
    if inp.layout not in (None, "NCHW"):
        return f"'{inp.name}' has layout {inp.layout}"
    if inp.shape[1] not in (1, 3):
        return f"'{inp.name}' has {inp.shape[1]} channels"
    if not inp.dtype.startswith("float"):
        return f"'{inp.name}' is {inp.dtype}"
    return None
