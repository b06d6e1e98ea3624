"""The `llm-tflite` formats: a decoder LM as one .tflite with `prefill` and `decode` signatures over its KV cache.

Converted by litert-torch (`litert_torch.signature(...).convert()`) from decoder.py's static-cache wrapper,
the way litert-torch's own generative examples ship an LLM: one flatbuffer, the weights shared by two
signatures that differ only in the number of tokens per call, `prefill` (T = max_seq_len) and `decode`
(T = 1), each taking the KV cache as input and giving the updated cache as output. The I/O is
contract.py's (`tokens`, `cache_position`, `k_cache`, `v_cache` → `logits`, `k_cache_out`,
`v_cache_out`), with the caches stacked over layers as in every format of this family (litert-torch's
examples keep one tensor per layer). litert-torch narrows int64 to int32, so ids and positions are int32.

A prompt shorter than T is prefilled padded to T: the padding's keys and values land at positions after
the prompt, which the mask hides from every query before them and the next real token overwrites before
any query can see it. A chunk whose padding would run past the cache goes through `decode` token by token.

Precisions: fp32; int8 through litert-torch's generative quantization recipes (ai-edge-quantizer):
`weight-only` (default; int8 per-channel weights, float computation) or `dynamic` (int8 weights,
activations quantized per call). The KV cache stays float32. A conversion that fails names the ATen ops
litert-torch has no lowering for and the modules that use them, when that is the cause.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from buildsys.errors import StepError
from buildsys.formats import register, register_formats, register_runtime
from buildsys.formats.base import Format, StepContext, StepOptions
from buildsys.formats.llm.contract import INPUTS, OUTPUTS, CacheSpec
from buildsys.formats.llm.export import LlmExportStep
from buildsys.formats.llm.generate import GenerationSession
from buildsys.formats.runtime import Runtime, Session, loading

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

LLM_TFLITE = register_formats(Format.variants("llm-tflite", {
    "fp32": "Decoder LM (task: text-generation) as one TFLite flatbuffer (litert-torch) with signatures prefill "
            "(max_seq_len tokens per call) and decode (one token), the static KV cache as input and output; float32.",
    "int8": "Decoder LM as a TFLite flatbuffer (litert-torch) with prefill and decode signatures and int8 weights "
            "(litert-torch's generative quant recipes: weight-only (default) or dynamic); the KV cache stays float32.",
}, filename="model.tflite", runtime="llm-litert", task="text-generation"))

PREFILL, DECODE = "prefill", "decode"


def signature_problem(interpreter: Any, spec: CacheSpec) -> str | None:
    """Why the flatbuffer is not the two-signature decoder the runtime expects, or None."""
    signatures = interpreter.get_signature_list()
    wanted = [DECODE] + ([PREFILL] if spec.max_chunk > 1 else [])
    missing = [s for s in wanted if s not in signatures]
    if missing:
        return f"the flatbuffer has signatures [{', '.join(signatures)}], not [{', '.join(wanted)}]"
    for name in wanted:
        runner = interpreter.get_signature_runner(name)
        ins, outs = runner.get_input_details(), runner.get_output_details()
        if sorted(ins) != sorted(INPUTS) or sorted(outs) != sorted(OUTPUTS):
            return (f"signature '{name}' has inputs [{', '.join(ins)}] and outputs [{', '.join(outs)}]; the decoder "
                    f"has inputs [{', '.join(INPUTS)}] and outputs [{', '.join(OUTPUTS)}]")
        tokens = 1 if name == DECODE else spec.max_chunk
        if [int(d) for d in ins[INPUTS[0]]["shape"]] != [1, tokens] or \
                [int(d) for d in ins[INPUTS[2]]["shape"]] != list(spec.cache_shape):
            return (f"signature '{name}' takes tokens {list(ins[INPUTS[0]]['shape'])} and caches "
                    f"{list(ins[INPUTS[2]]['shape'])}; llm.json says [1, {tokens}] and {list(spec.cache_shape)}")
    return None


def weight_elements(flatbuffer: bytes) -> dict[str, int]:
    """Elements of the flatbuffer's constant tensors (each buffer once) per element type: what quantizing did."""
    import numpy as np
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    names = {code: str(name).lower() for name, code in tfl.TENSOR_TYPE_TO_CODE.items()}
    model = tfl.read_model(flatbuffer)
    seen: dict[int, tuple[str, int]] = {}
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            buffer = model.buffers[tensor.buffer]
            if (buffer.data is not None and len(buffer.data)) or (buffer.size or 0):
                shape = tensor.shape if tensor.shape is not None else []
                seen[tensor.buffer] = (names.get(tensor.type, str(tensor.type)), int(np.prod(shape)) if len(shape) else 1)
    counts: dict[str, int] = {}
    for kind, n in seen.values():
        counts[kind] = counts.get(kind, 0) + n
    return dict(sorted(counts.items()))


def unlowered_ops(module: Any, args: tuple[Any, ...]) -> dict[str, list[str]]:
    """ATen ops of `module`'s core-decomposed program that litert-torch's lowering registry lacks, each with
    the modules (by qualified name) that use it: which part of an architecture a failed conversion tripped on.
    Empty when every op has a lowering or the program cannot be made (the conversion error then stands alone)."""
    import torch

    from buildsys.formats.tflite.litert_torch import lowering_ops

    try:
        with torch.no_grad():
            program = torch.export.export(module, args, strict=False).run_decompositions()
        known = set(lowering_ops())
    except Exception:
        return {}
    found: dict[str, set[str]] = {}
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or getattr(target, "namespace", "") != "aten":
            continue
        op = target.__name__.split(".")[0]
        # Runtime assertions (`_assert_tensor_metadata`, every transformers model has them) are graph
        # checks litert-torch drops before lowering, not ops it has to lower.
        if op in known or op.startswith("_assert") or op.startswith("sym_constrain_range"):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        where = [path for path, _ in stack.values()][-1:] or ["(top level)"]
        found.setdefault(op, set()).update(p.replace("L['self'].", "").removeprefix("d.lm.") for p in where)
    return {op: sorted(paths)[:3] for op, paths in sorted(found.items())}


class _LlmTfliteFromPyTorch(LlmExportStep):
    """Shared body: load the LM, convert its static-cache decoder with a prefill and a decode signature."""

    packages = ("torch", "transformers", "litert-torch", "litert-converter", "ai-edge-quantizer", "ai-edge-litert")
    extra = "litert-torch"
    description = ("decoder.py's StaticCacheDecoder, litert_torch.signature('prefill', T = max_seq_len) and "
                   "signature('decode', T = 1), convert().")
    Options = StepOptions

    def _quant_config(self, ctx: StepContext) -> tuple[Any, dict[str, Any]]:
        """The litert-torch QuantConfig of the precision (None: float) and the facts to report."""
        return None, {}

    def _run(self, ctx: StepContext) -> dict[str, Any]:
        import torch

        from buildsys.errors import describe
        from buildsys.formats.llm.decoder import example_inputs, static_cache_decoder

        try:
            import litert_torch
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise self.fail(ctx, f"litert-torch is not installed ({exc}); see the README's litert-torch "
                                 "install line") from exc
        lm, spec, gen = self._decoder(ctx)
        decoder = _named_outputs(static_cache_decoder(lm))
        lengths = {DECODE: 1, **({PREFILL: gen.max_seq_len} if gen.max_seq_len > 1 else {})}
        quant, metrics = self._quant_config(ctx)
        converter = litert_torch.Converter()
        for name, length in lengths.items():
            converter.signature(name, decoder, sample_kwargs=dict(zip(INPUTS, example_inputs(spec, length))))
        try:
            with torch.no_grad():
                converted = converter.convert(quant_config=quant)
        except Exception as exc:
            ops = unlowered_ops(decoder, example_inputs(spec, 1))
            part = ("; litert-torch has no lowering for " + "; ".join(f"aten.{op} (used by {', '.join(where)})"
                                                                       for op, where in ops.items())) if ops else ""
            raise self.fail(ctx, f"litert-torch could not convert the {type(lm).__name__} decoder: "
                                 f"{describe(exc)[:300]}{part}") from exc
        path = ctx.out_dir / LLM_TFLITE[self.precision].filename
        converted.export(str(path))
        flatbuffer = path.read_bytes()
        shipped = self._ship(ctx, spec)
        interpreter = Interpreter(model_content=flatbuffer)
        try:
            interpreter.allocate_tensors()
            problem = signature_problem(interpreter, spec)
        except Exception as exc:
            raise self.fail(ctx, f"litert-torch wrote a model LiteRT cannot prepare: {describe(exc)[:300]}") from exc
        if problem:
            raise self.fail(ctx, problem)
        weights = weight_elements(flatbuffer)
        if quant is not None:
            total = sum(weights.values()) or 1
            share = round(weights.get("int8", 0) / total, 4)
            if not share:  # a "quantized" file that is float throughout would pass any check
                raise self.fail(ctx, f"litert-torch's {metrics.get('scheme')} recipe quantized none of the decoder's "
                                     f"weights ({total:,} elements stay {', '.join(weights)})")
            from buildsys.formats.tflite.weights import measure

            metrics["quantized_weights"] = measure(path, self.precision)  # per layer, on the flatbuffer
        return {"bytes": len(flatbuffer), **shipped, "signatures": lengths, "weights": weights, "converter": f"litert-torch {litert_torch.__version__}",
                **metrics}


def _named_outputs(decoder: Any) -> Any:
    """The decoder returning a dict, so the signatures' outputs carry contract.py's names (not output_0…)."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.d = inner

        def forward(self, tokens: torch.Tensor, cache_position: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor) -> dict[str, torch.Tensor]:
            return dict(zip(OUTPUTS, self.d(tokens, cache_position, k_cache, v_cache)))

    return Named(decoder).eval()


@register
class LlmTfliteFromPyTorch(_LlmTfliteFromPyTorch):
    """Convert a causal LM's static-KV-cache decoder to TFLite with litert-torch (prefill and decode signatures)."""

    name = "llm-tflite-from-pytorch"
    produces = "llm-tflite"
    precision = "fp32"


class LlmTfliteInt8Options(StepOptions):
    """Which of litert-torch's generative quantization recipes the int8 member applies."""

    scheme: Literal["weight-only", "dynamic"] = Field(
        default="weight-only", description="'weight-only' (litert-torch's full_weight_only_recipe): int8 weights "
        "per output channel, float32 activations; 'dynamic' (full_dynamic_recipe): int8 weights per channel and "
        "activations quantized per call. Both quantize every weight of the fully connected, batch matmul and "
        "embedding ops; the KV cache stays float32.")


@register
class LlmTfliteInt8FromPyTorch(_LlmTfliteFromPyTorch):
    """As llm-tflite, with the weights int8 by a litert-torch generative quant recipe (weight-only or dynamic)."""

    name = "llm-tflite-int8-from-pytorch"
    produces = "llm-tflite-int8"
    precision = "int8"
    Options = LlmTfliteInt8Options
    committed_metrics = ("scheme", "quantized_weights")
    version = 2  # 2: quantized_weights measured per layer on the flatbuffer (buildsys.formats.quantized_weights)
    description = ("decoder.py's StaticCacheDecoder, litert_torch prefill and decode signatures, convert(quant_config="
                   "quant_recipes.full_weight_only_recipe() or full_dynamic_recipe()).")

    @classmethod
    def describe_facts(cls, facts: dict[str, Any]) -> list[str]:
        if "scheme" not in facts:
            return []
        what = {"weight-only": "int8 weights per output channel, float32 activations (litert-torch weight-only recipe)",
                "dynamic": "int8 weights per output channel, activations quantized per call (litert-torch dynamic "
                           "recipe)"}.get(facts["scheme"], facts["scheme"])
        return [what]

    def _quant_config(self, ctx: StepContext[LlmTfliteInt8Options]) -> tuple[Any, dict[str, Any]]:
        from litert_torch.generative.quantize import quant_recipes

        scheme = ctx.options.scheme
        recipe = quant_recipes.full_weight_only_recipe if scheme == "weight-only" else quant_recipes.full_dynamic_recipe
        return recipe(), {"scheme": scheme}


class _LiteRtDecoder:
    """generate.Decoder over the two signature runners: the caches are fed in and read back each call."""

    def __init__(self, interpreter: Any, spec: CacheSpec):
        import numpy as np

        self.spec = spec
        self.max_chunk = spec.max_chunk
        self.decode = interpreter.get_signature_runner(DECODE)
        self.prefill = interpreter.get_signature_runner(PREFILL) if spec.max_chunk > 1 else None
        details = self.decode.get_input_details()
        self.ids_type = details[INPUTS[0]]["dtype"]  # int32: litert-torch narrows int64
        self.pos_type = details[INPUTS[1]]["dtype"]
        self.k = self.v = np.zeros(0)
        self.reset()

    def reset(self) -> None:
        import numpy as np

        self.k = np.zeros(self.spec.cache_shape, dtype=np.float32)
        self.v = np.zeros(self.spec.cache_shape, dtype=np.float32)

    def _run(self, runner: Any, ids: "np.ndarray", start: int) -> "np.ndarray":
        import numpy as np

        out = runner(tokens=np.asarray(ids, dtype=self.ids_type)[None],
                     cache_position=np.arange(start, start + len(ids), dtype=self.pos_type), k_cache=self.k,
                     v_cache=self.v)
        self.k, self.v = out[OUTPUTS[1]], out[OUTPUTS[2]]
        return np.asarray(out[OUTPUTS[0]])[0]

    def forward(self, ids: "np.ndarray", start: int) -> "np.ndarray":
        import numpy as np

        count, chunk = len(ids), self.spec.max_chunk
        if start + count > self.spec.max_cache_len:
            raise StepError(f"positions up to {start + count} exceed the artifact's max_cache_len "
                            f"{self.spec.max_cache_len}")
        if count > chunk:
            raise StepError(f"{count} tokens in one call; the artifact takes at most {chunk}")
        if count > 1 and self.prefill is not None and start + chunk <= self.spec.max_cache_len:
            padded = np.zeros(chunk, dtype=np.int64)
            padded[:count] = ids
            return self._run(self.prefill, padded, start)[:count]
        # One token, or a chunk whose padding would run past the cache: decode token by token.
        return np.concatenate([self._run(self.decode, ids[i:i + 1], start + i) for i in range(count)], axis=0)


@register_runtime
class LlmLiteRtRuntime(Runtime):
    """The LiteRT interpreter (XNNPACK CPU delegate) running the prefill and decode signatures."""

    name = "llm-litert"
    requires, extra = ("ai_edge_litert",), "tflite"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        from ai_edge_litert.interpreter import Interpreter

        assert model.generation is not None  # this runtime runs text-generation models only
        spec = CacheSpec.read(path)
        with loading(f"LiteRT could not load '{Path(path).name}'"):
            interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
            interpreter.allocate_tensors()
            problem = signature_problem(interpreter, spec)
        if problem:
            raise StepError(f"'{Path(path).name}': {problem}")
        return GenerationSession(_LiteRtDecoder(interpreter, spec), model.generation.new_tokens)
