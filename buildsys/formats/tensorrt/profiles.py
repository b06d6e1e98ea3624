"""The TensorRT contract shared by the engine steps, the runtime and the Triton layout: options,
optimization profiles, profile.json, and what an engine is bound to (GPU, TensorRT version).

A TensorRT engine has fixed shapes except where an *optimization profile* gives a dynamic axis a
range (min, opt, max): the engine accepts any size in the range and is tuned for `opt`. The
model's declared shapes say which axes are dynamic (a string in `inputs[].shape`, e.g. 'batch');
the batch axis (the first axis, one shared name over every input) takes its range from
`min_batch` / `opt_batch` / `max_batch`, and every other named axis from `axes`.

`profile.json`, written next to `model.plan`, records the engine's inputs (name, dtype, shape with
null for a dynamic axis, and the profile's min/opt/max shapes), its outputs in the signature's order,
and the GPU and TensorRT it was built for. The Triton layout writes config.pbtxt from it, so a
repository can be laid out (and tested) without deserializing the engine. Imports only the standard
library, pydantic and buildsys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field, model_validator

from buildsys.errors import install_command
from buildsys.formats.base import StepOptions

if TYPE_CHECKING:
    from buildsys.config.schema import Model

PLAN = "model.plan"
PROFILE = "profile.json"
#: Default batch range when the signature's batch axis is dynamic: checks feed 64 samples per call
#: (`runtime.fixed_batch`), and 8 is a common serving batch to tune for.
DEFAULT_MIN_BATCH, DEFAULT_OPT_BATCH, DEFAULT_MAX_BATCH = 1, 8, 64
#: The distributions that can provide the `tensorrt` module, in the order their version is read.
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")
INSTALL = install_command("tensorrt")


class EngineOptions(StepOptions):
    """Options of every TensorRT engine step."""

    min_batch: Optional[int] = Field(
        default=None, ge=1, description="Smallest batch the engine accepts (optimization profile `min` of the "
        f"batch axis). Unset: {DEFAULT_MIN_BATCH}. Only for a signature whose inputs share a dynamic first axis.")
    opt_batch: Optional[int] = Field(
        default=None, ge=1, description="The batch TensorRT tunes kernels for (profile `opt`). Unset: "
        f"{DEFAULT_OPT_BATCH}, kept within min_batch..max_batch.")
    max_batch: Optional[int] = Field(
        default=None, ge=1, description=f"Largest batch the engine accepts (profile `max`). Unset: {DEFAULT_MAX_BATCH} "
        "(at least min_batch). Larger values cost builder time and activation memory.")
    axes: dict[str, list[int]] = Field(
        default_factory=dict, description="Range [min, opt, max] of every dynamic axis other than the batch axis, "
        "by the name the signature gives it (e.g. {seq: [1, 128, 512]}); required for each such axis.")
    workspace_mb: Optional[int] = Field(
        default=None, ge=1, description="Limit of the builder's scratch memory pool in MiB. Unset: TensorRT's "
        "default (the GPU's memory).")
    optimization_level: int = Field(
        default=3, ge=0, le=5, description="builder_optimization_level: 0 builds fastest, 5 searches the most "
        "tactics (slow builds, sometimes faster engines); 3 is TensorRT's default.")

    @model_validator(mode="after")
    def _ranges(self) -> "EngineOptions":
        given = [(n, v) for n, v in (("min_batch", self.min_batch), ("opt_batch", self.opt_batch),
                                     ("max_batch", self.max_batch)) if v is not None]
        for (a, x), (b, y) in pairwise(given):
            if x > y:
                raise ValueError(f"{a} {x} is larger than {b} {y}: a profile needs min_batch ≤ opt_batch ≤ max_batch")
        for name, bounds in self.axes.items():
            if len(bounds) != 3 or any(b < 1 for b in bounds) or not bounds[0] <= bounds[1] <= bounds[2]:
                raise ValueError(f"axes.{name}: {bounds} should be [min, opt, max] with 1 ≤ min ≤ opt ≤ max")
        return self


class ProfileError(ValueError):
    """Options that do not fit the signature (said at plan time by `check_config`)."""


def batch_axis(model: "Model") -> str | None:
    """The name of the batch axis: the first axis, dynamic and named alike on every input; else None."""
    firsts = {i.shape[0] for i in model.inputs}
    first = next(iter(firsts))
    return first if len(firsts) == 1 and isinstance(first, str) else None


def batch_range(model: "Model", opts: EngineOptions) -> tuple[int, int, int] | None:
    """(min, opt, max) of the batch axis, defaults filled in; None when the signature has no batch axis."""
    if batch_axis(model) is None:
        return None
    low = opts.min_batch or DEFAULT_MIN_BATCH
    high = opts.max_batch or max(DEFAULT_MAX_BATCH, low)
    opt = opts.opt_batch or min(max(DEFAULT_OPT_BATCH, low), high)
    if not low <= opt <= high:
        raise ProfileError(f"the batch range resolves to min {low}, opt {opt}, max {high}; set min_batch ≤ "
                           "opt_batch ≤ max_batch")
    return low, opt, high


def input_profiles(model: "Model", opts: EngineOptions) -> dict[str, dict[str, list[int]]]:
    """Per input, the profile's {"min", "opt", "max"} shapes from the declared shapes and the options.

    Raises ProfileError naming the input and axis when the options do not fit the signature: batch
    options without a shared dynamic batch axis, a dynamic axis without a range, a range for an axis
    the signature does not have."""
    batch = batch_axis(model)
    if batch is None and any(v is not None for v in (opts.min_batch, opts.opt_batch, opts.max_batch)):
        firsts = ", ".join(f"{i.name}: {i.shape[0]!r}" for i in model.inputs)
        raise ProfileError(f"min_batch/opt_batch/max_batch need a dynamic first axis shared by every input, but "
                           f"the first axes are {firsts}; name it (e.g. 'batch') in the inputs' shapes or remove "
                           "the batch options")
    if batch is not None and batch in opts.axes:
        raise ProfileError(f"axes.{batch}: '{batch}' is the batch axis; set min_batch/opt_batch/max_batch instead")
    named = {d for i in model.inputs for d in i.shape if isinstance(d, str) and d != batch}
    unknown = sorted(set(opts.axes) - named)
    if unknown:
        raise ProfileError(f"axes.{unknown[0]}: the signature has no dynamic axis '{unknown[0]}' (its dynamic axes "
                           f"besides the batch: {', '.join(sorted(named)) or 'none'})")
    batches = batch_range(model, opts)
    out: dict[str, dict[str, list[int]]] = {}
    for spec in model.inputs:
        shapes: dict[str, list[int]] = {"min": [], "opt": [], "max": []}
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                bounds = (dim, dim, dim)
            elif dim == batch and axis == 0:
                assert batches is not None
                bounds = batches
            elif dim in opts.axes:
                bounds = tuple(opts.axes[dim])  # type: ignore[assignment]
            else:
                raise ProfileError(f"input '{spec.name}' axis {axis} ('{dim}') is dynamic: give its range in the "
                                   f"options, e.g. axes: {{{dim}: [1, 64, 256]}} (min, opt, max)")
            for key, value in zip(("min", "opt", "max"), bounds):
                shapes[key].append(int(value))
        out[spec.name] = shapes
    return out


def profile_problem(model: "Model", opts: EngineOptions) -> str | None:
    """Plan-time: why the options cannot make a profile for this signature, or None."""
    try:
        input_profiles(model, opts)
    except ProfileError as exc:
        return str(exc)
    return None


# --- profile.json -------------------------------------------------------------------------------

Tensor = tuple[str, str, Optional[list[Optional[int]]]]  # (name, dtype, shape; None = dynamic axis)


def describe(model: "Model", opts: EngineOptions, inputs: Sequence[Tensor], outputs: Sequence[Tensor],
             precision: str, device: dict[str, str]) -> dict[str, Any]:
    """profile.json's content: the engine's I/O (read from the ONNX graph it is built from, which is
    what TensorRT keeps: same names, element types and dynamic axes), its profile and its device."""
    shapes = input_profiles(model, opts)
    batches = batch_range(model, opts)
    return {
        "precision": precision,
        "inputs": [{"name": n, "dtype": t, "shape": s, **shapes[n]} for n, t, s in inputs],
        "outputs": [{"name": n, "dtype": t, "shape": s} for n, t, s in outputs],
        "batch": None if batches is None else dict(zip(("min", "opt", "max"), batches)),
        "device": device,
    }


def fit_to_graph(profile: dict[str, Any], opts: EngineOptions) -> None:
    """Narrow the profile to axes the ONNX graph fixes (a model exported with dynamic_axes: false
    takes batch 1 only); raises ProfileError where the options asked for a range the graph lacks."""
    for entry in profile["inputs"]:
        for axis, dim in enumerate(entry["shape"] or []):
            if dim is None or entry["min"][axis] == entry["max"][axis] == dim:
                continue
            if axis == 0 and profile["batch"] is not None:
                asked = any(v is not None for v in (opts.min_batch, opts.opt_batch, opts.max_batch))
            else:
                asked = True  # a named axis the graph fixed: its range in `axes` cannot be honoured
            if asked:
                raise ProfileError(f"input '{entry['name']}' axis {axis} is fixed to {dim} in the ONNX model, but the "
                                   f"profile asks for {entry['min'][axis]}..{entry['max'][axis]}; export with "
                                   "dynamic axes (onnx: {dynamic_axes: true}) or drop the range")
            for key in ("min", "opt", "max"):
                entry[key][axis] = dim
            if axis == 0 and profile["batch"] is not None:
                profile["batch"] = {"min": dim, "opt": dim, "max": dim}


def write_profile(out_dir: Path, profile: dict[str, Any]) -> Path:
    path = out_dir / PROFILE
    path.write_text(json.dumps(profile, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_profile(engine_dir: Path) -> dict[str, Any]:
    """The profile.json next to an engine (StepError when it is missing or not the expected shape)."""
    from buildsys.errors import StepError

    path = Path(engine_dir) / PROFILE
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StepError(f"{PROFILE} is missing next to the engine (in {Path(engine_dir).name}/): it is written by "
                        "the tensorrt steps; rebuild the engine") from None
    except ValueError as exc:
        raise StepError(f"{PROFILE} is not JSON: {exc}") from exc
    if not isinstance(profile, dict) or not {"inputs", "outputs"} <= set(profile):
        raise StepError(f"{PROFILE} lacks 'inputs'/'outputs'; rebuild the engine")
    return profile


# --- what an engine is bound to -----------------------------------------------------------------


def tensorrt_version() -> str:
    """The installed TensorRT's version from package metadata (never imports tensorrt)."""
    from buildsys.storage.keys import NOT_INSTALLED, package_version

    for dist in TENSORRT_DISTRIBUTIONS:
        version = package_version(dist)
        if version != NOT_INSTALLED:
            return version
    return NOT_INSTALLED


def gpu_requirement() -> str | None:
    """Why this host cannot build or run an engine: no NVIDIA GPU, or no TensorRT. None: it can."""
    from buildsys.storage import keys

    if keys.nvidia_gpu() is None:
        return keys.NEEDS_NVIDIA_GPU
    if tensorrt_version() == keys.NOT_INSTALLED:
        return f"needs TensorRT (the tensorrt package is not installed: {INSTALL})"
    return None


def device_components() -> dict[str, str]:
    """The GPU model, its compute capability and the TensorRT version: an engine is valid only for these."""
    from buildsys.storage import keys

    gpu = keys.nvidia_gpu()
    return {"gpu": gpu.name if gpu else "none", "compute_capability": gpu.compute_capability if gpu else "none",
            "tensorrt": tensorrt_version()}
