"""Decompositions of ATen ops that PyTorch's tables leave in a program and no converter takes, into core ATen ops
(the worker side: torch is imported inside the functions). decompose.py consults them after PyTorch's own tables,
for a named op and for the whole program.

Which ops: those an OpInfo sample met that no table lowers (addbmm, angle, put, empty_permuted) or lowers only to a
reference, which exports as a prim no converter takes (exp2, erfc). A decomposition cannot hold a tensor constant
(run_decompositions does not lift one it makes), so an op whose lowering needs constant indices (diagonal_scatter,
as_strided_scatter) needs a rewrite instead.
Each computes what torch's kernel does, on every argument its schema has:

- empty_permuted: a contiguous empty (its memory is uninitialised; only the strides differ);
- addbmm: β·self + α·Σ_b batch1[b] @ batch2[b], as a bmm and a sum (self ignored where β = 0, as torch);
- exp2: 2 ** x (pow with a scalar base: core);
- erfc: Cody's rational forms through erfcx (the floating rewrite family's), no cancellation in the right tail;
- angle of a real tensor: π below 0, else 0, NaN kept (a complex one is not lowered: the complex rewrite is);
- put: index_put into the flattened tensor, negative indices wrapped, accumulate or not;
- var_mean: var and mean over the same dims (both core); PyTorch's table lowers it only to prims.var (a
  reference), and coremltools has no conversion for it (timm's channels-first layer norm `_layer_norm_cf` uses it).

Equivalence: tests/lowering/test_lowering_decompose.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch


def empty_permuted(size: Any, physical_layout: Any, *, dtype: Any = None, layout: Any = None, device: Any = None,
                   pin_memory: Any = None) -> "torch.Tensor":
    import torch

    return torch.ops.aten.empty.memory_format(size, dtype=dtype, layout=layout, device=device, pin_memory=pin_memory)


def addbmm(self: "torch.Tensor", batch1: "torch.Tensor", batch2: "torch.Tensor", *, beta: Any = 1,
           alpha: Any = 1) -> "torch.Tensor":
    import torch

    product = torch.bmm(batch1, batch2).sum(0)
    product = product if alpha == 1 else product * alpha
    if beta == 0:
        return product.expand(torch.broadcast_shapes(self.shape, product.shape)).clone()
    return (self if beta == 1 else self * beta) + product


def exp2(self: "torch.Tensor") -> "torch.Tensor":
    import torch

    x = self if self.is_floating_point() else self.to(torch.get_default_dtype())
    return torch.pow(2.0, x)


def erfc(self: "torch.Tensor") -> "torch.Tensor":
    import torch

    from buildsys.rewrites.floating import _erfc

    return _erfc(self if self.is_floating_point() else self.to(torch.get_default_dtype()))


def angle(self: "torch.Tensor") -> "torch.Tensor":
    import torch

    if self.is_complex():
        raise NotImplementedError("angle of a complex tensor: the complex rewrite lowers it")
    x = self if self.is_floating_point() else self.to(torch.get_default_dtype())
    turned = torch.where(x < 0, torch.full_like(x, math.pi), torch.zeros_like(x))
    return torch.where(torch.isnan(x), x, turned)


def put(self: "torch.Tensor", index: "torch.Tensor", source: "torch.Tensor", accumulate: bool = False
        ) -> "torch.Tensor":
    import torch

    flat = self.reshape(-1)
    where = index.reshape(-1)
    where = torch.where(where < 0, where + flat.shape[0], where)
    return flat.index_put((where,), source.reshape(-1), accumulate).reshape(self.shape)


def var_mean(self: "torch.Tensor", dim: Any = None, *, correction: Any = None, keepdim: bool = False
             ) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    aten = torch.ops.aten
    return (aten.var.correction(self, dim, correction=correction, keepdim=keepdim),
            aten.mean.dim(self, dim, keepdim))


def table() -> dict["torch._ops.OpOverload", Callable[..., Any]]:
    """The ops above, keyed by their functional overloads."""
    import torch

    aten = torch.ops.aten
    return {aten.empty_permuted.default: empty_permuted, aten.addbmm.default: addbmm, aten.exp2.default: exp2,
            aten.erfc.default: erfc, aten.angle.default: angle, aten.put.default: put,
            aten.var_mean.correction: var_mean}
