"""Reference implementations of MIL's tensor-shaping ops in NumPy: reshape, slicing, gathers and scatters, concatenation, padding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.formats.coreml.mil_registry import Args, op, refuse_other

if TYPE_CHECKING:
    import numpy as np

    Array = np.ndarray


@op("reshape")
def reshape(a: Args) -> "Array":
    """-1 is inferred; 0 copies a dimension of x (by position when the ranks agree, right-aligned
    otherwise, as iOS17 defines it)."""
    x = a.tensor("x")
    shape = a.integers("shape")
    if 0 in shape:
        if len(shape) == x.ndim:
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        else:
            offset = x.ndim - len(shape)
            shape = [(x.shape[i + offset] if 0 <= i + offset < x.ndim else 1) if s == 0 else s
                     for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("reshape_like")
def reshape_like(a: Args) -> "Array":
    """x reshaped to the concatenation of ref_tensors[i].shape[begins[i]:ends[i]] (end_masks: to the end)."""
    x = a.tensor("x")
    refs = a.tensors("ref_tensors")
    begins, ends = a.integers("begins"), a.integers("ends")
    masks = a.flags("end_masks", len(refs))
    shape: list[int] = []
    for ref, begin, end, mask in zip(refs, begins, ends, masks):
        shape += list(ref.shape[begin:] if mask else ref.shape[begin:end])
    return x.reshape(shape)


@op("transpose")
def transpose(a: Args) -> "Array":
    return a.tensor("x").transpose(a.integers("perm"))


@op("expand_dims")
def expand_dims(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    rank = x.ndim + len(a.integers("axes"))
    return np.expand_dims(x, tuple(sorted(ax % rank for ax in a.integers("axes"))))


@op("squeeze")
def squeeze(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    if not a.has("axes"):
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(ax % x.ndim for ax in a.integers("axes")))


@op("flatten2d")
def flatten2d(a: Args) -> "Array":
    x = a.tensor("x")
    axis = a.integer("axis", 1) % x.ndim
    outer = 1
    for size in x.shape[:axis]:
        outer *= size
    return x.reshape(outer, -1)


@op("concat")
def concat(a: Args) -> "Array":
    import numpy as np

    values = [v.reshape(1) if v.ndim == 0 else v for v in a.tensors("values")]  # scalars make a vector
    axis = a.integer("axis")
    if not a.flag("interleave"):
        return np.concatenate(values, axis=axis)
    # interleave: slices of every input alternate along the axis
    axis %= values[0].ndim
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


@op("stack")
def stack(a: Args) -> "Array":
    import numpy as np

    return np.stack(a.tensors("values"), axis=a.integer("axis"))


@op("split")
def split(a: Args) -> tuple["Array", ...]:
    import numpy as np

    x = a.tensor("x")
    axis = a.integer("axis") % x.ndim
    if a.has("split_sizes"):
        bounds = np.cumsum(a.integers("split_sizes"))[:-1]
        return tuple(np.split(x, bounds, axis=axis))
    return tuple(np.split(x, a.integer("num_splits"), axis=axis))


def _slices(a: Args, x: "Array") -> tuple[slice | int, ...]:
    """NumPy's index for MIL's begin/end/stride and masks (a squeezed axis is indexed, not sliced)."""
    rank = x.ndim
    begin, end = a.integers("begin"), a.integers("end")
    stride = a.integers("stride", [1] * rank)
    begin_mask, end_mask = a.flags("begin_mask", rank), a.flags("end_mask", rank)
    squeeze_mask = a.flags("squeeze_mask", rank)
    slices: list[slice | int] = []
    for i in range(rank):
        if squeeze_mask[i]:
            slices.append(begin[i])
            continue
        slices.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    return tuple(slices)


@op("slice_by_index")
def slice_by_index(a: Args) -> "Array":
    x = a.tensor("x")
    return x[_slices(a, x)]


@op("slice_update")
def slice_update(a: Args) -> "Array":
    x = a.tensor("x").copy()
    slices = _slices(a, x)
    view_shape = x[slices].shape
    x[slices] = a.tensor("update").reshape(view_shape)
    return x


@op("slice_by_size")
def slice_by_size(a: Args) -> "Array":
    x = a.tensor("x")
    slices = []
    for i, (begin, size) in enumerate(zip(a.integers("begin"), a.integers("size"))):
        begin = begin + x.shape[i] if begin < 0 else begin
        slices.append(slice(begin, None) if size < 0 else slice(begin, begin + size))
    return x[tuple(slices)]


@op("gather")
def gather(a: Args) -> "Array":
    """x[indices] along axis; negative indices count from the end; batch_dims leading axes shared."""
    import numpy as np

    x, indices = a.tensor("x"), a.tensor("indices").astype(np.int64)
    axis, batch_dims = a.integer("axis", 0) % x.ndim, a.integer("batch_dims", 0)
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    batch = x.shape[:batch_dims]
    out = [np.take(x[b], indices[b], axis=axis - batch_dims) for b in np.ndindex(*batch)]
    return np.stack(out).reshape(batch + out[0].shape)


@op("gather_along_axis")
def gather_along_axis(a: Args) -> "Array":
    import numpy as np

    x, indices = a.tensor("x"), a.tensor("indices").astype(np.int64)
    axis = a.integer("axis", 0) % x.ndim
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return np.take_along_axis(x, indices, axis=axis)


@op("gather_nd")
def gather_nd(a: Args) -> "Array":
    import numpy as np

    x, indices = a.tensor("x"), a.tensor("indices").astype(np.int64)
    batch_dims = a.integer("batch_dims", 0)
    if batch_dims:
        batch = x.shape[:batch_dims]
        out = [x[b][tuple(np.moveaxis(indices[b], -1, 0))] for b in np.ndindex(*batch)]
        return np.stack(out).reshape(batch + out[0].shape)
    return x[tuple(np.moveaxis(indices, -1, 0))]


_SCATTER = {"update": "", "add": "add", "sub": "subtract", "mul": "multiply", "div": "divide",
            "max": "maximum", "min": "minimum"}


@op("scatter_along_axis", refuse=refuse_other("mode", "add", _SCATTER, "scatter"))
def scatter_along_axis(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("data").copy()
    indices, updates = a.tensor("indices").astype(np.int64), a.tensor("updates")
    axis = a.integer("axis", 0) % x.ndim
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    mode = a.text("mode", "add")
    if mode == "update":
        np.put_along_axis(x, indices, updates, axis=axis)
        return x
    index: list[Array] = list(np.indices(indices.shape, sparse=True))
    index[axis] = indices
    getattr(np, _SCATTER[mode]).at(x, tuple(index), updates)
    return x


@op("tile")
def tile(a: Args) -> "Array":
    import numpy as np

    return np.tile(a.tensor("x"), a.integers("reps"))


@op("pad", refuse=refuse_other("mode", "constant", ("constant", "reflect", "replicate")))
def pad(a: Args) -> "Array":
    """`pad` holds (before, after) pairs for the last len(pad)/2 axes."""
    import numpy as np

    x = a.tensor("x")
    pairs = a.integers("pad")
    widths = [(0, 0)] * (x.ndim - len(pairs) // 2) + [(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
    mode = a.text("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=a.number("constant_val", 0.0))
    return np.pad(x, widths, mode="reflect" if mode == "reflect" else "edge")


@op("shape")
def shape(a: Args) -> "Array":
    import numpy as np

    return np.array(a.tensor("x").shape, dtype=np.int32)


@op("range_1d")
def range_1d(a: Args) -> "Array":
    import numpy as np

    start, end, step = a.tensor("start"), a.tensor("end"), a.tensor("step")
    # 0-d arrays, whose dtype the result keeps; numpy's stub wants Python or numpy scalars
    return np.arange(start, end, step)  # type: ignore[call-overload]


@op("band_part")
def band_part(a: Args) -> "Array":
    """Keeps the band lower ≤ below, upper ≤ above the diagonal of the last two axes (-1: all)."""
    import numpy as np

    x = a.tensor("x")
    lower, upper = a.integer("lower", -1), a.integer("upper", -1)
    rows, cols = np.indices(x.shape[-2:])
    keep = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
    return np.where(keep, x, 0).astype(x.dtype)


@op("one_hot")
def one_hot(a: Args) -> "Array":
    import numpy as np

    indices = a.tensor("indices").astype(np.int64)
    size = a.integer("one_hot_vector_size")
    on, off = a.number("on_value", 1.0), a.number("off_value", 0.0)
    hot = np.where(np.arange(size) == indices[..., None], on, off)
    return np.moveaxis(hot, -1, a.integer("axis", -1))


@op("reverse")
def reverse(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    return np.flip(x, axis=tuple(a.integers("axes", list(range(x.ndim)))))


@op("depth_to_space", "pixel_shuffle")
def depth_to_space(a: Args) -> "Array":
    """[N, C·b², H, W] → [N, C, H·b, W·b], channel blocks in (row, column, channel) order for
    depth_to_space (DCR) and (channel, row, column) for pixel_shuffle (CRD, PyTorch's)."""
    x = a.tensor("x")
    n, c, h, w = x.shape
    b = a.integer("block_size") if a.op.op_type == "depth_to_space" else a.integer("upscale_factor")
    if a.op.op_type == "depth_to_space":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@op("space_to_depth", "pixel_unshuffle")
def space_to_depth(a: Args) -> "Array":
    x = a.tensor("x")
    n, c, h, w = x.shape
    b = a.integer("block_size") if a.op.op_type == "space_to_depth" else a.integer("downscale_factor")
    y = x.reshape(n, c, h // b, b, w // b, b)
    y = y.transpose(0, 3, 5, 1, 2, 4) if a.op.op_type == "space_to_depth" else y.transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)
