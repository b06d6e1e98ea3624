"""The triangular family: triu / tril (any diagonal, in place or not) as constant masks, triu_indices /
tril_indices as constants.

torch.triu(x, diagonal) keeps x[..., i, j] where j − i ≥ diagonal; with the last two sizes static the
mask is a boolean constant computed in NumPy (np.triu of ones) and the op a `where` against zeros, which
every converter has; the index functions (whose arguments are Python ints) are int64 constants.

Why a rewrite and not a decomposition: triu_indices / tril_indices have no decomposition, and coremltools
(both frontends), litert-torch and ExecuTorch refuse them (measured). PyTorch decomposes triu / tril into
arange, a subtraction, a comparison and a where, but only under torch.export; the TorchScript trace records
`aten::triu`, which the legacy ONNX exporter writes as Trilu and refuses below opset 14. (At the default
opsets every converter here takes triu / tril themselves: the family reaches them through those refusals.)
Equivalence: tests/rewrites/test_rewrite_families_distance.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch


def _masked(upper: bool) -> Any:
    def keep(input: torch.Tensor, diagonal: int = 0, *, out: object = None) -> torch.Tensor:
        import numpy as np
        import torch

        from buildsys.rewrites.mechanism import constant, static_size

        name = f"torch.{'triu' if upper else 'tril'}"
        if out is not None:
            raise RewriteNotApplicable("triangular", name, "the out= argument")
        if input.dim() < 2:
            raise RuntimeError(f"{name[6:]}: input tensor must have at least 2 dimensions")
        rows, cols = static_size(input, -2, "triangular", name), static_size(input, -1, "triangular", name)
        # column − row against the diagonal, not np.triu: TorchDynamo (torch.export strict=True) traces NumPy
        # into torch ops, and np.triu would come back as the very triu this removes
        offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
        mask = constant(offset >= diagonal if upper else offset <= diagonal)
        return torch.where(mask, input, torch.zeros_like(input))
    return keep


def _in_place(func: Any) -> Any:
    def write_back(self: torch.Tensor, diagonal: int = 0) -> torch.Tensor:
        return self.copy_(func(self, diagonal))
    return write_back


def triangle_indices(rows: int, cols: int, offset: int, upper: bool) -> list[list[int]]:
    """[row indices, column indices] of the upper (column − row ≥ offset) or lower (≤) triangle, row by row,
    as np.triu_indices gives them, in Python ints: TorchDynamo folds them to a constant, where it would trace
    np.triu_indices back into triu_indices."""
    pairs = [(r, c) for r in range(rows) for c in range(cols) if (c - r >= offset if upper else c - r <= offset)]
    return [[r for r, _ in pairs], [c for _, c in pairs]]


def _indices(upper: bool) -> Any:
    def make(row: int, col: int, offset: int = 0, *, dtype: Any = None, device: Any = None,
             layout: Any = None, pin_memory: bool = False) -> torch.Tensor:
        import numpy as np
        import torch

        from buildsys.rewrites.mechanism import constant

        return constant(np.asarray(triangle_indices(row, col, offset, upper), dtype=np.int64), dtype or torch.int64)
    return make


_FUNCTIONS: dict[str, Any] = {"triu": _masked(True), "tril": _masked(False), "triu_indices": _indices(True),
                              "tril_indices": _indices(False)}
_FUNCTIONS.update({"triu_": _in_place(_FUNCTIONS["triu"]), "tril_": _in_place(_FUNCTIONS["tril"])})


def _handlers() -> HandlerTable:
    import torch

    table = {getattr(torch, name): _FUNCTIONS[name] for name in ("triu", "tril", "triu_indices", "tril_indices")}
    table.update({getattr(torch.Tensor, name): _FUNCTIONS[name] for name in ("triu", "tril", "triu_", "tril_")})
    return table


REWRITES = (
    Rewrite(
        name="triangular",
        version=1,
        removes=("aten::triu", "aten::tril", "aten::triu_indices", "aten::tril_indices"),
        description="triu / tril (any diagonal) as constant masks and a where; triu_indices / tril_indices as "
                    "constants",
        handlers=_handlers,
        signs=(r"\bTrilu\b",),
    ),
)
