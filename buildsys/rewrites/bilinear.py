"""F.bilinear (nn.Bilinear) as two matmuls: y[..., o] = Σ_ij x1_i W_oij x2_j + b_o, computed as x1 against W laid
out [in1, out·in2], then the product with x2 summed over in2. Leading dims of any rank, with or without a bias.

Why a rewrite: coremltools has no translation for aten::bilinear, and torch.export lowers it to `_trilinear`, which
is not core ATen (ExecuTorch refuses it) and no table decomposes. Equivalence:
tests/rewrites/test_rewrite_families_statistics.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.rewrites.base import HandlerTable, Rewrite, by_name

if TYPE_CHECKING:
    import torch


def bilinear(input1: torch.Tensor, input2: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    import torch

    out, in1, in2 = (int(n) for n in weight.shape)
    lead = input1.shape[:-1]
    a, c = input1.reshape(-1, in1), input2.reshape(-1, in2)
    t = torch.matmul(a, weight.permute(1, 0, 2).reshape(in1, out * in2)).reshape(-1, out, in2)
    y = (t * c.unsqueeze(1)).sum(-1)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, out)


def _handlers() -> HandlerTable:
    import torch

    return by_name({"bilinear": bilinear}, (torch.nn.functional, torch))


REWRITES = (
    Rewrite(
        name="bilinear",
        version=1,
        removes=("aten::bilinear", "aten::_trilinear"),
        description="F.bilinear as two matmuls and a sum",
        handlers=_handlers,
    ),
)
