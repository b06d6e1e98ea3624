"""The scan family: cumulative products, maxima, minima and log-sum-exps as masked reductions at a static length,
and the product reduction they need.

Along the scanned dim of static length L, a constant lower-triangular mask `j ≤ i` ([L, L], computed in NumPy)
turns every prefix into one row of a reduction every converter has:
- cumprod(x, dim, dtype): the product over j of where(j ≤ i, x_j, 1);
- prod(x, dim, keepdim, dtype): pairwise products of the even and odd elements, halving the dim each round
  (⌈log₂ L⌉ multiplications of strided slices): coremltools has no `prod` in either frontend, and MIL's
  reduce_prod is not reached from PyTorch;
- cummax / cummin(x, dim) → (values, indices): amax / amin over j of where(j ≤ i, x_j, ∓inf); the index is the
  last j ≤ i where x_j equals the running value (torch's kernel updates on `>=` / `<=`, so ties take the later);
- logcumsumexp(x, dim): the running max m_i, then log Σⱼ where(j ≤ i, exp(x_j − m_i), 0) + m_i (stable where
  the converters' own lowering of exp overflows).
Cost: L² elements per scanned row, so the rewrite refuses L above MAX_LENGTH (a scan over thousands of steps
wants the converter's loop, not a mask). cumsum itself is taken by every converter here and is not in the
family.

Why a rewrite and not a decomposition: PyTorch's tables have none for cumprod, cummax, cummin (their
decompositions exist for autograd only) and decompose logcumsumexp under torch.export only; the legacy ONNX
exporter refuses cumprod, cummax and cummin at opset 18, ExecuTorch all four (not core ATen), coremltools cummax
and cummin, onnx2tf logcumsumexp's ONNX (measured: benchmarks/op_matrix.py --only 'cum*'). Equivalence:
tests/rewrites/test_rewrite_families_scan.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import Handler, HandlerTable, Rewrite, RewriteNotApplicable, by_name, refuse_out

if TYPE_CHECKING:
    import torch

#: The longest scanned dim the family rewrites (an [L, L] mask per row; 1,024² is 4 MB of float32).
MAX_LENGTH = 1024


def _prefix(input: torch.Tensor, dim: int, op: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(x with `dim` last and a row axis before it: [..., 1, L], the constant mask j ≤ i [L, L], dim ≥ 0)."""
    import numpy as np

    from buildsys.rewrites.mechanism import constant, static_size, to_last

    if input.dim() == 0:
        raise RewriteNotApplicable("scan", op, "a 0-d input (nothing to scan)")
    dim = dim % input.dim()
    length = static_size(input, dim, "scan", op)
    if length > MAX_LENGTH:
        raise RewriteNotApplicable("scan", op, f"a scan over {length} elements (more than {MAX_LENGTH}: the mask "
                                   "would hold its square)")
    mask = constant(np.arange(length)[None, :] <= np.arange(length)[:, None])
    return to_last(input, dim).unsqueeze(-2), mask, dim


def _lowest(x: torch.Tensor, largest: bool) -> float:
    """What a masked-out element is for a running max (the dtype's lowest) or min (its highest)."""
    import torch

    if x.is_floating_point():
        return -float("inf") if largest else float("inf")
    info = torch.iinfo(x.dtype)
    return float(info.min if largest else info.max)


def _product(x: torch.Tensor) -> torch.Tensor:
    """The product over the last dim (static length): even times odd elements until one is left."""
    import torch

    from buildsys.rewrites.mechanism import static_size

    length = static_size(x, -1, "scan", "a product")
    if length == 0:
        return torch.ones_like(x.sum(-1))
    while length > 1:
        if length % 2:  # the odd one out is multiplied by one
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
            length += 1
        x = x[..., 0::2] * x[..., 1::2]
        length //= 2
    return x.squeeze(-1)


def _accumulating(input: torch.Tensor, dtype: Any) -> torch.Tensor:
    """The input in the dtype a product accumulates in: the one asked for, else int64 for integers, as torch."""
    import torch

    x = input.to(dtype) if dtype is not None else input
    return x.to(torch.int64) if not x.is_floating_point() and dtype is None else x


def prod(input: torch.Tensor, dim: int | None = None, keepdim: bool = False, *, dtype: Any = None,
         out: object = None) -> torch.Tensor:
    from buildsys.rewrites.mechanism import from_last, to_last

    refuse_out("scan", "torch.prod", out)
    x = _accumulating(input, dtype)
    if dim is None or x.dim() == 0:
        return _product(x.reshape(-1))
    dim = dim % x.dim()
    result = _product(to_last(x, dim))
    return from_last(result.unsqueeze(-1), dim) if keepdim else result


def cumprod(input: torch.Tensor, dim: int, *, dtype: Any = None, out: object = None) -> torch.Tensor:
    import torch

    from buildsys.rewrites.mechanism import from_last

    refuse_out("scan", "torch.cumprod", out)
    rows, mask, dim = _prefix(_accumulating(input, dtype), dim, "torch.cumprod")
    return from_last(_product(torch.where(mask, rows, torch.ones_like(rows))), dim)


def _running(largest: bool) -> Handler:
    name = "cummax" if largest else "cummin"

    def running(input: torch.Tensor, dim: int, *, out: object = None) -> Any:
        import numpy as np
        import torch

        from buildsys.rewrites.mechanism import constant, from_last

        refuse_out("scan", f"torch.{name}", out)
        rows, mask, dim = _prefix(input, dim, f"torch.{name}")
        masked = torch.where(mask, rows, torch.full_like(rows, _lowest(input, largest)))
        values = masked.amax(-1) if largest else masked.amin(-1)  # [..., L]
        positions = constant(np.arange(mask.shape[-1], dtype=np.int64))
        hit = mask & (rows == values.unsqueeze(-1))
        indices = torch.where(hit, positions, torch.full_like(positions, -1)).amax(-1)
        result = getattr(torch.return_types, name)
        return result((from_last(values, dim), from_last(indices, dim)))
    return running


cummax, cummin = _running(True), _running(False)


def logcumsumexp(input: torch.Tensor, dim: int, *, out: object = None) -> torch.Tensor:
    import torch

    from buildsys.rewrites.mechanism import from_last

    refuse_out("scan", "torch.logcumsumexp", out)
    rows, mask, dim = _prefix(input, dim, "torch.logcumsumexp")
    peak = torch.where(mask, rows, torch.full_like(rows, -float("inf"))).amax(-1, keepdim=True)
    # an all −inf prefix stays −inf below; a comparison, not isinf: coremltools has no isinf
    peak = torch.where(peak == -float("inf"), torch.zeros_like(peak), peak)
    # masked before the exp: a later element above the running max would overflow it (inf, then inf · 0)
    total = torch.exp(torch.where(mask, rows - peak, torch.full_like(rows, -float("inf")))).sum(-1, keepdim=True)
    return from_last((torch.log(total) + peak).squeeze(-1), dim)


def _handlers() -> HandlerTable:
    import torch

    return by_name({"cumprod": cumprod, "cummax": cummax, "cummin": cummin, "logcumsumexp": logcumsumexp,
                    "prod": prod}, (torch, torch.Tensor))


REWRITES = (
    Rewrite(
        name="scan",
        version=3,  # 3: products as pairwise multiplications, prod a member (coremltools has no prod)
        removes=("aten::cumprod", "aten::cummax", "aten::cummin", "aten::logcumsumexp", "aten::_cummax_helper",
                 "aten::_cummin_helper", "aten::prod"),
        description="cumprod / cummax / cummin / logcumsumexp as reductions under a constant prefix mask at a "
                    "static length; prod (and cumprod's products) as pairwise multiplications",
        handlers=_handlers,
        # stable at any magnitude: coremltools' own logcumsumexp takes exp of the input (all NaN at 1e4)
        precise=("aten::logcumsumexp",),
    ),
)
