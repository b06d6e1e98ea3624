"""The `llm-openvino` formats: a decoder LM as a stateful OpenVINO IR, its KV cache held as state.

Converted from the `llm-onnx` export (the same static-cache decoder, decoder.py) with
`openvino.convert_model`, then OpenVINO's `MakeStateful` pass turns each cache input/output pair
into a variable (ReadValue/Assign), as optimum-intel's stateful models do: the IR takes
`(tokens, cache_position) → logits`, and the cache lives in the infer request between calls
(`reset_state()` empties it) instead of being copied in and out of every call. The sequence axis
stays dynamic, so a prompt is prefilled in one call.

Precisions: fp32; fp16 (weights saved compressed to float16; the CPU plugin computes in float32);
int8 and int4 weight-only compression by NNCF (`nncf.compress_weights`, data-free: per-channel int8;
int4 in groups along the input channels with the embeddings and the output head kept int8, NNCF's
backup). The runtime runs generation.py's Session over the request; only the decoder adaptor differs
from the stateless runtimes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field

from buildsys.errors import StepError
from buildsys.formats import register, register_formats, register_runtime, register_variants
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.llm.contract import INPUTS, OUTPUTS, SPEC_FILE, TOKENIZER_DIR, CacheSpec
from buildsys.formats.llm.generate import GenerationSession
from buildsys.formats.openvino.ir import BIN, VOLATILE_RT_INFO, XML, cpu_config, telemetry_off
from buildsys.formats.openvino.runtime import OpenVinoCpu
from buildsys.formats.runtime import Session, loading

if TYPE_CHECKING:
    import numpy as np
    import openvino

    from buildsys.config.schema import Model
    from buildsys.storage.keys import HostBinding

LLM_OPENVINO = register_formats(Format.variants("llm-openvino", {
    "fp32": "Decoder LM (task: text-generation) as a stateful OpenVINO IR: the static KV cache is state of the "
            "infer request (ReadValue/Assign), the IR takes tokens and positions and gives logits; float32.",
    "fp16": "Stateful OpenVINO IR of a decoder LM with float16-compressed weights (the CPU plugin computes in float32).",
    "int8": "Stateful OpenVINO IR of a decoder LM with int8 weights (NNCF weight compression, per channel; "
            "activations and the cache stay float).",
    "int4": "Stateful OpenVINO IR of a decoder LM with int4 weights in groups (NNCF weight compression; the "
            "embeddings and output head int8).",
}, filename=XML, runtime="llm-openvino", task="text-generation"))

#: The int4 group size where it divides the layer (optimum-intel's default for LLMs).
DEFAULT_GROUP = 128
#: The cache input → output pairs that become variables, by tensor name (contract.py).
STATE_PAIRS = (("k_cache", "k_cache_out"), ("v_cache", "v_cache_out"))


def _carry_side_files(src_dir: Path, out_dir: Path) -> list[str]:
    """llm.json and the tokenizer travel from the upstream artifact (their bytes are in its digest)."""
    shutil.copyfile(src_dir / SPEC_FILE, out_dir / SPEC_FILE)
    shutil.copytree(src_dir / TOKENIZER_DIR, out_dir / TOKENIZER_DIR)
    return sorted(p.relative_to(out_dir / TOKENIZER_DIR).as_posix() for p in (out_dir / TOKENIZER_DIR).rglob("*")
                  if p.is_file())


def state_problem(model: "openvino.Model") -> str | None:
    """Why `model` is not the stateful decoder the runtime expects (inputs, outputs, variables), or None."""
    ins = sorted(port.get_any_name() for port in model.inputs)
    outs = sorted(port.get_any_name() for port in model.outputs)
    variables = len(model.get_variables())
    if ins != sorted(INPUTS[:2]) or outs != [OUTPUTS[0]] or variables != len(STATE_PAIRS):
        return (f"the IR has inputs [{', '.join(ins)}], outputs [{', '.join(outs)}] and {variables} state "
                f"variable(s); a stateful decoder has inputs [{', '.join(INPUTS[:2])}], output [{OUTPUTS[0]}] and "
                f"{len(STATE_PAIRS)} variables (the KV caches)")
    return None


def _save(step: Step, ctx: StepContext, model: "openvino.Model", fp16: bool) -> dict[str, Any]:
    """Save reproducibly (as the openvino family does), after checking the IR is the stateful decoder."""
    import openvino as ov

    from buildsys.formats.openvino.convert import _stable_names

    problem = state_problem(model)
    if problem:
        raise step.fail(ctx, problem)
    rt_info = model.get_rt_info()
    for key in VOLATILE_RT_INFO:
        if model.has_rt_info(key):
            del rt_info[key]
    _stable_names(model)
    ov.save_model(model, str(ctx.out_dir / XML), compress_to_fp16=fp16)
    weights = (ctx.out_dir / BIN).stat().st_size
    return {"bytes": (ctx.out_dir / XML).stat().st_size + weights, "weights_bytes": weights,
            "state": sorted(v.info.variable_id for v in model.get_variables()),
            # read back: compress_to_fp16 converts the constants only as it writes them
            "weights": _weight_shares(ov.Core().read_model(str(ctx.out_dir / XML))),
            "openvino": ov.get_version().split("-")[0]}


def _weight_shares(model: "openvino.Model") -> dict[str, float]:
    """Share of the constants' elements by element type (f32, f16, i8/u8, i4/u4): what compression did."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            kind = op.get_output_element_type(0).get_type_name()
            counts[kind] = counts.get(kind, 0) + _elements(op)
    total = sum(counts.values()) or 1
    return {k: round(v / total, 4) for k, v in sorted(counts.items()) if v}


def _elements(op: Any) -> int:
    n = 1
    for dim in op.get_output_shape(0):
        n *= int(dim)
    return n


@register_variants({"fp32": "llm-onnx", "fp16": "llm-onnx"})
class LlmOpenVinoFromLlmOnnx(Step):
    """Convert the static-cache decoder's ONNX to OpenVINO IR and make its KV cache state (MakeStateful)."""

    produces = "llm-openvino"
    packages = ("openvino",)
    extra = "openvino"
    toolchain = "openvino"
    description = ("openvino.convert_model of the llm-onnx file, openvino.passes.MakeStateful on the cache "
                   "inputs/outputs, saved with float32 (fp16: float16-compressed) weights.")
    Options = StepOptions
    version = 2  # 2: an fp16 IR's share of weights in float16 (quantized_weights), judged by its floor
    committed_metrics = ("quantized_weights",)

    def _run(self, ctx: StepContext[StepOptions]) -> dict[str, Any]:
        with telemetry_off():
            import openvino as ov
            import openvino.passes

            src = Path(str(ctx.input_path))
            try:
                model = ov.convert_model(str(src))
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise self.fail(ctx, f"OpenVINO could not convert the decoder's ONNX: {type(exc).__name__}: {first}") from exc
            params = {name: p for p in model.get_parameters() for name in p.get_output_tensor(0).get_names()}
            results = {name: r for r in model.get_results() for name in r.input_value(0).get_names()}
            missing = [i for i, _ in STATE_PAIRS if i not in params] + [o for _, o in STATE_PAIRS if o not in results]
            if missing:
                raise self.fail(ctx, f"the decoder's ONNX lacks the cache tensors {', '.join(missing)}")
            manager = openvino.passes.Manager()
            manager.register_pass(openvino.passes.MakeStateful([(params[i], results[o]) for i, o in STATE_PAIRS]))
            manager.run_passes(model)
            metrics = _save(self, ctx, model, fp16=self.precision == "fp16")
        metrics["tokenizer"] = _carry_side_files(src.parent, ctx.out_dir)
        if self.precision == "fp16":
            from buildsys.formats.openvino.weights import measure

            metrics["quantized_weights"] = measure(ctx.out_dir / XML, self.precision)
        return metrics


class _LlmOpenVinoCompressed(Step):
    """Shared body: NNCF weight compression of the float32 stateful IR (data-free)."""

    consumes = ("llm-openvino",)
    committed_metrics = ("group_size", "group_sizes", "quantized_weights")
    version = 2  # 2: quantized_weights measured on the IR; int4: a default group size adjusts per layer
    packages = ("openvino", "nncf")
    extra = "openvino"
    toolchain = "openvino"

    @classmethod
    def host_binding(cls, options: dict[str, Any], data_sets: tuple[str, ...]) -> "HostBinding":
        # Data-free, yet not a pure rewrite: for large weights NNCF computes scales and rounded values
        # in small models it compiles on OpenVINO's CPU plugin ("optimized compression"), whose
        # kernels differ per architecture.
        from buildsys.storage.keys import HostBinding

        return HostBinding.PLATFORM

    def _mode(self, ctx: StepContext) -> tuple[str, dict[str, Any]]:
        """NNCF's CompressWeightsMode name and the other compress_weights arguments."""
        raise NotImplementedError

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        mode, kwargs = self._mode(ctx)
        src = Path(str(ctx.input_path))
        with telemetry_off():
            import nncf
            import openvino as ov

            model = ov.Core().read_model(str(src))
            try:
                compressed = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode), **kwargs)
            except nncf.InvalidGroupSizeError as exc:
                # Only a group size the user set gets here (a default one adjusts): honoured exactly, or refused.
                widths = sorted(set(re.findall(r"channel size: (\d+)", str(exc))), key=int)
                raise self.fail(ctx, f"int4 group size {kwargs.get('group_size')} does not divide the input width "
                                     f"({', '.join(widths) or '?'}) of {len(re.findall('channel size', str(exc)))} "
                                     f"layer(s): set options.{self.produces}.group_size to a divisor of it, or leave "
                                     "it unset to choose one per layer") from exc
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise self.fail(ctx, f"NNCF weight compression ({mode.lower()}) failed: {type(exc).__name__}: {first}") from exc
            from buildsys.formats.openvino.weights import int4_group_sizes, measure

            metrics = _save(self, ctx, compressed, fp16=False)
            groups = int4_group_sizes(compressed)
        bits = self.precision[3:]  # "int8" → "8"
        share = sum(v for k, v in metrics["weights"].items() if k in (f"i{bits}", f"u{bits}"))
        if not share:
            raise self.fail(ctx, f"NNCF compressed no weight to {self.precision} ({mode.lower()}"
                                 f"{', group size ' + str(kwargs['group_size']) if kwargs.get('group_size') else ''})")
        kwargs.pop("advanced_parameters", None)
        metrics.update(mode=mode.lower(), tokenizer=_carry_side_files(src.parent, ctx.out_dir), **kwargs,
                       **({"group_sizes": groups} if groups else {}),
                       quantized_weights=measure(ctx.out_dir / XML, self.precision))
        return metrics


@register
class LlmOpenVinoInt8FromLlmOpenVino(_LlmOpenVinoCompressed):
    """Compress the float32 stateful IR's weights to int8 per output channel (NNCF, data-free)."""

    name = "llm-openvino-int8-from-llm-openvino"
    produces = "llm-openvino-int8"
    precision = "int8"
    description = "nncf.compress_weights(mode=INT8_ASYM or INT8_SYM) of the float32 stateful IR."

    class Options(StepOptions):
        symmetric: bool = Field(default=False, description="Symmetric int8 weights (INT8_SYM); false: asymmetric "
                                "with a zero point per channel (INT8_ASYM, NNCF's and optimum-intel's default).")

    def _mode(self, ctx: StepContext) -> tuple[str, dict[str, Any]]:
        return ("INT8_SYM" if ctx.options.symmetric else "INT8_ASYM"), {}


@register
class LlmOpenVinoInt4FromLlmOpenVino(_LlmOpenVinoCompressed):
    """Compress the float32 stateful IR's weights to int4 in groups (NNCF, data-free; embeddings and head int8)."""

    name = "llm-openvino-int4-from-llm-openvino"
    produces = "llm-openvino-int4"
    precision = "int4"
    description = "nncf.compress_weights(mode=INT4_ASYM or INT4_SYM, group_size, ratio) of the float32 stateful IR."

    class Options(StepOptions):
        symmetric: bool = Field(default=False, description="Symmetric int4 weights (INT4_SYM); false: asymmetric "
                                "with a zero point per group (INT4_ASYM, optimum-intel's default).")
        group_size: Optional[int] = Field(
            default=None, ge=2, description="Input channels sharing one scale (and zero point); smaller groups: "
            "more accurate, larger file. Honoured exactly: a layer whose input width it does not divide is refused, "
            "naming the widths. Unset: 128 where it divides a layer (it suits LLMs, whose hidden sizes are "
            "multiples of it), else the largest power of two from 32 up that divides it (NNCF's ADJUST fallback), "
            "else the layer stays int8 per channel (NNCF's backup precision); the sizes chosen are recorded in "
            "deploy.lock (group_sizes).")
        ratio: float = Field(default=1.0, gt=0, le=1, description="Share of the layers NNCF may choose (all but "
                             "the embeddings and output head) made int4; the rest int8. Below 1, data-free NNCF "
                             "keeps the layers whose int4 error is largest in int8.")

    def _mode(self, ctx: StepContext) -> tuple[str, dict[str, Any]]:
        import nncf

        opts = ctx.options
        kwargs: dict[str, Any] = {"group_size": opts.group_size or DEFAULT_GROUP, "ratio": opts.ratio}
        if opts.group_size is None:  # a default adjusts to the layer; a size the user set is honoured or refused
            kwargs["advanced_parameters"] = nncf.AdvancedCompressionParameters(
                group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST)
        return ("INT4_SYM" if opts.symmetric else "INT4_ASYM"), kwargs


class _StatefulDecoder:
    """generate.Decoder over one infer request: the cache is the request's state, not an argument."""

    def __init__(self, compiled: Any, spec: CacheSpec):
        self.request = compiled.create_infer_request()
        self.logits = compiled.output(OUTPUTS[0])
        self.spec = spec
        self.max_chunk = spec.max_chunk

    def reset(self) -> None:
        self.request.reset_state()

    def forward(self, ids: "np.ndarray", start: int) -> "np.ndarray":
        import numpy as np

        if start + len(ids) > self.spec.max_cache_len:
            raise StepError(f"positions up to {start + len(ids)} exceed the artifact's max_cache_len "
                            f"{self.spec.max_cache_len}")
        feeds = {INPUTS[0]: np.asarray(ids, dtype=np.int64)[None],
                 INPUTS[1]: np.arange(start, start + len(ids), dtype=np.int64)}
        # The request reuses its output buffer on the next call: copy.
        return np.array(self.request.infer(feeds)[self.logits][0], copy=True)


@register_runtime
class LlmOpenVinoRuntime(OpenVinoCpu):
    """OpenVINO's CPU plugin (float32 inference precision) running the stateful decoder, state reset per sample."""

    name = "llm-openvino"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        ov = self.openvino()
        assert model.generation is not None  # this runtime runs text-generation models only
        core = ov.Core()
        with loading(f"OpenVINO could not load '{Path(path).name}'"):
            ir = core.read_model(str(path))
            problem = state_problem(ir)
            compiled = None if problem else core.compile_model(ir, "CPU", cpu_config())
        if problem:
            raise StepError(f"'{Path(path).name}': {problem}")
        return GenerationSession(_StatefulDecoder(compiled, CacheSpec.read(path)), model.generation.new_tokens)
