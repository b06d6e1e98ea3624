"""Reference implementations of MIL's neural-network ops in NumPy: linear, matmul, convolution, pooling, normalization, softmax, attention, resizing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, SupportsInt, cast

from buildsys.formats.coreml.mil_registry import Args, const_value, op

if TYPE_CHECKING:
    import numpy as np
    from coremltools.converters.mil.mil import Operation

    Array = np.ndarray

Pads = list[tuple[int, int]]


@op("linear")
def linear(a: Args) -> "Array":
    import numpy as np

    out = np.matmul(a.tensor("x"), a.tensor("weight").T)
    return out + a.tensor("bias") if a.has("bias") else out


@op("matmul")
def matmul(a: Args) -> "Array":
    import numpy as np

    x, y = a.tensor("x"), a.tensor("y")
    if a.flag("transpose_x") and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if a.flag("transpose_y") and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@op("einsum")
def einsum(a: Args) -> "Array":
    import numpy as np

    return np.einsum(a.text("equation"), *a.tensors("values"))


def window_pads(a: Args, sizes: tuple[int, ...], kernel: list[int], strides: list[int], dilations: list[int],
                ceil_mode: bool = False) -> tuple[Pads, list[int], Pads]:
    """(explicit pads, output sizes, extra end pads that only ceil_mode adds) of a sliding window."""
    n = len(sizes)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    pad_type = a.text("pad_type", "valid")
    if pad_type == "custom":
        pairs = a.integers("pad", [0] * 2 * n)
        pads = [(pairs[2 * i], pairs[2 * i + 1]) for i in range(n)]
    elif pad_type in ("same", "same_lower"):
        pads = []
        for size, s, w in zip(sizes, strides, span):
            total = max((-(-size // s) - 1) * s + w - size, 0)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if pad_type == "same" else (big, small))
    else:
        pads = [(0, 0)] * n
    outs, extra = [], []
    for size, (b, e), s, w in zip(sizes, pads, strides, span):
        room = size + b + e - w
        out = (-(-room // s) if ceil_mode else room // s) + 1
        if ceil_mode and (out - 1) * s >= size + b:  # PyTorch: the last window must start inside
            out -= 1
        outs.append(out)
        extra.append((0, max((out - 1) * s + w - (size + b + e), 0)))
    return pads, outs, extra


def _offsets(kernel: list[int], dilations: list[int], strides: list[int], outs: list[int]) -> list[tuple[slice, ...]]:
    """For each kernel position, the strided slice of the padded input it reads."""
    import numpy as np

    return [tuple(slice(o * d, o * d + (n - 1) * s + 1, s) for o, d, s, n in zip(pos, dilations, strides, outs))
            for pos in np.ndindex(*kernel)]


def _conv_geometry(operation: "Operation") -> str | None:
    pad_type = const_value(operation, "pad_type") or "valid"
    if operation.op_type == "conv_transpose" and pad_type not in ("valid", "custom"):
        return f"conv_transpose pad_type {pad_type}"
    return None


@op("conv", refuse=_conv_geometry)
def conv(a: Args) -> "Array":
    """Grouped N-d convolution, accumulated one kernel position at a time (one matmul each)."""
    import numpy as np

    x, w = a.tensor("x"), a.tensor("weight")
    n_sp = x.ndim - 2
    kernel = list(w.shape[2:])
    strides, dilations = a.integers("strides", [1] * n_sp), a.integers("dilations", [1] * n_sp)
    groups = a.integer("groups", 1)
    pads, outs, _ = window_pads(a, x.shape[2:], kernel, strides, dilations)
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    batch, c_in, c_out = x.shape[0], x.shape[1], w.shape[0]
    cg, og = c_in // groups, c_out // groups
    points = int(np.prod(outs))
    out = np.zeros((batch, groups, og, points), dtype=np.float32)
    for pos, where in zip(np.ndindex(*kernel), _offsets(kernel, dilations, strides, outs)):
        xs = xp[(slice(None), slice(None), *where)].reshape(batch, groups, cg, points)
        wk = w[(slice(None), slice(None), *pos)].reshape(groups, og, cg)
        if cg == 1 and og == 1:  # depthwise: a product, not a matmul
            out += xs * wk.reshape(1, groups, 1, 1)
        else:
            out += np.matmul(wk, xs)
    out = out.reshape(batch, c_out, *outs)
    if a.has("bias"):
        out += a.tensor("bias").reshape((1, -1) + (1,) * n_sp)
    return out


@op("conv_transpose", refuse=_conv_geometry)
def conv_transpose(a: Args) -> "Array":
    """The adjoint of conv: every input point scatters its kernel into the (stride-spaced) output,
    then the pads are cropped; `output_shape` may ask for extra trailing rows (output_padding)."""
    import numpy as np

    x, w = a.tensor("x"), a.tensor("weight")  # w: [C_in, C_out / groups, *kernel]
    n_sp = x.ndim - 2
    kernel = list(w.shape[2:])
    strides, dilations = a.integers("strides", [1] * n_sp), a.integers("dilations", [1] * n_sp)
    groups = a.integer("groups", 1)
    pairs = a.integers("pad", [0] * 2 * n_sp) if a.text("pad_type", "valid") == "custom" else [0] * 2 * n_sp
    batch, c_in = x.shape[:2]
    cg, og = c_in // groups, w.shape[1]
    sizes = x.shape[2:]
    full = [(s - 1) * st + (k - 1) * d + 1 for s, st, k, d in zip(sizes, strides, kernel, dilations)]
    want = [f - pairs[2 * i] - pairs[2 * i + 1] for i, f in enumerate(full)]
    if a.has("output_shape"):
        want = a.integers("output_shape")[-n_sp:]
    canvas = np.zeros((batch, groups, og, *[max(f, pairs[2 * i] + want[i]) for i, f in enumerate(full)]), np.float32)
    xg = x.reshape(batch, groups, cg, -1)
    for pos in np.ndindex(*kernel):
        wk = w[(slice(None), slice(None), *pos)].reshape(groups, cg, og)
        contrib = np.matmul(np.swapaxes(wk, 1, 2), xg).reshape(batch, groups, og, *sizes)
        where = tuple(slice(p * d, p * d + (s - 1) * st + 1, st) for p, d, s, st in zip(pos, dilations, sizes, strides))
        canvas[(slice(None), slice(None), slice(None), *where)] += contrib
    crop = tuple(slice(pairs[2 * i], pairs[2 * i] + want[i]) for i in range(n_sp))
    out = canvas[(slice(None), slice(None), slice(None), *crop)].reshape(batch, groups * og, *want)
    if a.has("bias"):
        out = out + a.tensor("bias").reshape((1, -1) + (1,) * n_sp)
    return out


@op("max_pool", "avg_pool", "l2_pool")
def pool(a: Args) -> "Array":
    """Pooling over the trailing spatial axes; padding never wins a max, and an average divides by
    the window's count of input (and, unless excluded, explicit padding) positions."""
    import numpy as np

    x = a.tensor("x")
    n_sp = len(a.integers("kernel_sizes"))
    kernel = a.integers("kernel_sizes")
    strides = a.integers("strides", [1] * n_sp)
    ones = [1] * n_sp
    pads, outs, extra = window_pads(a, x.shape[-n_sp:], kernel, strides, ones, a.flag("ceil_mode"))
    lead = [(0, 0)] * (x.ndim - n_sp)
    both = [(p[0], p[1] + e[1]) for p, e in zip(pads, extra)]
    kind = a.op.op_type
    if kind == "max_pool":
        xp = np.pad(x, lead + both, constant_values=-np.inf)
        out = np.full(x.shape[:-n_sp] + tuple(outs), -np.inf, np.float32)
        for where in _offsets(kernel, ones, strides, outs):
            np.maximum(out, xp[(Ellipsis,) + where], out=out)
        return out
    values = np.square(x) if kind == "l2_pool" else x
    xp = np.pad(values, lead + both)
    total = np.zeros(x.shape[:-n_sp] + tuple(outs), np.float32)
    for where in _offsets(kernel, ones, strides, outs):
        total += xp[(Ellipsis,) + where]
    if kind == "l2_pool":
        return np.sqrt(total)
    counted = np.pad(np.ones(x.shape[-n_sp:], np.float32), pads,
                     constant_values=0.0 if a.flag("exclude_padding_from_average") else 1.0)
    counted = np.pad(counted, extra)
    count = np.zeros(tuple(outs), np.float32)
    for where in _offsets(kernel, ones, strides, outs):
        count += counted[where]
    return total / count


@op("batch_norm")
def batch_norm(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = 1 / np.sqrt(a.tensor("variance") + a.number("epsilon", 1e-5))
    if a.has("gamma"):
        scale = scale * a.tensor("gamma")
    shift = -a.tensor("mean") * scale + (a.tensor("beta") if a.has("beta") else 0)
    return x * scale.reshape(shape) + shift.reshape(shape)


def _normalize(a: Args, x: "Array", axes: tuple[int, ...], shape: Sequence[int]) -> "Array":
    """`x` normalized over `axes` (mean 0, variance 1, `epsilon` added to the variance), then scaled by
    `gamma` and shifted by `beta` where the op has them, both reshaped to `shape`."""
    import numpy as np

    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    variance = np.square(centered).mean(axis=axes, keepdims=True)
    out = centered / np.sqrt(variance + np.float32(a.number("epsilon", 1e-5)))
    if a.has("gamma"):
        out = out * a.tensor("gamma").reshape(shape)
    if a.has("beta"):
        out = out + a.tensor("beta").reshape(shape)
    return out


@op("layer_norm")
def layer_norm(a: Args) -> "Array":
    x = a.tensor("x")
    axes = tuple(sorted(ax % x.ndim for ax in a.integers("axes", list(range(x.ndim)))))
    return _normalize(a, x, axes, [x.shape[i] if i in axes else 1 for i in range(x.ndim)])


@op("instance_norm")
def instance_norm(a: Args) -> "Array":
    x = a.tensor("x")
    return _normalize(a, x, tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2))


@op("l2_norm")
def l2_norm(a: Args) -> "Array":
    """x / sqrt(sum(x²) + epsilon) over the `axes` given (iOS17), else over the last three axes."""
    import numpy as np

    x = a.tensor("x")
    axes = tuple(ax % x.ndim for ax in a.integers("axes")) if a.has("axes") else tuple(range(max(x.ndim - 3, 0), x.ndim))
    return x / np.sqrt(np.square(x).sum(axis=axes, keepdims=True) + np.float32(a.number("epsilon", 1e-6)))


def _lrn_size(operation: "Operation") -> str | None:
    size = const_value(operation, "size")
    # MIL does not say how an even window sits around its channel
    return None if size is None or int(cast(SupportsInt, size)) % 2 else f"local_response_norm with an even size ({size})"


@op("local_response_norm", refuse=_lrn_size)
def local_response_norm(a: Args) -> "Array":
    """x / (k + alpha/size · Σ over the `size` channels centred on each channel of x²)^beta."""
    import numpy as np

    x = a.tensor("x")
    size = a.integer("size")
    sq = np.pad(np.square(x), [(0, 0), (size // 2, size // 2)] + [(0, 0)] * (x.ndim - 2))
    window = sum(sq[:, i:i + x.shape[1]] for i in range(size))
    return x / np.power(a.number("k", 1.0) + a.number("alpha", 1e-4) / size * window, a.number("beta", 0.75))


@op("softmax")
def softmax(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    axis = a.integer("axis", -1)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@op("scaled_dot_product_attention")
def scaled_dot_product_attention(a: Args) -> "Array":
    import numpy as np

    q, k, v = a.tensor("query"), a.tensor("key"), a.tensor("value")
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.float32(np.sqrt(q.shape[-1]))
    if a.has("attn_mask"):
        mask = a.tensor("attn_mask")
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.matmul(e / e.sum(axis=-1, keepdims=True), v)


@op("crop")
def crop(a: Args) -> "Array":
    x = a.tensor("x")
    (top, bottom), (left, right) = a.integers("crop_height"), a.integers("crop_width")
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def _linear_resize(x: "Array", axis: int, src: "Array") -> "Array":
    """Linear interpolation of x along `axis` at fractional source positions `src` (clamped)."""
    import numpy as np

    size = x.shape[axis]
    src = np.clip(src, 0, size - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    frac = (src - low).astype(np.float32).reshape([-1 if i == axis % x.ndim else 1 for i in range(x.ndim)])
    return np.take(x, low, axis=axis) * (1 - frac) + np.take(x, high, axis=axis) * frac


def _sources(size: int, out: int, mode: str) -> "Array":
    import numpy as np

    dst = np.arange(out, dtype=np.float64)
    if mode in ("ALIGN_CORNERS", "STRICT_ALIGN_CORNERS"):
        return dst * ((size - 1) / (out - 1)) if out > 1 else np.zeros(out)
    if mode == "UNALIGN_CORNERS":
        return np.maximum((dst + 0.5) * size / out - 0.5, 0)
    return dst * size / out  # DEFAULT


def _resize_mode(operation: "Operation") -> str | None:
    mode = const_value(operation, "sampling_mode")
    if operation.op_type == "resize_bilinear" and (mode or "DEFAULT") not in (
            "DEFAULT", "ALIGN_CORNERS", "STRICT_ALIGN_CORNERS", "UNALIGN_CORNERS"):
        return f"resize_bilinear sampling_mode {mode}"
    return None


@op("upsample_bilinear")
def upsample_bilinear(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    align = a.flag("align_corners")
    half = a.flag("half_pixel_centers", not align)
    for axis, key in ((-2, "scale_factor_height"), (-1, "scale_factor_width")):
        scale = a.number(key, 1.0)
        out = int(np.floor(x.shape[axis] * scale))
        mode = "ALIGN_CORNERS" if align else "UNALIGN_CORNERS" if half else "DEFAULT"
        src = _sources(x.shape[axis], out, mode) if mode != "DEFAULT" else np.arange(out) / scale
        x = _linear_resize(x, axis, src)
    return x


@op("resize_bilinear", refuse=_resize_mode)
def resize_bilinear(a: Args) -> "Array":
    x = a.tensor("x")
    mode = a.text("sampling_mode", "DEFAULT")
    for axis, key in ((-2, "target_size_height"), (-1, "target_size_width")):
        x = _linear_resize(x, axis, _sources(x.shape[axis], a.integer(key), mode))
    return x


@op("upsample_nearest_neighbor", "resize_nearest_neighbor")
def nearest(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    for axis, dim in ((-2, "height"), (-1, "width")):
        size = x.shape[axis]
        if a.op.op_type == "upsample_nearest_neighbor":
            scale = a.number(f"scale_factor_{dim}", 1.0)
            out = int(np.floor(size * scale))
        else:
            out = a.integer(f"target_size_{dim}")
            scale = out / size
        src = np.minimum(np.floor(np.arange(out) / scale).astype(np.int64), size - 1)
        x = np.take(x, src, axis=axis)
    return x

