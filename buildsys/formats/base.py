"""Step and Format: the contract every converter, quantizer and check implements.

A step turns the outputs of its input node into files in a scratch directory. It runs inside a
worker process, so a module that defines steps must import nothing heavy at module level: torch,
onnx, tensorflow and coremltools are imported inside `_run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Generic, Mapping, Optional, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from buildsys.formats.precision import PRECISIONS, format_name

if TYPE_CHECKING:
    from buildsys.config.schema import Model
    from buildsys.config.data import Batch
    from buildsys.errors import StepError
    from buildsys.storage.keys import HostBinding
    from buildsys.lowering import Answer, Symptom


class StepOptions(BaseModel):
    """Base of every step's options: strict, immutable, defaults filled in before keying."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Fields added after the step's keys were first written, left out of the options' JSON while unset (falsy), so
    #: the keys of nodes that do not use them stay what they were. Applied by `without_unset` (a class whose
    #: options set it has a model serializer that calls it).
    omitted_when_unset: ClassVar[tuple[str, ...]] = ()


def without_unset(options: StepOptions, data: Any) -> Any:
    """`data` (the options' JSON) without the fields of `omitted_when_unset` that are unset."""
    if isinstance(data, dict):
        for name in options.omitted_when_unset:
            if name in data and not data[name]:
                data.pop(name)
    return data


#: A node's files under this directory serve its checks and diagnostics only (ExecuTorch's lowered program,
#: which localisation re-lowers): stored and keyed with the node, but never delivered to artifacts/, counted
#: in the artifact's size, bundled or carded.
DIAGNOSTICS_DIR = "debug"


def delivered(files: list[Any]) -> list[Any]:
    """A node's file entries ([rel, digest, size, executable]) without its diagnostics."""
    return [f for f in files if not f[0].startswith(DIAGNOSTICS_DIR + "/")]


class SearchingOptions(StepOptions):
    """Options of a step with a searching option (`repair.SEARCHING`: keep_float 'sensitive', sparsity
    'auto'), which searches for what meets `repair_goal`: the target's resolved acceptance, filled in by the
    planner. Unset search options are left out of the dump, so the keys of nodes that search nothing stay
    what they were before the step could search."""

    repair_goal: Optional[dict[str, dict[str, Optional[float]]]] = Field(
        default=None, description="With a searching option (keep_float 'sensitive', sparsity 'auto'): the "
        "limits per output the search must meet (the target's resolved acceptance, filled in by the planner). "
        "Unset: the precision's defaults.")

    @model_serializer(mode="wrap")
    def _without_unset_search(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            if "keep_float" in data and not data["keep_float"]:
                data.pop("keep_float")
            if data.get("repair_goal") is None:
                data.pop("repair_goal", None)
        return without_unset(self, data)


@dataclass(frozen=True)
class Format:
    """A node format: what a step produces and how a check runs it.

    `filename` is the main file (or directory) inside the node's output tree; a step may write
    side files next to it (ONNX external data). `runtime` names the runtime that executes it in
    checks (None: not executable, e.g. a pure intermediate). `layout` says how the artifact wants
    image-like inputs: "source" keeps the model's layout, "channels_last" moves C to the end.
    """

    name: str
    filename: str
    runtime: str | None
    description: str
    #: The numeric precision of the artifact (fp32, fp16, int8): a field, never parsed from the name.
    #: Variants of one family share `family` and differ in `precision` (see `Format.variants`).
    precision: str = "fp32"
    family: str = ""  # unset: the name (a family of one)
    layout: str = "source"
    source: bool = False  # a model source (pytorch factory, a given file): never built, only hashed
    #: The runtime that serves the artifact as production would (a Triton or TorchServe server on
    #: loopback); checks use it when the acceptance asks for `serving`. None: no such software.
    serving_runtime: str | None = None
    #: The model task the format holds (config schema's `Model.task`): a text-generation model only goes
    #: to formats made for it (formats/llm/), and those take no other model; checked at plan time.
    task: str = "tensors"

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.name)
        if self.precision not in PRECISIONS:
            raise ValueError(f"format {self.name}: unknown precision {self.precision!r}")

    def given(self, what: str) -> "Format":
        """The model source that is a file of this format the project gives (`<name>-file`: never built, only
        hashed, run by the same runtime), `what` being such a file in words ("An ONNX file")."""
        return Format(name=f"{self.name}-file", filename="", runtime=self.runtime, source=True,
                      description=f"{what} given as the model source.")

    @classmethod
    def variants(cls, family: str, descriptions: dict[str, str], **common: Any) -> dict[str, "Format"]:
        """One format per precision of `family`, alike but for the precision and its description.

        `descriptions` maps each precision the family has to what that member is; the names come
        from `format_name` (`tflite`, `tflite-fp16`, `tflite-int8`). Register them with
        `register_formats`.
        """
        return {p: cls(name=format_name(family, p), family=family, precision=p, description=text, **common)
                for p, text in descriptions.items()}


O = TypeVar("O", bound=StepOptions)


@dataclass(frozen=True)
class OpTable:
    """A converter's own op registry, declared by the family that uses the converter (`register_op_table`): its
    `name` (what `Step.accepts_ops` names), the distributions whose versions key the cached table, how to read it
    (`reader`, "module:function" returning ATen op names; imported only in the op-analysis subprocess) and what
    the registry is, in words (planning.coverage, `plan --ops`). `version` enters the cached table's key: bump it
    when what `reader` returns changes for the same packages. `ranks`: ops whose kernel runs only some input ranks,
    each (op, the ranks it runs, the op a model calls at the others: `convolution` at rank 5 is `conv3d`)."""

    name: str
    packages: tuple[str, ...]
    reader: str
    description: str
    version: int = 1
    ranks: tuple[tuple[str, tuple[int, ...], str], ...] = ()

    def read(self) -> list[str]:
        import importlib

        module, _, function = self.reader.partition(":")
        return list(getattr(importlib.import_module(module), function)())


@dataclass
class StepContext(Generic[O]):
    """Everything a step may read, and the one place it may write (`out_dir`).

    `options` is the step's own `Options` model, validated at plan time: a step annotates its
    context as `StepContext[Options]` and reads typed fields.
    """

    model_name: str
    model: "Model"
    root: Path  # the deploy.yaml directory: factories import from here, data paths resolve here
    input_path: Path | None  # main file/dir of the upstream node (None for a factory source)
    out_dir: Path
    options: O
    precision: str = "fp32"  # the produced format's precision (the target's, for checks and benches)
    extra: dict[str, Any] = field(default_factory=dict)
    #: When the step's time budget runs out (time.monotonic()), None without one: a step that can end early
    #: with a result (a bounded search) plans by it rather than be stopped past it.
    deadline: float | None = None

    def data(self, which: str) -> "Batch | None":
        """Load the model's data set `which` (example/calibration/validation), or None if absent."""
        from buildsys.config import data

        return data.load_set(self.model, which, self.root)

    def example(self) -> "Batch":
        """Inputs for tracing: the example set, else validation, else seeded synthetic data."""
        from buildsys.config import data

        return data.eval_batch(self.model, self.root, prefer=("example", "validation"))


#: What coremltools' `_deps` imports only to learn whether it can convert from it, neither of which a conversion
#: from PyTorch uses: TensorFlow (its TF frontend) and ExecuTorch (its EDGE-dialect frontend). Measured here,
#: importing coremltools with its torch frontend and optimize.coreml: 8.1 s with TensorFlow blocked, 6.1 s with
#: both (docs/performance.md, "Cold build"). scikit-learn is probed too, but palettization's k-means may import it
#: when it runs: it is hidden only while coremltools is imported (`COREMLTOOLS_IMPORT_PROBES`).
COREMLTOOLS_PROBES = ("tensorflow", "executorch")
#: What coremltools' import probes for and a conversion may still import later: scikit-learn (its sklearn
#: converter; 2-4 s of the import, with SciPy and pandas).
COREMLTOOLS_IMPORT_PROBES: dict[str, tuple[str, ...]] = {"coremltools": ("sklearn",)}
#: What TensorFlow's import probes for: scikit-learn, through Keras's scikit-learn wrappers (about 2.4 s of the
#: import, with SciPy), which no TensorFlow step uses.
TENSORFLOW_IMPORT_PROBES: dict[str, tuple[str, ...]] = {"tensorflow": ("sklearn",)}


class Step:
    """One conversion from `consumes` to `produces`. Subclasses set the class attributes and `_run`."""

    name: ClassVar[str]
    consumes: ClassVar[tuple[str, ...]]
    produces: ClassVar[str]
    #: The precision of what the step produces; equal to `Format.precision` of `produces` (a test
    #: holds every step to it). One class serves several precisions through `register_variants`.
    precision: ClassVar[str] = "fp32"
    version: ClassVar[int] = 1  # bump when the output for the same inputs changes
    #: The weight of the step's edge in the format graph: routes are ordered by their total cost, so a
    #: second converter to a format can sit behind the established one (see routes.candidate_routes).
    route_cost: ClassVar[float] = 1
    #: The converter table whose registry says which ATen ops this step accepts, and which op inventory it
    #: reads ("exported": the graph as torch.export traced it; "core": after the core ATen decompositions;
    #: "traced": as torch.jit.trace records it; "decomposed": as exported, an op the table lacks counting when
    #: its decomposition is covered): candidate routes are ordered by it (buildsys/planning/coverage.py). None: not
    #: known, routes stay as they are. A step whose options choose the converter overrides `accepts`.
    accepts_ops: ClassVar[tuple[str, str] | None] = None
    #: The model's ops (as exported) this step's converter writes out op by op where another converter keeps them
    #: whole in a fused kernel (an LSTM unrolled over its sequence): routes through this step go after the routes
    #: that can keep them, before those that lack an op (planning/ordering.py; native kernels before rewrites).
    unrolls: ClassVar[tuple[str, ...]] = ()
    #: A backend's table of the ops it takes over from the runtime's kernels (XNNPACK's partitioner configs),
    #: and the inventory it reads: shown in `plan` (delegated or left to portable kernels), never an order.
    delegates_ops: ClassVar[tuple[str, str] | None] = None
    #: Other ways this step can make its format, by label: option values that give up some of what
    #: the defaults promise (a full-int8 quantizer's dynamic-range mode) but work on more models.
    #: Each becomes a route of its own, written `tflite-int8 (dynamic)`, tried after every route
    #: with default options, unless the target sets one of those options itself (see
    #: routes.candidate_routes).
    alternatives: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Accuracy-repair recipes of a quantizing step, by name, in the order tried after a route through it
    #: made an artifact that missed its check (docs/repair.md): option values, written `onnx-int8 (repair
    #: keep-float)` in the route. Never tried up front: they cost size or speed the defaults do not.
    repairs: ClassVar[dict[str, dict[str, Any]]] = {}
    #: The recipes of `repairs` that give up the quantization scheme asked for (int8 activations: dynamic,
    #: weight-only), as alternatives do: tried after the other routes that still deliver that scheme.
    scheme_repairs: ClassVar[tuple[str, ...]] = ()
    #: Converter switches, by name: option values that change how the converter lowers the model (another
    #: frontend, a lowering flag), written `saved_model (switch NAME)` in a route. Never tried blindly: the
    #: planner takes one when a refusal of this step names what it answers (planning.answers).
    switches: ClassVar[dict[str, dict[str, Any]]] = {}
    #: The QAT flows ('pt2e', 'eager') whose learned quantization this int8 step keeps as it is (buildsys.formats.torch.qat):
    #: for a model the op analysis recognised as such, its calibration data is not required at plan time.
    keeps_learned: ClassVar[tuple[str, ...]] = ()
    packages: ClassVar[tuple[str, ...]] = ()  # their installed versions enter the cache key
    extra: ClassVar[str] = "server"  # pip extra that installs `packages`
    toolchain: ClassVar[str] = "torch"  # worker group: steps of one toolchain share a worker
    #: Packages this step's worker treats as not installed, because a package it uses imports them only to
    #: probe for them (`COREMLTOOLS_PROBES`). The worker of a toolchain blocks the union of its steps'
    #: (running.worker); measured in docs/performance.md, "Cold build".
    unused_imports: ClassVar[tuple[str, ...]] = ()
    #: Packages the worker imports at its start with what they only probe for hidden: package → the names that
    #: read as not installed during its import and are importable again afterwards (`COREMLTOOLS_IMPORT_PROBES`).
    probed_imports: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Whether its worker needs a GPU (a Dask worker must declare the `gpu` resource: running.dask).
    gpu: ClassVar[bool] = False
    #: Files of modelbuild's own that the step copies into its output (a generated handler): their
    #: contents enter the key, so editing one rebuilds the artifacts that ship it.
    shipped_files: ClassVar[tuple[Path, ...]] = ()
    Options: ClassVar[type[StepOptions]] = StepOptions
    description: ClassVar[str] = ""
    #: Metrics that are facts of the output on every host (ONNX Runtime's fused ops): committed to
    #: deploy.lock beside the key, where `explain` and the report read them. A step's `caveats`
    #: (buildsys.status: a lesser path than asked) are always committed.
    committed_metrics: ClassVar[tuple[str, ...]] = ()

    #: Whether the step makes its format at fixed shapes whatever dynamic axes its input has (ExecuTorch exports at
    #: its `batch`, litert-torch at a fixed batch): a static re-export before it (`static_fallback`) loses nothing.
    fixes_shapes: ClassVar[bool] = False

    @classmethod
    def makes_static(cls, options: Mapping[str, Any] | None = None) -> bool:
        """Whether, with these options (the target's raw options for the format it makes), the step's output has
        fixed shapes whatever its input's: where a refusal's static export (`Answer.static_only`) may go."""
        return cls.fixes_shapes

    #: The refusals of this step's converter that one of its switches, a fixed-shape export or another route answers
    #: (buildsys.lowering.Symptom: patterns of the refusal's text, and the answer), best first: `answers` reads them.
    symptoms: ClassVar[tuple["Symptom", ...]] = ()
    #: The converter reads a PyTorch program: when it fails without naming an op or showing a known symptom (an
    #: assertion deep in its op translation, "Cannot add const"), the whole program decomposed to core ATen is
    #: the next route (docs/lowering.md): composite ops are where converters' translations break most.
    decomposes_unnamed: ClassVar[bool] = False
    #: Answers tried first for a refusal that names no op and shows no symptom, before the core decomposition
    #: (Core ML: its fixed-shape switch, since coremltools' translations fail on symbolic sizes in ways no message
    #: names: Longformer's "IndexError: list assignment index out of range").
    unnamed_answers: ClassVar[tuple["Answer", ...]] = ()

    @classmethod
    def answers(cls, error: str, ops: Sequence[str] = (), decomposable: Collection[str] | None = None) -> list["Answer"]:
        """What may make this step's refused conversion work, best first, read from its refusal `error` (the
        failure's text as deploy.lock keeps it): option values for this step, the stop that loads the module or an
        earlier stop, or another route (buildsys.lowering.Answer; docs/lowering.md). `ops` are the ATen ops of the
        route's traced or exported graph (a loading step's `ops` metric: for a step whose refusals name no op; the
        default does not need them), `decomposable` the ops PyTorch's tables decompose (the `decomposable` op table;
        None: not read). Torch-free: the planner calls it.

        The answers of the step's `symptoms` the refusal shows come first; then, for a refusal that names ATen ops
        PyTorch can decompose, those ops decomposed, then the whole program to core ATen; for one that names none
        and shows no symptom, the step's `unnamed_answers`, then, of a step that `decomposes_unnamed`, the whole
        program to core ATen."""
        from buildsys.lowering import DECOMPOSE_CORE, decomposition_answers, refused_ops, symptom_answers
        from buildsys.lowering.answers import STOPPED

        found = symptom_answers(error, cls.symptoms) + decomposition_answers(error, decomposable)
        if not found and not refused_ops(error) and not STOPPED.search(error):
            found = [*cls.unnamed_answers, *([DECOMPOSE_CORE] if cls.decomposes_unnamed else [])]
        return list(dict.fromkeys(found))  # an answer two readings give is tried once

    @classmethod
    def accepts(cls, options: Mapping[str, Any] | None = None) -> tuple[str, str] | None:
        """The table and inventory this step reads (`accepts_ops`) given the target's raw options for
        the format it makes; a step whose options pick another converter (the ONNX exporter) overrides it."""
        return cls.accepts_ops

    @classmethod
    def accepts_any(cls) -> set[str]:
        """Every table `accepts` may name, whatever the options (which registries `plan --ops` reads)."""
        return {cls.accepts_ops[0]} if cls.accepts_ops else set()

    @classmethod
    def data_used(cls, options: StepOptions) -> tuple[str, ...]:
        """Data sets whose contents enter the key (and must exist). Tracing steps use 'example'."""
        return ()

    @classmethod
    def files_used(cls, options: StepOptions) -> tuple[str, ...]:
        """Project files (relative to deploy.yaml) named by the options, e.g. a handler: their
        contents enter the key, so editing one rebuilds the node."""
        return ()

    @classmethod
    def check_config(cls, model: "Model", options: StepOptions, root: Path) -> str | None:
        """Plan-time validation that needs no heavy import; return a problem message or None."""
        return None

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        """The committed facts (`committed_metrics`) in words, for `explain` and the report."""
        return []

    @classmethod
    def host_requirement(cls) -> str | None:
        """Why this host cannot run the step at all (e.g. `keys.NEEDS_NVIDIA_GPU`), or None.

        Cheap (no toolchain import): `plan` asks it of every node. A node whose step (or an upstream
        node's) answers is listed as blocked with this reason and never started by `build`."""
        return None

    @classmethod
    def host_binding(cls, options: dict[str, Any], data_sets: tuple[str, ...]) -> "HostBinding":
        """How much of this host the output depends on (keys.HostBinding), from the node's options (as
        JSON, defaults filled in) and the data sets it reads. Most converters only rewrite a graph:
        the same inputs and packages give the same bytes anywhere, so their keys stay host-free and
        deploy.lock keeps agreeing across machines. A calibrating quantizer runs the float model on
        this host's kernels to choose its ranges, and those differ per architecture (AVX vs NEON) in
        the last bits: platform-bound. A step that evaluates a quantized model here to decide what
        it makes (NNCF's accuracy control) depends on the CPU's int8 kernels: CPU-class-bound."""
        from buildsys.storage.keys import HostBinding

        return HostBinding.PLATFORM if "calibration" in data_sets else HostBinding.PORTABLE

    @classmethod
    def host_components(cls, options: dict[str, Any]) -> dict[str, str]:
        """What of this host the result depends on beyond OS, CPU and packages, given the node's options
        (as JSON): a TensorRT engine names the GPU model, its compute capability and the TensorRT
        version; a service step asked to `docker build` names whether a Docker engine is reachable.
        Enters the key as the `device` component (another GPU shows as a reason to rebuild, and a
        'not run' never travels to a host that could run it); {} for portable outputs. Cheap: `plan`
        asks it. Only asked where `host_requirement` is None."""
        return {}

    def run(self, ctx: StepContext) -> dict[str, Any]:
        """Run the step and check it produced its main output; returns metrics (seconds at least)."""
        started = time.perf_counter()
        metrics = self._run(ctx) or {}
        from buildsys.formats.registry import get_format

        main = ctx.out_dir / get_format(self.produces).filename
        if not main.exists():
            from buildsys.errors import InternalError

            raise InternalError(f"step {self.name} did not write {main.name}")
        metrics.setdefault("seconds", round(time.perf_counter() - started, 3))
        return metrics

    def _run(self, ctx: StepContext) -> dict[str, Any] | None:
        raise NotImplementedError

    def fail(self, ctx: StepContext, cause: str, *, every_route: bool = False) -> "StepError":
        """The error for a failure the user can fix: one line naming the model, the cause and this step.
        `every_route`: the cause lies in what the target asks of the model, not in this route
        (errors.UnmetOnEveryRoute): no other route is tried."""
        from buildsys.errors import StepError, UnmetOnEveryRoute

        return (UnmetOnEveryRoute if every_route else StepError)(f"model '{ctx.model_name}': {cause} (step {self.name})")
