"""Triton Inference Server model repositories: a verified model laid out as Triton loads it.

The artifact is a directory `model_repository/` holding one model:

    model_repository/<name>/config.pbtxt
    model_repository/<name>/<version>/model.onnx   (+ model.onnx.data when the weights are external)
    model_repository/<name>/<version>/model.pt     (libtorch backend)

Point `tritonserver --model-repository=<artifact>/model_repository` at it, or copy `<name>/` into an
existing repository.

Formats (one per backend and precision, so that a target's route is never ambiguous):

- `triton`: the ONNX Runtime backend (`platform: "onnxruntime_onnx"`) over the fp32 ONNX model, or
  over the offline-optimized one with `via: [onnx-optimized]`.
- `triton-fp16`, `triton-int8`: the same over onnx-fp16 / onnx-int8, reached with `format: triton`
  plus `precision: fp16|int8` (the check then applies that precision's tolerances). `format: triton`
  with `via: [onnx-int8]` and no precision is *not* a route: it would verify an int8 model against
  fp32 tolerances; the planner's error lists `triton-int8` as what onnx-int8 can make.
- `triton-torchscript`: the PyTorch (libtorch) backend (`backend: "pytorch"`) over the TorchScript
  model. TorchScript keeps no input names, so inputs and outputs use Triton's positional convention
  `INPUT__<i>` / `OUTPUT__<i>` (i = position in the signature), which every Triton release accepts;
  config.pbtxt carries a comment mapping them to the signature's names.

The config is written from the artifact itself (element types and shapes read from the ONNX graph or
observed on a TorchScript run: `triton_signature.py`), then parsed back with Triton's own `ModelConfig` protobuf schema
(`buildsys.formats.serving.triton_layout.parse_config`) and compared with what was meant. Checks run the model
file inside the repository through the `triton-layout` runtime; with `serving: true` in the acceptance
they also load the repository into a real Triton Inference Server (`triton-server`, and
`triton-server-libtorch` for the PyTorch backend) and compare what it answers.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Optional

from pydantic import Field, model_validator

from buildsys.config.schema import NAME_PATTERN
from buildsys.formats import register, register_format, register_formats, register_variants
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.onnx.optimized import FLOAT_ONNX
from buildsys.formats.serving.pbtxt import write_pbtxt
from buildsys.formats.serving.repository import CONFIG, REPOSITORY, TRITON_TYPES
from buildsys.formats.torch.torchscript import TRACED
from buildsys.formats.serving.triton_signature import (
    onnx_graph_and_files,
    onnx_signature,
    signature_batches,
    torchscript_outputs,
)

if TYPE_CHECKING:
    from buildsys.config.schema import Model

ONNX_PLATFORM = "onnxruntime_onnx"
PYTORCH_BACKEND = "pytorch"
DEFAULT_MAX_BATCH = 8

_LAYOUT = ("Triton Inference Server model repository: model_repository/<name>/config.pbtxt and "
           "<name>/<version>/{}, run in checks from inside the repository.")
TRITON_ONNX = register_formats(Format.variants(
    "triton", {
        "fp32": _LAYOUT.format("model.onnx (ONNX Runtime backend)"),
        "fp16": _LAYOUT.format("model.onnx (ONNX Runtime backend, float16 model)"),
        "int8": _LAYOUT.format("model.onnx (ONNX Runtime backend, int8-quantized model)"),
    }, filename=REPOSITORY, runtime="triton-layout", serving_runtime="triton-server"))
TRITON_TORCHSCRIPT = register_format(Format(
    name="triton-torchscript", filename=REPOSITORY, runtime="triton-layout",
    serving_runtime="triton-server-libtorch",
    description=_LAYOUT.format("model.pt (PyTorch/libtorch backend, INPUT__i/OUTPUT__i names)"),
))

# --- options -------------------------------------------------------------------------------------


class TritonOptions(StepOptions):
    """Options of every Triton layout step (ONNX Runtime and libtorch backends)."""

    model_name: Optional[str] = Field(
        default=None, pattern=NAME_PATTERN, description="Name of the model in the repository (its directory "
        "and config.pbtxt `name`, what clients request). Unset: the deploy.yaml model name.")
    version: int = Field(default=1, ge=1, description="Version directory the model file goes into "
                         "(<name>/<version>/); Triton serves the highest version by default.")
    max_batch_size: Optional[int] = Field(
        default=None, ge=0, description="Largest batch Triton may form. > 0 needs a dynamic first (batch) axis "
        "on every input and output, which config.pbtxt then leaves out of `dims`; 0 disables Triton's batching "
        f"and `dims` include the first axis. Unset: {DEFAULT_MAX_BATCH} when the signature's and the artifact's "
        "first axes are dynamic (one shared name, e.g. 'batch'), else 0.")
    instance_count: int = Field(default=1, ge=1, description="Model instances per device (instance_group count).")
    instance_kind: Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU"] = Field(
        default="KIND_AUTO", description="Where instances run (instance_group kind): KIND_GPU, KIND_CPU, or "
        "KIND_AUTO (Triton's default: GPUs when present, else the CPU).")
    dynamic_batching: Optional[bool] = Field(
        default=None, description="Let Triton merge concurrent requests into one batch (a dynamic_batching "
        "block). Needs max_batch_size > 0. Unset: on whenever max_batch_size > 0.")
    preferred_batch_size: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="dynamic_batching: batch sizes the scheduler tries to form (each at "
        "most max_batch_size). Empty: Triton forms the largest batch it can.")
    max_queue_delay_microseconds: Optional[int] = Field(
        default=None, ge=0, description="dynamic_batching: how long a request may wait for others to join its "
        "batch. Unset: Triton's default (0, no waiting).")

    @model_validator(mode="after")
    def _consistent(self) -> "TritonOptions":
        tuned = bool(self.preferred_batch_size) or self.max_queue_delay_microseconds is not None
        if self.dynamic_batching is False and tuned:
            raise ValueError("preferred_batch_size and max_queue_delay_microseconds configure dynamic batching, "
                             "but dynamic_batching is false")
        if self.dynamic_batching and self.max_batch_size == 0:
            raise ValueError("dynamic_batching needs max_batch_size > 0 (Triton cannot batch a model whose "
                             "max_batch_size is 0)")
        too_big = [p for p in self.preferred_batch_size if self.max_batch_size is not None and p > self.max_batch_size]
        if too_big:
            raise ValueError(f"preferred_batch_size {too_big[0]} exceeds max_batch_size {self.max_batch_size}")
        return self


def config_problem(model: "Model", opts: TritonOptions) -> str | None:
    """Plan-time problems of the options against the signature (no artifact needed)."""
    batches = signature_batches(model)
    if opts.max_batch_size and not batches:
        fixed = next((i for i in model.inputs if isinstance(i.shape[0], int)), None)
        why = (f"input '{fixed.name}' has the fixed first axis {fixed.shape[0]} (shape {list(fixed.shape)})" if fixed
               else f"the inputs' first axes have different names ({', '.join(str(i.shape[0]) for i in model.inputs)})")
        return (f"max_batch_size: {opts.max_batch_size} needs a dynamic batch axis shared by every input, but {why}; "
                "set max_batch_size: 0 (dims then include the first axis) or name the first axis, e.g. 'batch'")
    resolved = opts.max_batch_size if opts.max_batch_size is not None else (DEFAULT_MAX_BATCH if batches else 0)
    if opts.dynamic_batching and resolved == 0:
        return ("dynamic_batching: true needs Triton batching, but max_batch_size resolves to 0 because the "
                "signature has no shared dynamic batch axis; remove dynamic_batching")
    too_big = [p for p in opts.preferred_batch_size if p > resolved]
    if too_big:
        return (f"preferred_batch_size {too_big[0]} exceeds max_batch_size {resolved}"
                + (" (the default; set max_batch_size)" if opts.max_batch_size is None else ""))
    return None


# --- building the repository ---------------------------------------------------------------------


def _io_entry(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
    """One input/output block; a per-sample scalar is declared as [1] and reshaped, as Triton requires."""
    entry: dict[str, Any] = {"name": name, "data_type": TRITON_TYPES[dtype], "dims": dims or [1]}
    if not dims:
        entry["reshape"] = {"shape": []}
    return entry


def _dims(shape: list[int | None], batched: bool) -> list[int]:
    """Triton dims: the batch axis dropped when Triton batches, unknown sizes as -1."""
    return [-1 if d is None else d for d in (shape[1:] if batched else shape)]


class _TritonStep(Step):
    """What every Triton layout step shares: options, plan-time checks, config and layout writing."""

    Options = TritonOptions
    backend: ClassVar[str]
    model_file: ClassVar[str]

    @classmethod
    def check_config(cls, model: "Model", options: StepOptions, root: Path) -> str | None:
        return config_problem(model, options)  # type: ignore[arg-type]

    def _batching(self, ctx: StepContext[TritonOptions], tensors: Mapping[str, list[int | None] | None]) -> tuple[int, bool]:
        """Resolved (max_batch_size, dynamic_batching) given the artifact's own shapes (None: unknown axis)."""
        opts = ctx.options
        fixed = next(((n, s) for n, s in tensors.items() if s is None or not s or s[0] is not None), None)
        if opts.max_batch_size is None:
            max_batch = DEFAULT_MAX_BATCH if signature_batches(ctx.model) and fixed is None else 0
        else:
            max_batch = opts.max_batch_size
        if max_batch and fixed is not None:
            name, shape = fixed
            detail = (f"has the fixed shape {shape}" if shape else "has no batch axis (a scalar)")
            raise self.fail(ctx, f"max_batch_size: {max_batch} needs a dynamic first (batch) axis on every input and "
                                 f"output, but tensor '{name}' {detail}; set max_batch_size: 0"
                                 + (" or export with dynamic_axes: true" if self.backend == "onnxruntime" else ""))
        dynamic = opts.dynamic_batching if opts.dynamic_batching is not None else max_batch > 0
        if dynamic and not max_batch:
            raise self.fail(ctx, "dynamic_batching: true needs max_batch_size > 0, but the artifact has no dynamic "
                                 "batch axis, so max_batch_size resolves to 0; remove dynamic_batching")
        too_big = [p for p in opts.preferred_batch_size if p > max_batch]
        if too_big:
            raise self.fail(ctx, f"preferred_batch_size {too_big[0]} exceeds max_batch_size {max_batch}")
        return max_batch, dynamic

    def _config(self, ctx: StepContext[TritonOptions], name: str, max_batch: int, dynamic: bool,
                inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
        opts = ctx.options
        config: dict[str, Any] = {"name": name}
        config.update({"platform": ONNX_PLATFORM} if self.backend == "onnxruntime" else {"backend": PYTORCH_BACKEND})
        config.update({"max_batch_size": max_batch, "input": inputs, "output": outputs,
                       "instance_group": [{"count": opts.instance_count, "kind": opts.instance_kind}]})
        if dynamic:
            block: dict[str, Any] = {}
            if opts.preferred_batch_size:
                block["preferred_batch_size"] = list(opts.preferred_batch_size)
            if opts.max_queue_delay_microseconds is not None:
                block["max_queue_delay_microseconds"] = opts.max_queue_delay_microseconds
            config["dynamic_batching"] = block
        return config

    def _write(self, ctx: StepContext[TritonOptions], config: dict[str, Any], files: dict[str, Path],
               comments: list[str]) -> dict[str, Any]:
        """Write config.pbtxt and the model files (name in the version dir → source), verify, return metrics."""

        opts = ctx.options
        repo = ctx.out_dir / REPOSITORY
        if repo.exists():
            shutil.rmtree(repo)
        model_dir = repo / config["name"]
        version_dir = model_dir / str(opts.version)
        version_dir.mkdir(parents=True)
        for dest, src in files.items():
            shutil.copyfile(src, version_dir / dest)
        text = write_pbtxt(config, comments)
        (model_dir / CONFIG).write_text(text, encoding="utf-8")
        _read_back(model_dir / CONFIG, config, text)
        written = sorted(p for p in repo.rglob("*") if p.is_file())
        return {"backend": self.backend, "model_name": config["name"], "version": opts.version,
                "max_batch_size": config["max_batch_size"], "dynamic_batching": "dynamic_batching" in config,
                "files": [p.relative_to(repo).as_posix() for p in written],
                "bytes": sum(p.stat().st_size for p in written)}


def _read_back(path: Path, config: dict[str, Any], text: str) -> None:
    """Parse the written file with Triton's ModelConfig schema and require exactly the meant message."""
    from google.protobuf import json_format

    from buildsys.errors import InternalError, StepError
    from buildsys.formats.serving.repository import read_config
    from buildsys.formats.serving.pbtxt import message_dict, model_config_class

    try:
        parsed = read_config(path.parent)
        meant = json_format.ParseDict(config, model_config_class()())
    except (StepError, json_format.ParseError) as exc:
        raise InternalError(f"the config.pbtxt modelbuild wrote is not a valid ModelConfig: {exc}\n{text}") from exc
    if parsed != message_dict(meant):
        raise InternalError(f"config.pbtxt does not read back as written:\nmeant {config}\nread  {parsed}\n{text}")


class _TritonOnnx(_TritonStep):
    """An ONNX model (and its external-data files) in the ONNX Runtime backend's layout."""

    backend = "onnxruntime"
    model_file = "model.onnx"
    packages = ("onnx", "tritonclient", "protobuf")  # the last two: config.pbtxt is checked with ModelConfig
    extra = "server"
    toolchain = "onnx"

    def _run(self, ctx: StepContext[TritonOptions]) -> dict[str, Any]:
        proto, files = onnx_graph_and_files(self, ctx, self.model_file)
        inputs, outputs = onnx_signature(self, ctx, proto)
        tensors = {**{n: s for n, _, s in inputs}, **{n: s for n, _, s in outputs}}
        max_batch, dynamic = self._batching(ctx, tensors)
        config = self._config(
            ctx, ctx.options.model_name or ctx.model_name, max_batch, dynamic,
            [_io_entry(n, t, _dims(s, bool(max_batch))) for n, t, s in inputs],
            [_io_entry(n, t, _dims(s, bool(max_batch))) for n, t, s in outputs])
        comments = [f"Written by modelbuild: model '{ctx.model_name}', ONNX Runtime backend."]
        return self._write(ctx, config, files, comments)


@register_variants({"fp32": FLOAT_ONNX, "fp16": "onnx-fp16", "int8": "onnx-int8"})
class TritonFromOnnx(_TritonOnnx):
    """Lay out an fp32 (or optimized), fp16 or int8 ONNX model for Triton's ONNX Runtime backend.

    fp32 also takes the offline-optimized model (`via: [onnx-optimized]`). I/O types are read from the file."""

    produces = "triton"
    description = "Triton model repository (config.pbtxt + <version>/model.onnx), ONNX Runtime backend."


@register
class TritonFromTorchScript(_TritonStep):
    """Lay out the TorchScript model for Triton's PyTorch (libtorch) backend, with INPUT__i/OUTPUT__i names."""

    name = "triton-torchscript-from-torchscript"
    consumes = TRACED
    produces = "triton-torchscript"
    backend = "pytorch"
    model_file = "model.pt"
    packages = ("torch", "tritonclient", "protobuf")
    extra = "torch"
    toolchain = "torch"
    description = "Triton model repository (config.pbtxt + <version>/model.pt), PyTorch backend."

    def _run(self, ctx: StepContext[TritonOptions]) -> dict[str, Any]:
        src = Path(str(ctx.input_path))
        outputs = torchscript_outputs(self, ctx, src)
        inputs = [(f"INPUT__{i}", spec.dtype, [d if isinstance(d, int) else None for d in spec.shape])
                  for i, spec in enumerate(ctx.model.inputs)]
        tensors: dict[str, list[int | None] | None] = {n: s for n, _, s in inputs}
        tensors.update({n: s for n, _, s in outputs})
        max_batch, dynamic = self._batching(ctx, tensors)
        config = self._config(
            ctx, ctx.options.model_name or ctx.model_name, max_batch, dynamic,
            [_io_entry(n, t, _dims(s, bool(max_batch))) for n, t, s in inputs],
            [_io_entry(n, t, _dims(s, bool(max_batch))) for n, t, s in outputs])
        comments = [f"Written by modelbuild: model '{ctx.model_name}', PyTorch (libtorch) backend.",
                    "TorchScript has no I/O names: Triton binds INPUT__<i> / OUTPUT__<i> by position.",
                    *(f"INPUT__{i} = {spec.name}" for i, spec in enumerate(ctx.model.inputs)),
                    *(f"OUTPUT__{i} = {spec.name}" for i, spec in enumerate(ctx.model.outputs))]
        return self._write(ctx, config, {self.model_file: src}, comments)
