"""The `sdpa` rewrite: F.scaled_dot_product_attention as explicit matmul, mask and softmax.

softmax(q·kᵀ·scale + mask)·v, written out: a boolean mask (True = attend) and is_causal (a lower-left
triangle, top-left aligned as torch's math backend) become −inf where masked, a float mask is added,
enable_gqa repeats each key/value head for its group of query heads. The softmax is the stable
exp(s − max)/Σ with the max clamped to a finite value and the sum clamped away from 0, so a row with
every position masked gives 0 as torch's SDPA does (not NaN). nn.MultiheadAttention calls SDPA when
need_weights=False; under the rewrite its fused fast path is off (a torch function mode disables it),
so it is rewritten too. dropout_p > 0 raises RewriteNotApplicable (random). Equivalence:
tests/rewrites/test_rewrites.py (≤ 1e-4 × max|reference|: the same sums in another order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

_OP = "torch.nn.functional.scaled_dot_product_attention"


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention's arguments and result, without the fused kernel."""
    import math

    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant, static_size

    if dropout_p > 0.0:
        raise RewriteNotApplicable("sdpa", _OP, f"dropout_p={dropout_p} (random: export with dropout off)")
    if is_causal and attn_mask is not None:
        raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    if enable_gqa and key.dim() >= 3:
        heads, kv_heads = static_size(query, -3, "sdpa", _OP), static_size(key, -3, "sdpa", _OP)
        if heads != kv_heads:
            key = key.repeat_interleave(heads // kv_heads, dim=-3)
            value = value.repeat_interleave(heads // kv_heads, dim=-3)
    factor = scale if scale is not None else 1.0 / math.sqrt(static_size(query, -1, "sdpa", _OP))
    scores = torch.matmul(query, key.transpose(-2, -1)) * factor       # [..., L, S]
    if is_causal:
        length, source = query.shape[-2], key.shape[-2]
        if isinstance(length, torch.SymInt) or isinstance(source, torch.SymInt):  # dynamic sequence: built in the graph
            attn_mask = torch.ones(length, source, dtype=torch.bool).tril()
        else:
            attn_mask = constant(np.tril(np.ones((int(length), int(source)), dtype=bool)))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)
    lowest = torch.finfo(scores.dtype).min
    peak = torch.clamp(scores.amax(dim=-1, keepdim=True), min=lowest)  # finite even when a row is all −inf
    weights = torch.exp(scores - peak)
    total = weights.sum(dim=-1, keepdim=True)
    probs = weights / torch.clamp(total, min=torch.finfo(scores.dtype).tiny)  # all-masked row: 0/tiny = 0
    return torch.matmul(probs, value)


def _handlers() -> HandlerTable:
    import torch

    return {torch.nn.functional.scaled_dot_product_attention: scaled_dot_product_attention}


REWRITES = (
    Rewrite(
        name="sdpa",
        version=1,
        removes=("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_flash_attention",
                 "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention"),
        description="F.scaled_dot_product_attention (bool or float masks, is_causal, scale, enable_gqa) as "
                    "explicit matmul, mask, softmax and matmul",
        handlers=_handlers,
    ),
)
