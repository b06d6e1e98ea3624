"""The `embedding-bag` rewrite, a member of the scatter family: F.embedding_bag (and so nn.EmbeddingBag) as an
embedding lookup and a dense reduction (a segment sum is a scatter_add by bag; buildsys/rewrites/scatter.py).

Bags given by offsets are ragged, which is what converters fail on (an ONNX Loop, a missing ExecuTorch
kernel, no Core ML op). The rewrite makes the raggedness a mask: `member[b, n]` is 1 when index n lies
in bag b (the last bag whose offset is ≤ n), so a bag's sum is one matmul `member @ embedding(input)`,
its mean that divided by the bag's size, its max an amax over the masked [bags, N, dim] tensor. The
cost is O(bags · N · dim) instead of O(N · dim): nothing for a recommender's batch, heavy for
thousands of bags at once. 2-D input (fixed-size bags) reduces over dim 1 directly.

Handled: modes sum / mean / max, offsets with or without include_last_offset, per_sample_weights
(sum), padding_idx (its entries neither add nor count, as in torch), empty bags (zeros), 1-D and 2-D
input. max_norm (which renormalises the weight in place) raises RewriteNotApplicable.
Equivalence: tests/rewrites/test_rewrites.py (sum and mean to fp32 accumulation error, max exactly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

_OP = "torch.nn.functional.embedding_bag"


def _reduce(values: torch.Tensor, keep: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce values [B, N, D] over N where keep [B, N] (float 0/1, or weights for sum); empty → 0."""
    import torch

    if mode == "sum":
        return torch.matmul(keep.unsqueeze(1), values).squeeze(1) if values.dim() == 3 else keep @ values
    count = (keep != 0).to(values.dtype).sum(dim=-1, keepdim=True)
    if mode == "mean":
        total = torch.matmul(keep.unsqueeze(1), values).squeeze(1) if values.dim() == 3 else keep @ values
        return total / torch.clamp(count, min=1.0)
    # max: members only; a bag with no member is 0, as torch returns
    full = values if values.dim() == 3 else values.unsqueeze(0)
    masked = torch.where(keep.unsqueeze(-1) != 0, full, torch.full_like(full[..., :1, :1], float("-inf")))
    best = masked.amax(dim=1)
    return torch.where(count > 0, best, torch.zeros_like(best))


def embedding_bag(input: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None = None,
                  max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                  mode: str = "mean", sparse: bool = False, per_sample_weights: torch.Tensor | None = None,
                  include_last_offset: bool = False, padding_idx: int | None = None) -> torch.Tensor:
    """F.embedding_bag's arguments and result (scale_grad_by_freq and sparse only concern gradients)."""
    import torch

    if max_norm is not None:
        raise RewriteNotApplicable("embedding-bag", _OP, "max_norm (it renormalises the weight in place)")
    if mode not in ("sum", "mean", "max"):
        raise ValueError(f"mode has to be one of sum, mean or max, got {mode!r}")
    if per_sample_weights is not None and mode != "sum":
        raise NotImplementedError(f"embedding_bag: per_sample_weights was not None. per_sample_weights is only "
                                  f"supported for mode='sum' (got mode='{mode}'). Please open a feature request "
                                  "on GitHub.")
    from buildsys.rewrites.mechanism import static_size

    if padding_idx is not None and padding_idx < 0:
        padding_idx += static_size(weight, 0, "embedding-bag", _OP)
    rows = torch.nn.functional.embedding(input, weight)
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("if input is 2D, then offsets has to be None, as input is treated is a mini-batch "
                             "of fixed length sequences.")
        keep = torch.ones(input.shape, dtype=weight.dtype) if per_sample_weights is None \
            else per_sample_weights.to(weight.dtype)
        if padding_idx is not None:
            keep = keep * (input != padding_idx).to(weight.dtype)
        return _reduce(rows, keep, mode)
    if input.dim() != 1 or offsets is None or offsets.dim() != 1:
        raise ValueError("input has to be 1D or 2D Tensor, and offsets a 1D Tensor when input is 1D")
    # index n belongs to the last bag that starts at or before it (empty bags start where the next does);
    # no slice of offsets: a slice's size (bags − 1) would make torch.export guard bags ≥ 3
    positions = torch.arange(input.shape[0], dtype=offsets.dtype)
    bag_of = (positions[:, None] >= offsets[None, :]).to(offsets.dtype).sum(dim=1) - 1      # [N]
    bags = torch.arange(offsets.shape[0] - 1 if include_last_offset else offsets.shape[0], dtype=offsets.dtype)
    keep = (bag_of[None, :] == bags[:, None]).to(weight.dtype)                               # [bags, N]
    if per_sample_weights is not None:
        keep = keep * per_sample_weights.to(weight.dtype)[None, :]
    if padding_idx is not None:
        keep = keep * (input != padding_idx).to(weight.dtype)[None, :]
    return _reduce(rows, keep, mode)


def _handlers() -> HandlerTable:
    import torch

    return {torch.nn.functional.embedding_bag: embedding_bag}


REWRITES = (
    Rewrite(
        name="embedding-bag",
        version=1,
        removes=("aten::embedding_bag", "aten::_embedding_bag", "aten::_embedding_bag_forward_only"),
        description="F.embedding_bag / nn.EmbeddingBag (sum, mean, max; offsets; per-sample weights; "
                    "padding_idx) as an embedding gather and a masked matmul or amax over bag membership",
        handlers=_handlers,
        # the legacy ONNX exporter writes embedding_bag with offsets as a Loop, which onnx2tf and others refuse
        signs=(r"\bLoop\b",),
        family="scatter",
    ),
)
