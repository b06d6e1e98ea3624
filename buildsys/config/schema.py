"""The deploy.yaml schema: strict pydantic models whose field descriptions double as the docs.

Step options are not listed here: each step owns a frozen options model (see buildsys.formats.base),
and a target's `options:` mapping is validated against the models of the steps on its route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from buildsys.config.units import MB_UNITS, MS_UNITS, S_UNITS, budget
from buildsys.config.generation import TextGeneration, fill_signature
from buildsys.config.sources import SOURCE_KINDS, Source  # noqa: F401  (SOURCE_KINDS: re-exported)
from buildsys.formats.precision import Precision, format_name

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DType = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


#: The repair recipes of every quantizing step (`Step.repairs`; a test keeps the two in step): the names a
#: target's `repair:` list may use (docs/repair.md).
REPAIR_RECIPES = ("keep-float", "per-channel", "entropy", "transformer", "8-bit-weights", "mixed", "dynamic",
                  "weight-only")

class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(Strict):
    """One model input: the signature every artifact must keep."""

    name: str = Field(description="Input name; artifacts (ONNX, TFLite, Core ML) use it for their inputs.")
    shape: list[int | str] = Field(
        description="Dimensions. An integer is fixed; a string names a dynamic axis (e.g. 'batch'), "
        "exported as dynamic where the format supports it and set to 1 (or the data's size) when tracing.",
        min_length=1,
    )
    dtype: DType = Field(default="float32", description="Element type.")
    layout: Optional[str] = Field(
        default=None,
        description="Axis letters such as NCHW or NCL. Converters that change layout (onnx2tf) record "
        "what they made; checks feed inputs in the artifact's own layout.",
    )

    @model_validator(mode="after")
    def _layout_matches_rank(self) -> "InputSpec":
        if self.layout is not None and len(self.layout) != len(self.shape):
            raise ValueError(f"layout '{self.layout}' has {len(self.layout)} axes but shape has {len(self.shape)}")
        return self


class OutputSpec(Strict):
    """One model output."""

    name: str = Field(description="Output name.")
    kind: Literal["scores", "values", "tokens"] = Field(
        default="values",
        description="'scores' for class scores (logits or probabilities) along the last axis: checks add "
        "top-1 agreement, and accuracy when the data has labels. 'tokens' for generated token ids per sample "
        "(text-generation models): checks add token agreement and the first divergence. 'values' for everything else.",
    )


class DataSource(Strict):
    """A data set: an .npz (arrays named after the inputs, plus labels) / .npy file, or a callable."""

    path: Optional[str] = Field(default=None, description="An .npz or .npy file, relative to deploy.yaml.")
    callable: Optional[str] = Field(
        default=None, description="'module:function' returning a dict of arrays named after the inputs."
    )
    labels: str = Field(default="labels", description="Name of the array holding integer class labels, if any.")
    limit: Optional[int] = Field(default=None, ge=1, description="Use only the first N samples.")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"callable": value} if ":" in value and not value.endswith((".npz", ".npy")) else {"path": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "DataSource":
        if (self.path is None) == (self.callable is None):
            raise ValueError("give exactly one of 'path' or 'callable'")
        return self


class DataSets(Strict):
    """The data a model comes with. Without any, checks use seeded synthetic inputs."""

    example: Optional[DataSource] = Field(default=None, description="Inputs used to trace/export the model.")
    calibration: Optional[DataSource] = Field(
        default=None, description="Representative inputs for static int8 quantization. Never downloaded."
    )
    validation: Optional[DataSource] = Field(
        default=None, description="Inputs (and optional labels) every artifact is verified on."
    )


class Model(Strict):
    """A PyTorch model, its signature and its data."""

    description: str = Field(default="", description="Free text; not part of any cache key.")
    task: Literal["tensors", "text-generation"] = Field(
        default="tensors", description="'tensors': a module called once per sample, judged output by output. "
        "'text-generation': a causal LM (a transformers directory, or a factory returning a Hugging Face `*ForCausalLM`), exported with a static "
        "KV cache and judged by generation (docs/llm.md); its signature is fixed, so inputs and outputs are omitted.")
    generation: Optional[TextGeneration] = Field(
        default=None, description="Text-generation settings (cache sizes, prompts, held text, tokenizer); required "
        "with task: text-generation, refused otherwise.")
    source: Source = Field(description="Where the model comes from.")
    inputs: list[InputSpec] = Field(min_length=1, description="Input signature, in call order.")
    outputs: list[OutputSpec] = Field(min_length=1, description="Output signature, in return order.")
    data: DataSets = Field(default_factory=DataSets, description="Example, calibration and validation data.")
    seed: int = Field(default=0, description="Seed for synthetic inputs when the model has no data.")
    samples: int = Field(default=16, ge=1, description="Number of synthetic samples when there is no data.")

    @model_validator(mode="before")
    @classmethod
    def _fixed_signature(cls, data: Any) -> Any:
        return fill_signature(data)

    @model_validator(mode="after")
    def _generation_matches_task(self) -> "Model":
        if (self.task == "text-generation") != (self.generation is not None):
            raise ValueError("task: text-generation needs a 'generation' section" if self.generation is None
                             else "'generation' applies only to task: text-generation")
        if self.task == "text-generation" and not (self.source.factory or self.source.transformers):
            raise ValueError("a text-generation model's source is a transformers directory or a factory returning a "
                             "Hugging Face causal LM")
        if self.source.transformers and self.task != "text-generation":
            raise ValueError("source.transformers loads a causal LM: it needs task: text-generation (for another "
                             "model, give a factory that builds it)")
        return self

    @field_validator("inputs", "outputs")
    @classmethod
    def _unique_names(cls, specs: list[Any], info: ValidationInfo) -> list[Any]:
        # Runtimes feed and read tensors by name: a repeated name would silently feed one tensor twice.
        seen: dict[str, int] = {}
        assert info.field_name is not None  # a field validator's info names its field
        for i, spec in enumerate(specs):
            if spec.name in seen:
                raise ValueError(f"{info.field_name}[{i}] is named '{spec.name}' like {info.field_name}[{seen[spec.name]}]"
                                 f"; each {info.field_name[:-1]} needs its own name")
            seen[spec.name] = i
        return specs


class Tolerance(Strict):
    """Acceptance limits for outputs. Unset fields take the precision's defaults."""

    max_abs: Optional[float] = Field(default=None, ge=0, description="Largest allowed |artifact - reference|.")
    max_rel: Optional[float] = Field(
        default=None, ge=0, description="Largest allowed |artifact - reference| / max|reference| (per output)."
    )
    max_range_error: Optional[float] = Field(
        default=None, ge=0, description="'values' outputs: largest allowed RMS error of one sample as a share of the "
        "output's range over the batch (max - min of the reference). int8 default 0.1 where no max_abs/max_rel "
        "is set: catches a shifted output that the cosine does not see.")
    min_cosine: Optional[float] = Field(default=None, ge=-1, le=1, description="Smallest allowed cosine similarity per sample.")
    min_top1_agreement: Optional[float] = Field(
        default=None, ge=0, le=1, description="'scores' outputs: share of samples whose argmax matches the reference."
    )
    max_accuracy_drop: Optional[float] = Field(
        default=None, ge=0, le=1, description="'scores' outputs with labels: allowed drop of accuracy vs the reference."
    )
    min_token_agreement: Optional[float] = Field(
        default=None, ge=0, le=1, description="'tokens' outputs: smallest allowed share of generated tokens that match "
        "the reference before the first divergence, averaged over prompts (1: every greedy token agrees).")


class Acceptance(Tolerance):
    """What an artifact must meet to pass its check."""

    max_size_mb: Annotated[Optional[float], budget("MB", MB_UNITS)] = Field(
        default=None, gt=0, description="Largest allowed artifact size in MB (10^6 bytes, all files); '40 MB', "
        "'512 KiB' are accepted too.")
    p50_ms: Annotated[Optional[float], budget("ms", MS_UNITS)] = Field(
        default=None, gt=0, description="Largest allowed median latency in ms on this host's runtime (measured by a "
        "bench node at `bench_batch`); '2 s' is accepted too.")
    p95_ms: Annotated[Optional[float], budget("ms", MS_UNITS)] = Field(
        default=None, gt=0, description="Largest allowed 95th-percentile latency in ms.")
    bench_batch: int = Field(default=1, ge=1, description="Batch size the latency budgets are measured at.")
    min_quantized_share: Optional[float] = Field(
        default=None, ge=0, le=1, description="int8 / int4 / fp16 targets: the smallest share of all the model's "
        "weights (by element count, each tensor once) the artifact must hold in the asked precision or narrower, "
        "measured on the artifact (docs/quantization.md#what-was-asked-is-what-ships). Every weight counts: "
        "embeddings, the layers kept float on purpose (keep_float, accuracy repair) and those under a quantizer's "
        "size threshold. Unset: the precision's floor (int8 0.75, int4 0.5, fp16 0.75); a lower value accepts an "
        "artifact that keeps more float, and the summary shows the share it holds; 0 turns the check off. "
        "fp32 targets have no floor.")

    outputs: dict[str, Tolerance] = Field(default_factory=dict, description="Per-output overrides, by output name.")
    on_fail: Literal["error", "warn"] = Field(default="error", description="'warn' reports a miss without failing the build.")
    require_numeric: bool = Field(
        default=False, description="Fail the check when the artifact's runtime cannot run on this host (Core ML off "
        "macOS), instead of reporting 'not run'. Use it on release targets.")
    accept_stand_in: bool = Field(
        default=False, description="Count a stand-in's numbers as a full numeric check under require_numeric / "
        "--strict. Where an artifact's runtime cannot run on this host but its format has a stand-in (Core ML off "
        "macOS: the MIL reference interpreter, docs/coreml-reference.md), the check runs the stand-in and says so "
        "('passed; MIL reference, not Apple's runtime'); without this, require_numeric fails such a check, since "
        "the device's compiler and kernels were not exercised.")
    serving: bool = Field(
        default=False, description="Also run the artifact in its real serving software (a Triton Inference Server, "
        "a TorchServe server) started on loopback, or for TorchScript a C++ program linked against LibTorch "
        "(compiled once per toolchain), and compare its answers with the reference. Slower; where the "
        "server cannot start (or no C++ compiler is found) the serving check is reported as 'not run' and why. "
        "`modelbuild build --serving` turns it on for every target.")


class StepLimits(Strict):
    """How long and how much memory each step of a target may take (docs/performance.md, "Step budgets")."""

    time: Annotated[Optional[float], budget("s", S_UNITS)] = Field(
        default=None, gt=0, description="Wall time each step of this target may take, in seconds ('20 min', '1 h' "
        "are accepted too); past it the step is stopped and the next route is tried. Unset: 5 min plus 10 min per "
        "GB of the model's weights (or build --timeout).")
    memory: Annotated[Optional[float], budget("MB", MB_UNITS)] = Field(
        default=None, gt=0, description="Resident memory each step's worker (with its children) may take, in MB "
        "('8 GB' is accepted too); past it the step is stopped and the next route is tried. Unset: "
        "$MODELBUILD_STEP_MEMORY, default half of the host's memory.")


class Target(Strict):
    """A deliverable: one model in one format and precision, verified against its reference."""

    description: str = Field(default="", description="Free text; not part of any cache key.")
    model: str = Field(description="Name of a model under 'models'.")
    format: str = Field(description="Artifact format, e.g. torchscript, pt2, onnx, onnx-optimized.")
    precision: Precision = Field(default="fp32", description="Numeric precision of the artifact.")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Step options keyed by the format they produce (see `modelbuild schema --steps`)."
    )
    via: list[str] = Field(default_factory=list, description="Formats the route must pass through, in order. "
                           "Pins the route: no other is tried when it fails.")
    routes: list[list[str]] = Field(
        default_factory=list, description="The routes to try, in order, each given as its `via` stops (e.g. "
        "[[pt2], [onnx, saved_model]]): the first whose artifact passes the check wins. Unset: every route "
        "of the format graph, fewest steps first (at most 4). Cannot be combined with `via`.")
    prefer: Optional[Literal["latency", "size", "accuracy"]] = Field(
        default=None, description="Which passing route ships when several can (README, Routes with fallback). Unset: the "
        "first route that passes, in the order tried (the cheapest build; the route order already puts native "
        "converters first). latency: the fastest on this host (the check's quick latency, minimum over its runs); "
        "size: the smallest deliverable; accuracy: the highest accuracy on the validation set (else top-1 "
        "agreement, else cosine). The build also builds and checks up to two more of the target's plain routes "
        "(no fallback scheme, no repair), within a time bound, ships the best, and records the comparison in "
        "deploy.lock: later builds take the chosen route without measuring again until its check's key changes. "
        "A rival replaces the first route only when it is better by more than the noise (5 % latency, 1 % size, "
        "0.1 % accuracy). Cannot be combined with `via`.")
    rewrites: Optional[list[str]] = Field(
        default=None, description="Op rewrites (docs/rewrites.md) applied where the route loads the PyTorch module "
        "(the trace, torch.export or the ONNX export). Unset: none at first; when a converter refuses an op that a "
        "rewrite removes, the same route with that rewrite is tried next, automatically, and the lock says which "
        "rewrites the artifact carries. A list (e.g. [stft]): exactly these, on every route, and none added "
        "automatically. []: no rewrites at all (a refusal then fails the route, naming the rewrite that would "
        "remove the op).")
    structured_sparsity: Optional[float] = Field(
        default=None, ge=0.0, lt=1.0, description="Structured (channel) pruning where the route loads the PyTorch "
        "module (the trace, torch.export or the ONNX export), so every format downstream gets a smaller, faster "
        "model: the share of output channels removed from each conv and linear layer but those that make the "
        "outputs (e.g. 0.3), by L2 weight magnitude with torch-pruning's dependency graph, without fine-tuning. "
        "The check compares the artifact with the dense PyTorch reference under this target's acceptance, so a "
        "ratio the model cannot afford fails the build; deploy.lock records the ratio and the parameter counts "
        "dense and pruned. Needs `pip install 'modelbuild[pruning]'`. Unset or 0: no pruning.")
    repair: Union[bool, list[str]] = Field(
        default=True, description="Accuracy repair of a quantized artifact that misses its acceptance "
        "(docs/repair.md). true: the quantizing step's recipes are tried next, in order (onnx-int8: keep-float = "
        "per-layer sensitivity, then the fewest most sensitive layers kept in float until the tolerance holds; "
        "per-channel weights; entropy calibration. openvino-int8: NNCF's transformer scheme; 8-bit weights; the "
        "mixed preset; keep-float; weight-only int8. tflite-int8: keep-float by ai-edge-quantizer; dynamic range; "
        "weight-only int8, even where a platform preset chose full int8. executorch-int8: keep-float by per-node "
        "sensitivity on the PT2E graph); the one that passes is recorded in deploy.lock and reused, "
        "and the tolerance is never loosened. false: no repair (a miss fails the route). A list: only these "
        "recipes, in this order. To pin a recipe, set its options (e.g. options: {onnx-int8: {keep_float: "
        "[/head/Gemm]}}).")
    acceptance: Acceptance = Field(default_factory=Acceptance, description="Tolerances the artifact must meet.")
    limits: StepLimits = Field(default_factory=StepLimits, description="Time and memory each step of this target "
                               "may take before it is stopped (a node shared by targets takes the largest).")
    recipe: Optional[str] = Field(default=None, description="Recipe whose fields this target starts from.")
    platform: Optional[Literal["ios", "android", "server", "intel"]] = Field(
        default=None, description="Start from the built-in preset for a platform (ios: Core ML fp16 ML Program; "
        "android: TFLite int8 when the model has calibration data, else fp16; server: ONNX Runtime-optimized ONNX; "
        "intel: OpenVINO IR, NNCF int8 when the model has calibration data, else fp16; for a text-generation model "
        "on intel the stateful llm-openvino IR with int8 weights, on ios the stateful llm-coreml program (iOS18, "
        "fp16). "
        "Every field stays overridable; an explicit 'recipe' wins.")

    @field_validator("repair")
    @classmethod
    def _known_recipes(cls, repair: bool | list[str]) -> bool | list[str]:
        from buildsys.errors import did_you_mean

        for name in repair if isinstance(repair, list) else []:
            if name not in REPAIR_RECIPES:
                raise ValueError(f"no repair recipe is named '{name}' {did_you_mean(name, REPAIR_RECIPES) or ''}".rstrip()
                                 + f" (known: {', '.join(REPAIR_RECIPES)})")
        return repair

    @field_validator("rewrites")
    @classmethod
    def _known_rewrites(cls, names: list[str] | None) -> list[str] | None:
        from buildsys.rewrites import check_names

        return None if names is None else list(check_names(names))

    @model_validator(mode="after")
    def _one_way_to_route(self) -> "Target":
        if self.via and self.routes:
            raise ValueError("give either 'via' (one pinned route) or 'routes' (routes to try in order), not both")
        if self.via and self.prefer:
            raise ValueError("'prefer' chooses among routes and 'via' pins one: drop 'via', or list the routes to "
                             "compare under 'routes'")
        return self

    @property
    def goal(self) -> str:
        """The node format this target ends at: 'onnx' + int8 → 'onnx-int8'."""
        return format_name(self.format, self.precision)


class Signing(Strict):
    """How `modelbuild bundle` signs (model-signing, offline: a key, or a key and certificate) and what `bundle verify` trusts."""

    key: Optional[str] = Field(default=None, description="Private key (PEM; ECDSA P-256, P-384 or P-521) that signs the "
                               "bundle, relative to the deploy file. Keep it out of the repository; "
                               "MODELBUILD_SIGNING_KEY or `bundle --key` override it, MODELBUILD_SIGNING_KEY_PASSWORD "
                               "unlocks an encrypted one.")
    certificate: Optional[str] = Field(default=None, description="Signing certificate (PEM) of `key`: the bundle is "
                                       "then signed with the certificate and its chain instead of a bare key.")
    certificate_chain: list[str] = Field(default_factory=list, description="Intermediate and root certificates (PEM). "
                                         "Signing: shipped in the signature after `certificate`. Verifying: the roots "
                                         "`bundle verify` trusts.")
    public_key: Optional[str] = Field(default=None, description="Public key (PEM) `bundle verify` checks a key-signed "
                                      "bundle against; safe to commit.")
    required: bool = Field(default=False, description="Refuse to pack this bundle unsigned, and make `bundle verify` "
                           "fail on a bundle without a valid signature (as --require-signature does).")


class Bundle(Strict):
    """A release: a set of verified targets packed with a manifest (`modelbuild bundle NAME`)."""

    description: str = Field(default="", description="Free text, copied into the manifest.")
    targets: list[str] = Field(min_length=1, description="Targets whose artifacts go into the bundle.")
    version: str = Field(default="0.1.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$",
                         description="Release version; part of the file name NAME-VERSION.tar.gz.")
    archive: Literal["tar.gz", "zip"] = Field(default="tar.gz", description="Archive format.")
    require_numeric: bool = Field(
        default=False, description="Refuse a target whose numeric check did not run on this host (e.g. Core ML off macOS).")
    signing: Optional[Signing] = Field(default=None, description="Sign the bundle and say which signatures to trust "
                                       "(docs/releases.md). Unset: unsigned unless MODELBUILD_SIGNING_KEY is set.")


class Cache(Strict):
    """Where results are cached beyond this machine (see docs/remote-cache.md)."""

    remote: str | None = Field(
        default=None, description="fsspec URL of a shared remote cache, e.g. s3://bucket/prefix or "
        "file:///mnt/shared/modelbuild: stale nodes are pulled from it and built ones pushed to it. "
        "MODELBUILD_REMOTE overrides it ('off' disables it); credentials and endpoints come from the "
        "storage's own settings (AWS_* variables and AWS_ENDPOINT_URL for S3).")
    remote_readonly: bool = Field(
        default=False, description="Only pull from the remote, never push (CI consumers, untrusted "
        "branches). MODELBUILD_REMOTE_READONLY=1/0 overrides it.")


class DeployConfig(Strict):
    """The whole deploy.yaml."""

    version: Literal[1] = Field(default=1, description="Schema version of this file.")
    include: list[str] = Field(default_factory=list, description="Recipe files to load, relative to this file.")
    recipes: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Reusable target presets; a target names one with 'recipe:'."
    )
    models: dict[str, Model] = Field(description="Models by name.")
    targets: dict[str, Target] = Field(description="Targets by name.")
    bundles: dict[str, Bundle] = Field(default_factory=dict, description="Release bundles by name.")
    cache: Cache = Field(default_factory=Cache, description="Remote cache settings; not part of any cache key.")

    @model_validator(mode="after")
    def _names(self) -> "DeployConfig":
        import re

        for section in ("models", "targets", "bundles"):
            for name in getattr(self, section):
                if not re.match(NAME_PATTERN, name):
                    raise ValueError(f"{section} name '{name}' may use only letters, digits, '_', '.', '-'")
        return self
