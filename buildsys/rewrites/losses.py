"""The losses family: the classification losses whose fused ops converters lack or write imprecisely, in
log_softmax, gather, where and sums (every converter has them), with torch's arguments and reductions.

- nll_loss(input, target, weight, ignore_index, reduction): −input at the target class (a gather along the class
  dim: 1, or 0 for an unbatched input), times the class's weight, 0 where the target is `ignore_index`; 'mean'
  divides by the summed weights of the targets kept (NaN when none is, as torch). Any number of extra dims (the
  2-D / K-D loss). Legacy size_average / reduce read as torch reads them.
- cross_entropy(…, label_smoothing): log_softmax then nll_loss for class indices; torch's smoothing term
  −Σ_c w_c·log p_c (0 at ignored positions; 'mean' over the same weight sum as the nll part) mixed in by ε / C.
  Class probabilities (a floating target of the input's shape): −Σ_c w_c·t_c·log p_c, the target smoothed
  to t·(1 − ε) + ε / C first, 'mean' over the positions (numel / C), as torch.
- soft_margin_loss: log1p(exp(−y·x)); multilabel_soft_margin_loss: −(y·log σ(x) + (1 − y)·log σ(−x)), weighted,
  the mean over the classes, log σ(x) = min(x, 0) − log1p(exp(−|x|)); log1p kept precise (the family `precise`).
- hinge_embedding_loss and cosine_embedding_loss (margin, 0-D and 1-D targets) as torch's kernels write them, in
  where, clamp and sums (coremltools has no translation for either; their export leaves `empty_permuted`, the
  allocation of torch's zeros_like, which ExecuTorch and litert-torch refuse).
- linear_cross_entropy(input, linear_weight, target, linear_bias, …): the linear projection, reshaped to
  (*batch, C, *out_features) when the weight has out-features dims, then cross_entropy, as torch's reference
  path; `options` only picks torch's chunked kernel (`torch_nn::_linear_cross_entropy_batch_chunked*`, custom
  ops no converter knows), which computes the same value. ignore_index None is torch's −100.

Which ops, measured on torch 2.13 (a one-op module per OpInfo sample, benchmarks/op_matrix.py): the TorchScript
trace keeps `aten::cross_entropy_loss`, which coremltools has no translation for and the legacy ONNX exporter
writes as ONNX's SoftmaxCrossEntropyLoss, which OpenVINO refuses and onnxruntime's shape inference rejects for an
unbatched input; linear_cross_entropy with options exports torch's chunked custom op, which litert-torch,
ExecuTorch and the dynamo ONNX exporter refuse. soft_margin_loss and multilabel_soft_margin_loss convert everywhere,
but as log(1 + exp(·)): a small exp loses its digits (relative errors of 0.14 to 1 on OpInfo's samples), so a float
check that missed its tolerance on them is answered here (`precise`). Equivalence: tests/rewrites/test_rewrite_families_losses.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name

if TYPE_CHECKING:
    import torch

_DEFAULT_IGNORE = -100


def _reduction(size_average: Any, reduce: Any, reduction: str) -> str:
    """The reduction torch uses, the legacy size_average / reduce flags read first where given."""
    if size_average is None and reduce is None:
        return reduction
    from torch.nn import _reduction

    return str(_reduction.legacy_get_string(size_average, reduce, emit_warning=False))


def _reduce(loss: torch.Tensor, reduction: str, op: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise RewriteNotApplicable("losses", op, f"reduction {reduction!r} (torch itself refuses it)")


def _class_dim(input: torch.Tensor) -> int:
    """torch's class dim: 0 for an unbatched input (C,), else 1."""
    return 0 if input.dim() == 1 else 1


def _along(weight: torch.Tensor, input: torch.Tensor, dim: int) -> torch.Tensor:
    """weight (C,) shaped to broadcast along `dim` of input."""
    shape = [1] * input.dim()
    shape[dim] = int(weight.shape[0])
    return weight.reshape(shape)


def _picked(log_probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's −log p at its target class, times that class's weight, and the weights (both 0 where the
    target is `ignore_index`)."""
    import torch

    dim = _class_dim(log_probs)
    kept = target != ignore_index
    safe = torch.where(kept, target, torch.zeros_like(target))  # an ignored position reads class 0, then drops
    at_target = log_probs.gather(dim, safe.unsqueeze(dim)).squeeze(dim)
    mask = kept.to(log_probs.dtype)
    weights = mask if weight is None else weight.index_select(0, safe.reshape(-1)).reshape(safe.shape) * mask
    return torch.where(kept, -at_target * weights, torch.zeros_like(at_target)), weights


def nll_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, size_average: Any = None,
             ignore_index: int = _DEFAULT_IGNORE, reduce: Any = None, reduction: str = "mean") -> torch.Tensor:
    """F.nll_loss: the weighted −log p at each target, reduced ('mean' over the weights kept)."""
    reduction = _reduction(size_average, reduce, reduction)
    loss, weights = _picked(input, target, weight, ignore_index)
    if reduction == "mean":
        return loss.sum() / weights.sum()
    return _reduce(loss, reduction, "F.nll_loss")


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average: Any = None, ignore_index: int = _DEFAULT_IGNORE, reduce: Any = None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    """F.cross_entropy: log_softmax over the class dim, then nll_loss (class indices) or −Σ t·log p
    (probabilities), with torch's label smoothing."""
    import torch

    reduction = _reduction(size_average, reduce, reduction)
    dim = _class_dim(input)
    classes = int(input.shape[dim])
    log_probs = torch.log_softmax(input, dim)
    if target.is_floating_point():  # class probabilities, one per class
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + label_smoothing / classes
        products = log_probs * target if weight is None else log_probs * target * _along(weight, input, dim)
        if reduction == "mean":
            return -products.sum() / (input.numel() / classes)
        return _reduce(-products.sum(dim), reduction, "F.cross_entropy")
    loss, weights = _picked(log_probs, target, weight, ignore_index)
    nll = loss.sum() / weights.sum() if reduction == "mean" else _reduce(loss, reduction, "F.cross_entropy")
    if label_smoothing <= 0:
        return nll
    weighted = log_probs if weight is None else log_probs * _along(weight, input, dim)
    smooth = torch.where(target != ignore_index, -weighted.sum(dim), torch.zeros_like(loss))
    smooth = smooth.sum() / weights.sum() if reduction == "mean" else _reduce(smooth, reduction, "F.cross_entropy")
    return (1 - label_smoothing) * nll + smooth * (label_smoothing / classes)


def linear_cross_entropy(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
                         linear_bias: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                         reduction: str = "mean", ignore_index: int | None = None, label_smoothing: float = 0.0,
                         options: Any = None) -> torch.Tensor:
    """F.linear_cross_entropy: the projection to the classes (and out-features), then cross_entropy."""
    import torch

    num_batches, in_features = tuple(input.shape[:-1]), int(input.shape[-1])
    classes, out_features = int(linear_weight.shape[0]), tuple(int(n) for n in linear_weight.shape[1:-1])
    if out_features:
        linear_weight = linear_weight.reshape(math.prod(out_features, start=classes), in_features)
        if linear_bias is not None:
            linear_bias = linear_bias.reshape(math.prod(out_features, start=classes))
    logits = torch.nn.functional.linear(input, linear_weight, linear_bias).reshape(*num_batches, classes,
                                                                                   *out_features)
    return cross_entropy(logits, target, weight=weight, reduction=reduction,
                         ignore_index=_DEFAULT_IGNORE if ignore_index is None else ignore_index,
                         label_smoothing=label_smoothing)


def _log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log σ(x) = min(x, 0) − log1p(exp(−|x|)), with a precise log1p (the family `precise`)."""
    import torch

    from buildsys.rewrites.precise import log1p

    return torch.clamp(x, max=0) - log1p(torch.exp(-x.abs()))


def soft_margin_loss(input: torch.Tensor, target: torch.Tensor, size_average: Any = None, reduce: Any = None,
                     reduction: str = "mean") -> torch.Tensor:
    """F.soft_margin_loss: log(1 + exp(−y·x)), its log1p kept precise (torch's own log1p(exp(·)): an overflowing
    exp gives inf as torch's does)."""
    import torch

    from buildsys.rewrites.precise import log1p

    loss = log1p(torch.exp(-target * input))
    return _reduce(loss, _reduction(size_average, reduce, reduction), "F.soft_margin_loss")


def multilabel_soft_margin_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                size_average: Any = None, reduce: Any = None, reduction: str = "mean") -> torch.Tensor:
    """F.multilabel_soft_margin_loss: −(y·log σ(x) + (1 − y)·log σ(−x)), weighted, averaged over the classes."""
    loss = -(target * _log_sigmoid(input) + (1 - target) * _log_sigmoid(-input))
    if weight is not None:
        loss = loss * weight
    loss = loss.sum(dim=input.dim() - 1) / int(input.shape[-1])
    return _reduce(loss, _reduction(size_average, reduce, reduction), "F.multilabel_soft_margin_loss")


def hinge_embedding_loss(input: torch.Tensor, target: torch.Tensor, margin: float = 1.0, size_average: Any = None,
                         reduce: Any = None, reduction: str = "mean") -> torch.Tensor:
    """F.hinge_embedding_loss: x where the target is not −1, plus max(0, margin − x) where it is not 1 (torch's)."""
    import torch

    zeros = torch.zeros_like(input)
    loss = torch.where(target != 1, torch.clamp(margin - input, min=0), zeros) + torch.where(target != -1, input, zeros)
    return _reduce(loss, _reduction(size_average, reduce, reduction), "F.hinge_embedding_loss")


def cosine_embedding_loss(input1: torch.Tensor, input2: torch.Tensor, target: torch.Tensor, margin: float = 0.0,
                          size_average: Any = None, reduce: Any = None, reduction: str = "mean") -> torch.Tensor:
    """F.cosine_embedding_loss: 1 − cos where the target is 1, max(0, cos − margin) where it is −1, the cosine as
    torch's kernel computes it (Σ x₁x₂ / √((Σ x₁² + 1e-12)(Σ x₂² + 1e-12)) along the target's dims)."""
    import torch

    dim = target.dim()
    if dim not in (0, 1) or input1.dim() != dim + 1:
        raise RewriteNotApplicable("losses", "F.cosine_embedding_loss", "inputs of a rank torch refuses")
    products = (input1 * input2).sum(dim)
    norms = torch.sqrt(((input1 * input1).sum(dim) + 1e-12) * ((input2 * input2).sum(dim) + 1e-12))
    cos = products / norms
    zeros = torch.zeros_like(cos)
    loss = torch.where(target == 1, 1 - cos, zeros) + torch.where(target == -1, torch.clamp(cos - margin, min=0), zeros)
    return _reduce(loss, _reduction(size_average, reduce, reduction), "F.cosine_embedding_loss")


def _handlers() -> HandlerTable:
    import torch

    return by_name({"nll_loss": nll_loss, "cross_entropy": cross_entropy, "linear_cross_entropy": linear_cross_entropy,
                    "soft_margin_loss": soft_margin_loss, "multilabel_soft_margin_loss": multilabel_soft_margin_loss,
                    "hinge_embedding_loss": hinge_embedding_loss, "cosine_embedding_loss": cosine_embedding_loss},
                   [torch.nn.functional])


REWRITES = (
    Rewrite(
        name="losses",
        version=1,
        removes=("aten::cross_entropy_loss", "aten::cross_entropy", "aten::linear_cross_entropy", "aten::nll_loss",
                 "aten::nll_loss_nd", "aten::nll_loss2d", "aten::nll_loss_forward", "aten::nll_loss2d_forward",
                 "torch_nn::_linear_cross_entropy_batch_chunked",
                 "torch_nn::_linear_cross_entropy_batch_chunked_no_reduction", "aten::soft_margin_loss",
                 "aten::multilabel_soft_margin_loss", "aten::hinge_embedding_loss", "aten::cosine_embedding_loss"),
        description="cross_entropy / nll_loss / linear_cross_entropy (weights, ignore_index, label smoothing, "
                    "class probabilities, K-D) in log_softmax, gather, where and sums; soft_margin_loss / "
                    "multilabel_soft_margin_loss with a precise log1p; hinge_embedding_loss / cosine_embedding_loss",
        handlers=_handlers,
        signs=(r"SoftmaxCrossEntropyLoss", r"NegativeLogLikelihoodLoss"),
        precise=("aten::soft_margin_loss", "aten::multilabel_soft_margin_loss"),
    ),
)
