"""diagonal_scatter and as_strided_scatter: a tensor with a source written into a view of it, as a gather and a where;
and as_strided itself (`strided-view`), the view read, as a gather.

The view's positions are known from the static shapes and arguments alone, so a constant maps each element of the
input to the element of the source written there (NumPy computes the view, `np.diagonal` for the diagonal with its
offset and dims, the size / stride / offset arithmetic for a strided view of the contiguous input): the output is
the source gathered by that map where the view is, the input elsewhere. One index_select and one where, which every
converter has. A strided view (Longformer's overlapping attention chunks) is the same map
read the other way: the input's elements gathered at the view's positions (mapped back through the input's
own strides, so a transposed input is taken too), one index_select.

Why a rewrite: PyTorch decomposes both only into references that export as prims (a `copy_to` the dynamo ONNX
exporter refuses as not functional); the legacy exporter, coremltools, ExecuTorch and litert-torch refuse them. A
decomposition cannot hold the constant map (run_decompositions does not lift a tensor it makes). as_strided is a core
ATen op that coremltools' torch.export frontend has no translation for ("Unsupported fx node as_strided"). Equivalence:
tests/rewrites/test_rewrite_families_statistics.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name

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


def _strided_positions(size: Sequence[int], stride: Sequence[int], storage_offset: int) -> "np.ndarray":
    """The storage position of every element of a strided view (size, stride, offset), in the view's shape."""
    import numpy as np

    positions = np.full([int(n) for n in size], int(storage_offset), dtype=np.int64)
    for axis, (n, step) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[axis] = int(n)
        positions = positions + (np.arange(int(n)) * int(step)).reshape(shape)
    return positions


def as_strided_scatter(input: torch.Tensor, src: torch.Tensor, size: Sequence[int], stride: Sequence[int],
                       storage_offset: Any = None) -> torch.Tensor:
    return _written(input, src, _strided_positions(size, stride, int(storage_offset or 0)))


def as_strided(input: torch.Tensor, size: Sequence[Any], stride: Sequence[Any], storage_offset: Any = None) -> torch.Tensor:
    """The strided view as a gather of the input's elements. Its positions address the storage, which the input's
    own strides lay its elements out in (Longformer takes the view of a transposed tensor, with strides computed
    from its `stride()`): each position is mapped back to the element stored there, so any layout whose elements
    do not overlap is taken. Leading axes the view keeps as they are (same size, same stride: a batch) are not
    indexed, so they may stay dynamic; the rest is one constant gather per leading slice. Strides that hold a
    dynamic size (a batch interleaved in the storage) are taken where the gather is the same at two values of it.
    A position no element of the input holds (a view reaching into the rest of a larger tensor's storage), an
    input whose elements overlap, and a gather that depends on a dynamic size are refused."""
    import numpy as np

    from buildsys.rewrites.mechanism import constant

    kept, limit = 0, min(len(size), input.dim())
    while kept < limit and _same(size[kept], input.shape[kept]) and _same(stride[kept], input.stride()[kept]):
        kept += 1
    rest, own, view = input.shape[kept:], input.stride()[kept:], (size[kept:], stride[kept:])
    offset = 0 if storage_offset is None else storage_offset - input.storage_offset()  # within each slice
    symbols = {s for v in (*rest, *own, *view[0], *view[1], offset) for s in _free(v)}
    hints = {s: _hint(s) for s in symbols}
    index = _gather_index(rest, own, view, offset, hints)
    if symbols and not np.array_equal(index, _gather_index(rest, own, view, offset, {s: 2 * h + 1 for s, h in hints.items()})):
        raise RewriteNotApplicable("strided-view", "as_strided", "a gather that depends on a dynamic size")
    flat = input.reshape(*input.shape[:kept], -1) if kept else input.reshape(-1)
    return flat.index_select(kept, constant(index)).reshape(*input.shape[:kept], *[_at(n, hints) for n in size[kept:]])


def _gather_index(shape: Sequence[Any], strides: Sequence[Any], view: tuple[Sequence[Any], Sequence[Any]], offset: Any,
                  values: dict[Any, int]) -> "np.ndarray":
    """The flat index, into a slice of `shape` laid out by `strides`, of each element of the strided `view` (size,
    stride; positions from `offset`), with the dynamic sizes at `values`; refused where an element overlaps another
    or a position holds none."""
    import numpy as np

    own = _strided_positions([_at(n, values) for n in shape], [_at(s, values) for s in strides], 0).reshape(-1)
    if own.size and np.unique(own).size != own.size:
        raise RewriteNotApplicable("strided-view", "as_strided", "a tensor whose elements overlap in its storage")
    wanted = _strided_positions([_at(n, values) for n in view[0]], [_at(s, values) for s in view[1]],
                                _at(offset, values)).reshape(-1)
    element = np.full(int(own.max()) + 1 if own.size else 0, -1, dtype=np.int64)
    element[own] = np.arange(own.size)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= element.size or (element[wanted] < 0).any()):
        raise RewriteNotApplicable("strided-view", "as_strided", "a view reaching outside the tensor's own elements")
    return element[wanted]


def _free(value: Any) -> set[Any]:
    """The symbols of a symbolic size or stride (none for an int)."""
    expr = getattr(getattr(value, "node", None), "expr", None)
    return set(getattr(expr, "free_symbols", ()))


def _hint(symbol: Any) -> int:
    """A symbol's value in the example being traced."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode()
    env = getattr(mode, "shape_env", None)
    hint = env.var_to_val.get(symbol) if env is not None else None
    if hint is None:
        raise RewriteNotApplicable("strided-view", "as_strided", f"no value known for the size {symbol}")
    return int(hint)


def _at(value: Any, values: dict[Any, int]) -> int:
    """A size, stride or offset with its symbols at `values`: an int, without a guard on the symbolic one."""
    expr = getattr(getattr(value, "node", None), "expr", None)
    return int(expr.xreplace(values)) if expr is not None else int(value)


def _same(a: Any, b: Any) -> bool:
    """Whether two sizes or strides are the same, without a guard on a symbolic one (equal expressions only)."""
    import torch

    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        return bool(statically_known_true(a == b))
    return int(a) == int(b)


def _handlers() -> HandlerTable:
    import torch

    return by_name({"diagonal_scatter": diagonal_scatter, "as_strided_scatter": as_strided_scatter},
                   (torch, torch.Tensor))


def _strided_handlers() -> HandlerTable:
    import torch

    return by_name({"as_strided": as_strided}, (torch, torch.Tensor))


REWRITES = (
    Rewrite(
        name="view-scatter",
        version=1,
        removes=("aten::diagonal_scatter", "aten::as_strided_scatter"),
        description="diagonal_scatter / as_strided_scatter as a constant-index gather of the source and a where",
        handlers=_handlers,
    ),
    Rewrite(
        name="strided-view",
        version=1,
        removes=("aten::as_strided",),
        description="as_strided as a constant-index gather of the input's elements (its storage positions mapped "
                    "back through the input's own strides)",
        handlers=_strided_handlers,
    ),
)
