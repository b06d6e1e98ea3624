"""The triton-tensorrt formats: a Triton model repository serving a TensorRT engine (`platform: "tensorrt_plan"`).

    model_repository/<name>/config.pbtxt
    model_repository/<name>/<version>/model.plan

The step is the Triton ONNX layout's (options, batching rules, config.pbtxt written and parsed back
with Triton's ModelConfig schema) with the TensorRT platform, and its config comes from the engine's
profile.json: the engine's inputs and outputs are the ONNX graph's (TensorRT keeps names, types and
dynamic axes), recorded there when the engine was built. So laying out the repository needs no GPU
and never deserializes the engine: the step copies model.plan. Its upstream engine does need a GPU,
which is why a host without one sees this node blocked too. Triton requires `max_batch_size` to fit
the engine's optimization profile: the default is 8 capped at the profile's max_batch, and a larger
explicit value is refused. TensorRT plans run on GPUs only, so `instance_kind: KIND_CPU` is refused
at plan time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.formats import register_formats, register_variants
from buildsys.formats.base import Format, StepContext, StepOptions
from buildsys.formats.serving.repository import REPOSITORY
from buildsys.formats.serving.triton import (
    DEFAULT_MAX_BATCH,
    TritonOptions,
    _dims,
    _io_entry,
    _TritonStep,
    config_problem,
)
from buildsys.formats.tensorrt.profiles import PLAN, read_profile

if TYPE_CHECKING:
    from buildsys.config.schema import Model

TENSORRT_PLATFORM = "tensorrt_plan"

_LAYOUT = ("Triton Inference Server model repository: model_repository/<name>/config.pbtxt and "
           "<name>/<version>/model.plan (TensorRT backend, {}); runs only on the engine's GPU model.")
TRITON_TENSORRT = register_formats(Format.variants("triton-tensorrt", {
    "fp32": _LAYOUT.format("fp32 engine"),
    "fp16": _LAYOUT.format("fp16 engine"),
    "int8": _LAYOUT.format("int8 engine"),
}, filename=REPOSITORY, runtime="triton-tensorrt-layout"))


def plan_config_problem(model: "Model", opts: TritonOptions) -> str | None:
    """Plan-time problems: the Triton options' own, and a CPU instance kind (TensorRT needs a GPU)."""
    if opts.instance_kind == "KIND_CPU":
        return ("instance_kind: KIND_CPU cannot serve a TensorRT plan (TensorRT runs on NVIDIA GPUs only); use "
                "KIND_GPU or KIND_AUTO")
    return config_problem(model, opts)


@register_variants({"fp32": "tensorrt", "fp16": "tensorrt-fp16", "int8": "tensorrt-int8"})
class TritonFromTensorrt(_TritonStep):
    """Lay out a TensorRT engine for Triton's TensorRT backend; config.pbtxt from the engine's profile.json."""

    produces = "triton-tensorrt"
    backend = "tensorrt"
    model_file = PLAN
    packages = ("tritonclient", "protobuf")  # config.pbtxt is checked with Triton's ModelConfig
    extra = "server"
    toolchain = "onnx"  # nothing heavy: shares the ONNX worker
    description = "Triton model repository (config.pbtxt + <version>/model.plan), TensorRT backend."

    @classmethod
    def check_config(cls, model: "Model", options: StepOptions, root: Path) -> str | None:
        return plan_config_problem(model, options)  # type: ignore[arg-type]

    def _run(self, ctx: StepContext[TritonOptions]) -> dict[str, Any]:
        src = Path(str(ctx.input_path))
        profile = read_profile(src.parent)
        inputs = [(e["name"], e["dtype"], e["shape"]) for e in profile["inputs"]]
        outputs = [(e["name"], e["dtype"], e["shape"]) for e in profile["outputs"]]
        engine_max = (profile.get("batch") or {}).get("max")
        opts = ctx.options
        if engine_max and opts.max_batch_size is not None and opts.max_batch_size > engine_max:
            raise self.fail(ctx, f"max_batch_size {opts.max_batch_size} exceeds the engine's optimization profile "
                                 f"(max_batch {engine_max}); Triton would refuse to load it. Lower max_batch_size or "
                                 "raise the tensorrt step's max_batch")
        if engine_max and opts.max_batch_size is None:  # the default, within what the engine takes
            opts = opts.model_copy(update={"max_batch_size": min(DEFAULT_MAX_BATCH, int(engine_max))})
            ctx = dataclasses.replace(ctx, options=opts)
        tensors = {**{n: s for n, _, s in inputs}, **{n: s for n, _, s in outputs}}
        max_batch, dynamic = self._batching(ctx, tensors)
        config = self._config(
            ctx, opts.model_name or ctx.model_name, max_batch, dynamic,
            [_io_entry(n, t, _dims(s, bool(max_batch))) for n, t, s in inputs],
            [_io_entry(n, t, _dims(s, bool(max_batch))) for n, t, s in outputs])
        device = profile.get("device") or {}
        bound = (f"The engine runs only on {device.get('gpu', 'its GPU')} (compute capability "
                 f"{device.get('compute_capability', '?')}) with TensorRT {device.get('tensorrt', '?')}.")
        comments = [f"Written by modelbuild: model '{ctx.model_name}', TensorRT backend ({profile.get('precision')}).",
                    bound]
        metrics = self._write(ctx, config, {self.model_file: src}, comments)
        return {**metrics, "device": device}

    def _config(self, ctx: StepContext[TritonOptions], name: str, max_batch: int, dynamic: bool,
                inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
        """The shared config with the TensorRT platform in place of the ONNX/libtorch backend."""
        shared = super()._config(ctx, name, max_batch, dynamic, inputs, outputs)
        rest = {k: v for k, v in shared.items() if k not in ("name", "platform", "backend")}
        return {"name": name, "platform": TENSORRT_PLATFORM, **rest}
