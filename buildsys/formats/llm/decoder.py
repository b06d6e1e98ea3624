"""A Hugging Face causal LM as one exportable function with an explicit static KV cache (worker side).

`StaticCacheDecoder(lm)(tokens, cache_position, k_cache, v_cache)` returns the logits and the caches
with the new keys and values written at `cache_position` (contract.py). The model runs unchanged
with a transformers `Cache` whose layers hold the given tensors and write functionally
(`index_copy`, not in place), and with an explicit additive mask (key j visible to query i iff
j <= cache_position[i]), so nothing in the graph depends on state outside its inputs: torch.export
gives the same program at every position, and the ONNX exporter sees no mutation. Works for any
architecture transformers builds on its generic cache (checked: Llama with RoPE and GQA, GPT-2).
torch and transformers are imported inside functions: the registry imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.formats.llm.contract import CacheSpec

if TYPE_CHECKING:
    import torch

    from buildsys.config.schema import Model


def load_lm(model: "Model", root: Path, name: str, step: str) -> "torch.nn.Module":
    """The factory's causal LM, in eval mode, float32, checked to return logits."""
    from buildsys.formats.torch.loading import load_module

    lm = load_module(model, root, name=name, step=step).float()
    if not hasattr(lm, "config") or not callable(getattr(lm, "get_output_embeddings", None)):
        from buildsys.errors import StepError

        raise StepError(f"model '{name}': the factory returned {type(lm).__name__}, not a Hugging Face causal LM "
                        f"(a *ForCausalLM module with a config) (step {step})")
    return lm


def cache_spec(lm: "torch.nn.Module", max_cache_len: int, max_chunk: int) -> CacheSpec:
    """The cache geometry, read from one eager step with transformers' own cache (no config guessing:
    GQA's kv heads, GPT-2's n_head, a head_dim that is not hidden/heads all come out right)."""
    import torch

    with torch.no_grad():
        out = lm(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    layers = out.past_key_values.layers
    _, heads, _, dim = layers[0].keys.shape
    return CacheSpec(layers=len(layers), kv_heads=int(heads), head_dim=int(dim), max_cache_len=max_cache_len,
                     vocab=int(out.logits.shape[-1]), max_chunk=max_chunk)


def static_cache_decoder(lm: "torch.nn.Module") -> "torch.nn.Module":
    """The exportable wrapper of `lm` (see the module doc)."""
    import torch
    from transformers.cache_utils import Cache, StaticLayer

    class ExplicitLayer(StaticLayer):
        """A static layer over given tensors that writes at the given positions, functionally."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor):
            super().__init__(max_cache_len=keys.shape[2])
            self.k: torch.Tensor = keys
            self.v: torch.Tensor = values
            self.keys, self.values, self.position = keys, values, position
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self.cumulative_length = position[0]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            self.k = self.k.index_copy(2, self.position, key_states.to(self.k.dtype))
            self.v = self.v.index_copy(2, self.position, value_states.to(self.v.dtype))
            self.keys, self.values = self.k, self.v
            return self.k, self.v

    class StaticCacheDecoder(torch.nn.Module):
        def __init__(self, lm: torch.nn.Module):
            super().__init__()
            self.lm = lm

        def forward(self, tokens: torch.Tensor, cache_position: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            layers: list[Any] = [ExplicitLayer(k_cache[i], v_cache[i], cache_position) for i in range(k_cache.shape[0])]
            visible = torch.arange(k_cache.shape[3]).unsqueeze(0) <= cache_position.unsqueeze(1)
            mask = torch.zeros(visible.shape, dtype=k_cache.dtype).masked_fill(~visible, torch.finfo(k_cache.dtype).min)
            out = self.lm(input_ids=tokens, position_ids=cache_position.unsqueeze(0), attention_mask=mask[None, None],
                          past_key_values=Cache(layers=layers), use_cache=True)
            return out.logits, torch.stack([layer.k for layer in layers]), torch.stack([layer.v for layer in layers])

    return StaticCacheDecoder(lm).eval()


def example_inputs(spec: CacheSpec, length: int) -> tuple["torch.Tensor", ...]:
    """Inputs of one call with `length` tokens at the start of an empty cache. The two caches are
    distinct tensors: torch.export would merge aliased inputs into one."""
    import torch

    return (torch.zeros(1, length, dtype=torch.long), torch.arange(length, dtype=torch.long),
            torch.zeros(spec.cache_shape), torch.zeros(spec.cache_shape))


def stateful_cache_decoder(lm: "torch.nn.Module", spec: CacheSpec) -> "torch.nn.Module":
    """`(tokens, cache_position) → logits` with the caches as registered buffers `k_cache`, `v_cache`
    ([layers, 1, kv_heads, max_cache_len, head_dim]) written **in place**: coremltools' pattern for
    stateful models (iOS18 `ct.StateType`; a traced in-place write into a buffer becomes
    `read_state` → `slice_update` → `coreml_update_state`). The new keys and values of a call go to
    the slice `cache_position[0] : cache_position[0] + T` (positions are consecutive, as generate.py
    feeds them); the mask is decoder.py's explicit one. A slice assignment, not indexing by the
    position tensor: coremltools drops an `index_put_` into a state without converting it (the
    program then never writes its cache)."""
    import torch
    from transformers.cache_utils import Cache, StaticLayer

    class BufferLayer(StaticLayer):
        """Layer `index` of the cache buffers, written in place at the call's positions."""

        def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, index: int, position: torch.Tensor):
            super().__init__(max_cache_len=spec.max_cache_len)
            self.k_cache, self.v_cache, self.index, self.position = k_cache, v_cache, index, position
            self.keys, self.values = k_cache[index], v_cache[index]
            self.dtype, self.device = k_cache.dtype, k_cache.device
            self.is_initialized = True
            self.cumulative_length = position[0]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            start = self.position[0]
            end = start + key_states.shape[2]
            i = self.index
            self.k_cache[i:i + 1, :, :, start:end] = key_states[None].to(self.dtype)
            self.v_cache[i:i + 1, :, :, start:end] = value_states[None].to(self.dtype)
            return self.k_cache[i], self.v_cache[i]

    class StatefulCacheDecoder(torch.nn.Module):
        def __init__(self, lm: torch.nn.Module):
            super().__init__()
            self.lm = lm
            self.register_buffer("k_cache", torch.zeros(spec.cache_shape))
            self.register_buffer("v_cache", torch.zeros(spec.cache_shape))

        k_cache: torch.Tensor
        v_cache: torch.Tensor

        def forward(self, tokens: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
            layers: list[Any] = [BufferLayer(self.k_cache, self.v_cache, i, cache_position) for i in range(spec.layers)]
            visible = torch.arange(spec.max_cache_len).unsqueeze(0) <= cache_position.unsqueeze(1)
            mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
            out = self.lm(input_ids=tokens, position_ids=cache_position.unsqueeze(0), attention_mask=mask[None, None],
                          past_key_values=Cache(layers=layers), use_cache=True)
            return out.logits

    return StatefulCacheDecoder(lm).eval()
