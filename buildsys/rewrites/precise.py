"""The precise family: log1p and expm1 written so they keep their precision in formats that have no such op.

ONNX, TFLite and Core ML have no log1p or expm1: their exporters write log(1 + x) and exp(x) − 1, which lose every
digit of a small x (log(1 + 1e-8) is 0 in float32). Here, as Kahan's and Higham's classic forms (Higham, "Accuracy
and Stability of Numerical Algorithms", 2nd ed., §1.14.1), in the log, exp, add and divide every converter has:

- log1p(x) = log(w)·x/(w − 1), w = 1 + x (x where w == 1, +inf where w is): within a few ulp;
- expm1(x) = (u − 1)·x/log(u), u = exp(x) (x where u == 1, −1 where u − 1 == −1, u where u is infinite).

Nothing refuses these ops, so no refusal points here: a check that missed its tolerance on a route whose program
holds one of them is answered by this family (`Rewrite.precise`; buildsys/planning/failures.py). Equivalence:
tests/rewrites/test_rewrite_families_precise.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, by_name, refuse_out

if TYPE_CHECKING:
    import torch


def _floating(x: torch.Tensor) -> torch.Tensor:
    import torch

    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def log1p(input: torch.Tensor, *, out: Any = None) -> torch.Tensor:
    """log(1 + x) to a few ulp without a log1p op."""
    import torch

    refuse_out("precise", "torch.log1p", out)
    x = _floating(input)
    w = 1.0 + x
    d = w - 1.0
    scaled = torch.log(w) * (x / torch.where(d == 0, torch.ones_like(d), d))
    return torch.where(d == 0, x, torch.where(w == float("inf"), w, scaled))  # log(−inf) stays NaN


def expm1(input: torch.Tensor, *, out: Any = None) -> torch.Tensor:
    """exp(x) − 1 to a few ulp without an expm1 op."""
    import torch

    refuse_out("precise", "torch.expm1", out)
    x = _floating(input)
    u = torch.exp(x)
    d = u - 1.0
    logs = torch.log(u)
    scaled = d * (x / torch.where(logs == 0, torch.ones_like(logs), logs))
    exact = torch.where(d == -1.0, d, torch.where(torch.isinf(u), u, scaled))  # exp underflowed to 0, overflowed
    return torch.where(u == 1.0, x, exact)


def _handlers() -> HandlerTable:
    import torch

    return by_name({"log1p": log1p, "expm1": expm1}, [torch, torch.special, torch.Tensor], in_place_on=torch.Tensor)


REWRITES = (
    Rewrite(
        name="precise",
        version=1,
        removes=("aten::log1p", "aten::special_log1p", "aten::expm1", "aten::special_expm1"),
        description="log1p / expm1 in log, exp and a division that keep a small argument's digits (Kahan's forms), "
                    "for formats that write them as log(1 + x) and exp(x) − 1",
        handlers=_handlers,
        precise=("aten::log1p", "aten::special_log1p", "aten::expm1", "aten::special_expm1"),
    ),
)
