"""The `llm-coreml` format: a decoder LM as a stateful Core ML ML Program (iOS18), the KV cache as model state.

decoder.py's `stateful_cache_decoder` holds the caches as registered buffers written in place; traced
with `torch.jit.trace` and converted by coremltools with `ct.StateType` for `k_cache` and `v_cache`
(coremltools' documented pattern for stateful models), the program takes `(tokens, cache_position) →
logits` and keeps the cache in an `MLState` between calls (`read_state` → `slice_update` →
`coreml_update_state` per layer), never copied in or out. `tokens` and `cache_position` have a
dynamic length (1 to `max_seq_len`): the prompt is prefilled in one call, then one token per call.

Core ML states are float16 only (coremltools refuses a float32 state), so the cache is stored in
float16 in both members; `llm-coreml` computes in float32 around it (casts at each read and write),
`llm-coreml-fp16` computes in float16 (what the GPU and Neural Engine run).

Conversion runs on Linux; running the package needs macOS. Elsewhere its check runs the MIL
reference interpreter (`llm-coreml-mil`, coreml/mil.py with the state ops), labelled as such.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from buildsys.formats import register, register_formats
from buildsys.formats.base import COREMLTOOLS_IMPORT_PROBES, COREMLTOOLS_PROBES, Format, StepContext, StepOptions
from buildsys.formats.llm.export import LlmExportStep

LLM_COREML = register_formats(Format.variants("llm-coreml", {
    "fp32": "Decoder LM (task: text-generation) as a stateful Core ML ML Program (.mlpackage, iOS18): "
            "(tokens, cache_position) → logits, the KV cache as float16 model state, float32 compute.",
    "fp16": "Decoder LM as a stateful Core ML ML Program (iOS18), the KV cache as float16 state, float16 "
            "weights and compute (GPU / Neural Engine precision).",
}, filename="model.mlpackage", runtime="llm-coreml", task="text-generation"))

#: The state inputs of the program, in decoder.py's cache order.
STATES = ("k_cache", "v_cache")
#: The inputs and output of the stateful program (the caches are states, not I/O).
INPUTS = ("tokens", "cache_position")
OUTPUT = "logits"


@contextlib.contextmanager
def _scalar_casts() -> Iterator[None]:
    """Convert aten::Int / aten::Bool of a folded one-element tensor under NumPy >= 2.4.

    coremltools 9.0's `_cast` does `int(x.val)` on a constant of shape (1,), which NumPy 2.4 refuses
    ("only 0-dimensional arrays can be converted to Python scalars"; coremltools #2633): transformers'
    cache code traces `size → NumToTensor → Int` and the conversion stops there. Taking the element
    first is the same value. Swapped in for this conversion only."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    originals = {name: table.get(name) for name in ("int", "bool")}

    def wrap(name: str, kind: type) -> Any:
        original = originals[name]

        def cast(context: Any, node: Any) -> None:
            x = _get_inputs(context, node, expected=1)[0]
            if x.can_be_folded_to_const() and isinstance(x.val, np.ndarray) and x.val.size == 1:
                context.add(mb.const(val=kind(x.val.reshape(()).item()), name=node.name), node.name)
                return None
            return original(context, node)
        return cast

    for name, kind in (("int", int), ("bool", bool)):
        if originals[name] is not None:
            table[name] = wrap(name, kind)
    try:
        yield
    finally:
        for name, original in originals.items():
            if original is not None:
                table[name] = original


class _LlmCoremlFromPyTorch(LlmExportStep):
    """Shared body: trace the stateful decoder, convert with its caches as states, save reproducibly."""

    packages = ("torch", "transformers", "coremltools")
    extra = "coreml"
    toolchain = "coreml"
    unused_imports = COREMLTOOLS_PROBES
    probed_imports = COREMLTOOLS_IMPORT_PROBES
    Options = StepOptions
    description = ("decoder.py's stateful_cache_decoder (caches as buffers written in place), torch.jit.trace, "
                   "coremltools.convert(states=[StateType k_cache, v_cache], minimum_deployment_target=iOS18).")

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        import numpy as np
        import torch

        from buildsys.formats.coreml.frontend import conversion_failure, make_reproducible
        from buildsys.formats.llm.decoder import stateful_cache_decoder

        lm, spec, gen = self._decoder(ctx)
        decoder = stateful_cache_decoder(lm, spec)
        length = min(2, gen.max_seq_len)
        example = (torch.zeros(1, length, dtype=torch.long), torch.arange(length, dtype=torch.long))
        try:
            with torch.no_grad():
                traced = torch.jit.trace(decoder, example, check_trace=False)
        except Exception as exc:
            from buildsys.errors import describe

            raise self.fail(ctx, f"torch.jit.trace of the stateful decoder failed: {describe(exc)}") from exc
        import coremltools as ct

        seq = ct.RangeDim(lower_bound=1, upper_bound=gen.max_seq_len, default=length)
        state = [ct.StateType(wrapped_type=ct.TensorType(shape=spec.cache_shape, dtype=np.float16), name=n)
                 for n in STATES]
        precision = ct.precision.FLOAT32 if self.precision == "fp32" else ct.precision.FLOAT16
        try:
            with _scalar_casts():
                mlmodel = ct.convert(
                    traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                    inputs=[ct.TensorType(name="tokens", shape=(1, seq), dtype=np.int32),
                            ct.TensorType(name="cache_position", shape=(seq,), dtype=np.int32)],
                    outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)], states=state,
                    compute_precision=precision)
        except Exception as exc:
            raise self.fail(ctx, conversion_failure(exc)) from exc
        user = mlmodel.user_defined_metadata
        user.pop("com.github.apple.coremltools.conversion_date", None)  # a date would change every build's bytes
        user["com.modelbuild.model"] = ctx.model_name
        mlmodel.short_description = ctx.model.description or f"{ctx.model_name}: decoder LM with a stateful KV cache"
        path = ctx.out_dir / LLM_COREML[self.precision].filename
        mlmodel.save(str(path))
        make_reproducible(path)
        ops = _op_counts(mlmodel)
        return {"bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()), **self._ship(ctx, spec),
                "state_ops": {k: ops.get(k, 0) for k in (
                    "read_state", "slice_update", "write_state")}}


def _op_counts(mlmodel: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for function in mlmodel.get_spec().mlProgram.functions.values():
        for block in function.block_specializations.values():  # coreml_update_state is `write_state` here
            for operation in block.operations:
                counts[operation.type] = counts.get(operation.type, 0) + 1
    return counts


@register
class LlmCoremlFromPyTorch(_LlmCoremlFromPyTorch):
    """Convert a causal LM's stateful decoder to a Core ML ML Program, float32 compute, float16 KV-cache state."""

    name = "llm-coreml-from-pytorch"
    produces = "llm-coreml"
    precision = "fp32"


@register
class LlmCoremlFp16FromPyTorch(_LlmCoremlFromPyTorch):
    """As llm-coreml, computing in float16 (float16 weights)."""

    name = "llm-coreml-fp16-from-pytorch"
    produces = "llm-coreml-fp16"
    precision = "fp16"
