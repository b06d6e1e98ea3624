"""The runtimes of text-generation models: the artifacts' (ONNX Runtime, ExecuTorch) and the reference's.

Each wraps what it loads as a `generate.Decoder` and returns a `GenerationSession`, so a check
compares the same prefill logits, greedy tokens and NLL however they were computed. The reference
(`llm-pytorch`) runs the factory's model in eager PyTorch with no KV cache at all: the whole sequence
again for every token, so an error in the exported cache handling cannot hide in the reference too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.llm.contract import INPUTS, REFERENCE_RUNTIME, CacheSpec
from buildsys.formats.llm.generate import GenerationSession
from buildsys.formats.runtime import Runtime, Session, loading

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model


def message_start(exc: BaseException) -> str:
    """The first 300 characters of a loader's message: ONNX Runtime's, ONNX Runtime GenAI's and ExecuTorch's
    say what is wrong on lines after the first."""
    return str(exc).strip()[:300]


def _new_tokens(model: Model) -> int:
    assert model.generation is not None  # these runtimes run text-generation models only
    return model.generation.new_tokens


class _CacheDecoder:
    """Shared by the artifact decoders: zeroed caches, updated by each call's outputs."""

    def __init__(self, spec: CacheSpec):
        self.spec = spec
        self.max_chunk = spec.max_chunk
        self.reset()

    def reset(self) -> None:
        import numpy as np

        self.k = np.zeros(self.spec.cache_shape, dtype=np.float32)
        self.v = np.zeros(self.spec.cache_shape, dtype=np.float32)

    def forward(self, ids: np.ndarray, start: int) -> np.ndarray:
        import numpy as np

        if start + len(ids) > self.spec.max_cache_len:
            raise StepError(f"positions up to {start + len(ids)} exceed the artifact's max_cache_len "
                            f"{self.spec.max_cache_len}")
        positions = np.arange(start, start + len(ids), dtype=np.int64)
        logits, self.k, self.v = self._call(np.asarray(ids, dtype=np.int64)[None], positions)
        return np.asarray(logits)[0]

    def _call(self, ids: np.ndarray, positions: np.ndarray) -> tuple[Any, Any, Any]:
        raise NotImplementedError


class _OrtDecoder(_CacheDecoder):
    def __init__(self, session: Any, spec: CacheSpec):
        self.session = session
        super().__init__(spec)

    def _call(self, ids: np.ndarray, positions: np.ndarray) -> tuple[Any, Any, Any]:
        logits, k, v = self.session.run(None, dict(zip(INPUTS, (ids, positions, self.k, self.v))))
        return logits, k, v


class _PteDecoder(_CacheDecoder):
    def __init__(self, method: Any, spec: CacheSpec):
        self.method = method
        super().__init__(spec)

    def _call(self, ids: np.ndarray, positions: np.ndarray) -> tuple[Any, Any, Any]:
        import numpy as np
        import torch

        logits, k, v = (np.ascontiguousarray(t.numpy()) for t in
                        self.method.execute([torch.from_numpy(a) for a in (ids, positions, self.k, self.v)]))
        return logits, k, v


class _EagerDecoder:
    """The reference: no cache; every call runs the model on everything fed since `reset`."""

    def __init__(self, lm: Any, max_chunk: int):
        self.lm = lm
        self.max_chunk = max_chunk
        self.history: list[int] = []

    def reset(self) -> None:
        self.history = []

    def forward(self, ids: np.ndarray, start: int) -> np.ndarray:
        import torch

        assert start == len(self.history), "the reference is fed in order"
        self.history += [int(i) for i in ids]
        with torch.inference_mode():
            logits = self.lm(input_ids=torch.tensor([self.history]), use_cache=False).logits[0, -len(ids):]
        return logits.float().numpy()


class KvCacheEagerDecoder:
    """PyTorch eager as an application runs it: transformers' own DynamicCache, prefill once, then one
    token per call (the usual `generate` path). Not the reference (that one has no cache, on purpose):
    the fair eager baseline of a speed comparison (`modelbuild bench`, benchmarks/llm_generation.py)."""

    def __init__(self, lm: Any, max_chunk: int):
        self.lm, self.max_chunk, self.past = lm, max_chunk, None

    def reset(self) -> None:
        self.past = None

    def forward(self, ids: np.ndarray, start: int) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.lm(input_ids=torch.tensor([[int(i) for i in ids]]), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0].float().numpy()


def eager_kv_session(model: Model, root: Path, step: str) -> GenerationSession:
    """The factory's model in eager PyTorch with transformers' KV cache, as a GenerationSession."""
    from buildsys.formats.llm.decoder import load_lm

    assert model.generation is not None
    return GenerationSession(KvCacheEagerDecoder(load_lm(model, root, "", step), model.generation.max_seq_len),
                             model.generation.new_tokens)


@register_runtime
class LlmOnnxRuntime(Runtime):
    """ONNX Runtime (CPU provider) running the static-cache decoder: prefill in one call, then a token per call."""

    name = "llm-onnxruntime"
    requires = ("onnxruntime",)

    def load(self, path: Path, model: Model, root: Path) -> Session:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        with loading(f"onnxruntime could not load '{Path(path).name}'", message_start):
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return GenerationSession(_OrtDecoder(session, CacheSpec.read(path)), _new_tokens(model))


@register_runtime
class LlmExecutorchRuntime(Runtime):
    """ExecuTorch's C++ runtime (Python bindings, XNNPACK) running the one-token-per-call program."""

    name = "llm-executorch"
    requires, extra = ("executorch",), "executorch"

    def preimport(self) -> None:
        """`executorch.runtime` too: its import (kernel libraries, seconds and ~100+ MB) is not a model's load."""
        super().preimport()
        import executorch.runtime  # noqa: F401

    def load(self, path: Path, model: Model, root: Path) -> Session:
        from executorch.runtime import Runtime as EtRuntime

        with loading(f"ExecuTorch could not load '{Path(path).name}'", message_start):
            method = EtRuntime.get().load_program(Path(path)).load_method("forward")
        return GenerationSession(_PteDecoder(method, CacheSpec.read(path)), _new_tokens(model))


@register_runtime
class LlmTorchEager(Runtime):
    """The factory's causal LM in eager PyTorch without a KV cache: the reference of text-generation models."""

    name = REFERENCE_RUNTIME
    requires, extra = ("torch", "transformers"), "llm"

    def load(self, path: Path | None, model: Model, root: Path) -> Session:
        from buildsys.formats.llm.decoder import load_lm

        assert model.generation is not None
        return GenerationSession(_EagerDecoder(load_lm(model, root, "", "reference"), model.generation.max_seq_len),
                                 model.generation.new_tokens)
