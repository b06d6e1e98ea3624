"""diagonal_scatter and as_strided_scatter: a tensor with a source written into a view of it, as a gather and a where.

The view's positions are known from the static shapes and arguments alone, so a constant maps each element of the
input to the element of the source written there (NumPy computes the view, `np.diagonal` for the diagonal with its
offset and dims, the size / stride / offset arithmetic for a strided view of the contiguous input): the output is
the source gathered by that map where the view is, the input elsewhere. One index_select and one where, which every
converter has.

Why a rewrite: PyTorch decomposes both only into references that export as prims (a `copy_to` the dynamo ONNX
exporter refuses as not functional); the legacy exporter, coremltools, ExecuTorch and litert-torch refuse them. A
decomposition cannot hold the constant map (run_decompositions does not lift a tensor it makes). Equivalence:
tests/rewrites/test_rewrite_families_statistics.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from buildsys.rewrites.base import HandlerTable, Rewrite, by_name

if TYPE_CHECKING:
    import numpy as np
    import torch


def _written(input: torch.Tensor, src: torch.Tensor, positions: "np.ndarray") -> torch.Tensor:
    """input with src's elements written at the flat `positions` (in src's own order)."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    numel = int(np.prod([int(n) for n in input.shape]))
    source = np.zeros(numel, dtype=np.int64)
    hit = np.zeros(numel, dtype=bool)
    flat = positions.reshape(-1)
    source[flat] = np.arange(flat.size)
    hit[flat] = True
    gathered = src.reshape(-1).to(input.dtype).index_select(0, constant(source)).reshape(input.shape)
    return torch.where(constant(hit.reshape([int(n) for n in input.shape])), gathered, input)


def diagonal_scatter(input: torch.Tensor, src: torch.Tensor, offset: int = 0, dim1: int = 0,
                     dim2: int = 1) -> torch.Tensor:
    import numpy as np

    positions = np.arange(int(np.prod([int(n) for n in input.shape]))).reshape([int(n) for n in input.shape])
    return _written(input, src, np.diagonal(positions, offset, dim1, dim2))


def as_strided_scatter(input: torch.Tensor, src: torch.Tensor, size: Sequence[int], stride: Sequence[int],
                       storage_offset: Any = None) -> torch.Tensor:
    import numpy as np

    positions = np.full([int(n) for n in size], int(storage_offset or 0), dtype=np.int64)
    for axis, (n, step) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[axis] = int(n)
        positions = positions + (np.arange(int(n)) * int(step)).reshape(shape)
    return _written(input, src, positions)


def _handlers() -> HandlerTable:
    import torch

    return by_name({"diagonal_scatter": diagonal_scatter, "as_strided_scatter": as_strided_scatter},
                   (torch, torch.Tensor))


REWRITES = (
    Rewrite(
        name="view-scatter",
        version=1,
        removes=("aten::diagonal_scatter", "aten::as_strided_scatter"),
        description="diagonal_scatter / as_strided_scatter as a constant-index gather of the source and a where",
        handlers=_handlers,
    ),
)
