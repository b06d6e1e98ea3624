"""The scatter family: writes at data-dependent positions as one-hot masks at static sizes (buildsys.rewrites.onehot).

- `scatter` (the family): scatter (src or value; reduce add / multiply), scatter_add, scatter_reduce
  (sum, prod, mean, amax, amin; include_self), index_add (alpha), index_copy, index_reduce, index_put
  (accumulate or not; integer index tensors, adjacent or not, negative indices, a boolean mask) and
  `x[indices] = v` with index tensors (Tensor.__setitem__; a static region, `x[:, 2:5] = v`, what
  torch.export calls slice_scatter / select_scatter, is a pad and a where), out of place and in place (the in-place forms
  write the result back with copy_, which exporters make functional); F.embedding_bag (the member);
  segment_reduce (lengths or offsets, every reduction and axis, initial: buildsys/rewrites/segment.py).
- `embedding-bag` (a member): F.embedding_bag / nn.EmbeddingBag only (buildsys/rewrites/embedding_bag.py).

Why a rewrite and not a decomposition: PyTorch decomposes index_add and index_copy into index_put, and
scatter, scatter_add, scatter_reduce and index_put are core ATen ops with no decomposition (segment_reduce has
none at all; both ONNX exporters refuse it): a format
without a scatter (Core ML's trace frontend on several, TFLite through onnx2tf, older ONNX consumers)
refuses whatever the decomposition. Equivalence: tests/rewrites/test_rewrite_families_scatter.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name

if TYPE_CHECKING:
    import torch


def scatter(input: torch.Tensor, dim: int, index: torch.Tensor, src: Any = None, *, value: Any = None,
            reduce: str | None = None) -> torch.Tensor:
    """torch.scatter (src tensor or value; reduce None, 'add' or 'multiply')."""
    from buildsys.rewrites.onehot import scatter_reduce

    source = src if src is not None else value
    if source is None:
        raise TypeError("scatter() missing the src or value argument")
    how = {None: "replace", "add": "sum", "multiply": "prod"}.get(reduce)
    if how is None:
        raise RuntimeError(f"reduce argument must be either add or multiply, got {reduce}")
    return scatter_reduce(input, dim, index, source, how, True, "torch.scatter")


def scatter_add(input: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    from buildsys.rewrites.onehot import scatter_reduce

    return scatter_reduce(input, dim, index, src, "sum", True, "torch.scatter_add")


def scatter_reduce_(input: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor, reduce: str, *,
                    include_self: bool = True) -> torch.Tensor:
    from buildsys.rewrites.onehot import scatter_reduce

    return scatter_reduce(input, dim, index, src, reduce, include_self, "torch.scatter_reduce")


def index_add(input: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor, *,
              alpha: float = 1) -> torch.Tensor:
    from buildsys.rewrites.onehot import index_reduce as reduce_at

    return reduce_at(input, dim, index, source if alpha == 1 else source * alpha, "sum", True, "torch.index_add")


def index_copy(input: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    from buildsys.rewrites.onehot import index_reduce as reduce_at

    return reduce_at(input, dim, index, source, "replace", True, "torch.index_copy")


def index_reduce(input: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor, reduce: str, *,
                 include_self: bool = True) -> torch.Tensor:
    from buildsys.rewrites.onehot import index_reduce as reduce_at

    if reduce not in ("prod", "mean", "amax", "amin"):
        raise RuntimeError(f"index_reduce(): Expected reduce to be one of prod, mean, amax or amin but got {reduce}.")
    return reduce_at(input, dim, index, source, reduce, include_self, "torch.index_reduce")


def _table() -> dict[str, Any]:
    """Function name → out-of-place replacement (torch.<name>, Tensor.<name>, and Tensor.<name>_ in place)."""
    from buildsys.rewrites import indexing

    return {"scatter": scatter, "scatter_add": scatter_add, "scatter_reduce": scatter_reduce_,
            "index_add": index_add, "index_copy": index_copy, "index_reduce": index_reduce,
            "index_put": indexing.index_put}


def _handlers() -> HandlerTable:
    import torch

    from buildsys.rewrites import embedding_bag, indexing, segment

    table = by_name(_table(), (torch, torch.Tensor), in_place_on=torch.Tensor)
    table[torch.Tensor.__setitem__] = indexing.setitem
    table[torch.nn.functional.embedding_bag] = embedding_bag.embedding_bag
    table[torch.segment_reduce] = segment.segment_reduce
    return table


def refuse(op: str, reason: str) -> RewriteNotApplicable:
    return RewriteNotApplicable("scatter", op, reason)


REWRITES = (
    Rewrite(
        name="scatter",
        version=2,  # 2: segment_reduce
        removes=("aten::scatter", "aten::scatter_add", "aten::scatter_reduce", "aten::index_add", "aten::index_copy",
                 "aten::index_reduce", "aten::index_put", "aten::_index_put_impl", "aten::slice_scatter",
                 "aten::select_scatter", "aten::embedding_bag",
                 "aten::_embedding_bag", "aten::_embedding_bag_forward_only", "aten::segment_reduce"),
        description="scatter / scatter_add / scatter_reduce / index_add / index_copy / index_reduce / index_put "
                    "(and x[idx] = v, x[a:b] = v) / embedding_bag / segment_reduce as one-hot masks, matmuls, reductions and "
                    "wheres at static sizes",
        handlers=_handlers,
        # ONNX's and TensorFlow's scatters, litert-torch's "stablehlo.scatter" / STABLEHLO_SCATTER, a scatter op
        # named bare ("include_self=False for scatter_reduce"), the legacy ONNX exporter's Loop for embedding_bag
        signs=(r"\bScatter(ND|Elements)?\b", r"\bscatter(_nd|_add|_reduce)?\b", r"\bTensorScatter\w*",
               r"(?i)stablehlo[._]scatter", r"\bLoop\b"),
    ),
)
