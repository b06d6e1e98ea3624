"""The pooling family: adaptive average and max pooling (1-, 2- and 3-D) at any output size, as static bins, and
fractional max pooling (2-D, 3-D) from its samples.

Along a pooled axis of static length L pooled to O, output i reads the bin [⌊i·L/O⌋, ⌈(i+1)·L/O⌉), as torch's
kernel does; bins of neighbouring outputs overlap where O does not divide L, and repeat where O > L. A bin of a
2-D or 3-D pool is the product of its axes' bins, so both reductions are separable, one axis after the other:
- average: a matmul of the axis (moved last) by a constant [L, O] matrix holding 1/|bin| in each bin;
- max: where O divides L, a reshape to [..., O, L/O] and amax; otherwise each bin's slice, amax, concatenated.
An output size of None keeps that axis; an axis already at its output size is left alone. An input without the
batch and channel (or channel-only) leading axes torch accepts is refused.

Max pools that return indices, and fractional max pools (whose windows come from one uniform sample per plane and
axis, an input of the model: `_random_samples`), go through buildsys/rewrites/windows.py: each window's flat
positions (constants for adaptive bins, computed from the samples as ATen's generate_intervals for fractional
ones), a gather, max and argmax over the window; indices are flat into the pooled plane, as torch returns them.
A fractional pool without `_random_samples` is refused: torch draws new windows on every call.

Max pooling with return_indices (F.max_pool1d / 2d / 3d with return_indices=True, which dispatch to
F.max_poolNd_with_indices, and ATen's max_poolNd_with_indices called directly) goes the same way, its windows
constants: along an axis, output i reads start + k·dilation (start = i·stride − padding, k < kernel) inside
[0, L), the implicit −inf padding never read; the output size is torch's (with ceil_mode, a last window must
start inside the input or its left padding). Torch's argument checks (padding ≤ kernel // 2, an output of size
≥ 1) and a window with no input position (dilation jumping over the input) are refused. Max pools without
indices are left to the converter's own max pool. TFLite has no MaxPoolWithArgmax; coremltools refuses it.

Why a rewrite and not a decomposition: the legacy ONNX exporter refuses every adaptive pool whose output does not
divide its input ("output size that are not factor of input size"), the dynamo exporter every adaptive max pool
of that kind; core ATen keeps adaptive_max_pool2d / 3d and _adaptive_avg_pool2d / 3d (no decomposition to go
to), which litert-torch has no lowering for at 3-D and coremltools converts only at sizes that divide. Matmuls,
slices, amax and concatenation every converter here takes. Equivalence: tests/rewrites/test_rewrite_families_pooling.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name

if TYPE_CHECKING:
    import torch


def _bins(length: int, out: int) -> list[tuple[int, int]]:
    """Each output's [start, end) along an axis of `length` pooled to `out`, as torch's adaptive kernels."""
    return [((i * length) // out, -((-(i + 1) * length) // out)) for i in range(out)]


def _sizes(op: str, x: torch.Tensor, output_size: Any, dims: int) -> list[int]:
    """The output size per pooled axis (None keeps the axis), checked against the input's rank."""
    if x.dim() not in (dims + 1, dims + 2):
        raise RewriteNotApplicable("pooling", op, f"a {x.dim()}-D input ({dims + 1}-D or {dims + 2}-D expected)")
    sizes: Sequence[Any] = [output_size] * dims if isinstance(output_size, int) else list(output_size)
    if len(sizes) == 1 and dims > 1:
        sizes = list(sizes) * dims
    if len(sizes) != dims:
        raise RewriteNotApplicable("pooling", op, f"output size {output_size!r} for a {dims}-D pool")
    length = x.shape[-dims:]
    return [int(length[i]) if s is None else int(s) for i, s in enumerate(sizes)]


def _average_axis(x: torch.Tensor, axis: int, out: int) -> torch.Tensor:
    """Adaptive average along `axis`: a matmul by the constant bin matrix."""
    import numpy as np

    from buildsys.rewrites.mechanism import constant

    length = int(x.shape[axis])
    if length == out:
        return x
    if out == 1:
        return x.mean(axis, keepdim=True)
    weights = np.zeros((length, out))
    for i, (start, end) in enumerate(_bins(length, out)):
        weights[start:end, i] = 1.0 / (end - start)
    last = x.dim() - 1  # dims as non-negative numbers: the legacy ONNX exporter wrote movedim(-2, -1) as an
    position = x.dim() + axis  # invalid Transpose perm {0, 1, 3, -2} (torchvision's AlexNet at 64 × 64)
    return (x.transpose(position, last) @ constant(weights, x.dtype)).transpose(position, last)


def _max_axis(x: torch.Tensor, axis: int, out: int) -> torch.Tensor:
    """Adaptive max along `axis` (negative): a reshape and amax where `out` divides the axis, else per bin."""
    import torch

    length = int(x.shape[axis])
    if length == out:
        return x
    if length % out == 0:
        shape, position = list(x.shape), x.dim() + axis
        grouped = x.reshape(*shape[:position], out, length // out, *shape[position + 1:])
        return grouped.amax(position + 1)
    return torch.cat([x.narrow(axis, start, end - start).amax(axis, keepdim=True)
                      for start, end in _bins(length, out)], dim=axis)


def _pool(op: str, dims: int, reduce: Any, x: torch.Tensor, output_size: Any) -> torch.Tensor:
    sizes = _sizes(op, x, output_size, dims)
    for axis, out in zip(range(-dims, 0), sizes):
        x = reduce(x, axis, out)
    return x


def _average(dims: int) -> Any:
    op = f"torch.nn.functional.adaptive_avg_pool{dims}d"

    def adaptive_avg_pool(input: torch.Tensor, output_size: Any) -> torch.Tensor:
        return _pool(op, dims, _average_axis, input, output_size)

    return adaptive_avg_pool


def _maximum(dims: int) -> Any:
    op = f"torch.nn.functional.adaptive_max_pool{dims}d"

    def adaptive_max_pool(input: torch.Tensor, output_size: Any, return_indices: bool = False) -> Any:
        if not return_indices:
            return _pool(op, dims, _max_axis, input, output_size)
        import numpy as np

        from buildsys.rewrites.mechanism import constant
        from buildsys.rewrites.windows import static_positions, window_max

        sizes = _sizes(op, input, output_size, dims)
        lengths = [int(n) for n in input.shape[-dims:]]
        positions = [constant(np.asarray(static_positions(_bins(n, o)), dtype=np.int64))
                     for n, o in zip(lengths, sizes)]
        return window_max(input, positions, dims)

    return adaptive_max_pool


def _fractional(dims: int, return_indices: bool) -> Any:
    op = f"torch.nn.functional.fractional_max_pool{dims}d"

    def fractional_max_pool(input: torch.Tensor, kernel_size: Any, output_size: Any = None,
                            output_ratio: Any = None, return_indices: bool = return_indices,
                            _random_samples: torch.Tensor | None = None) -> Any:
        import torch

        from buildsys.rewrites.windows import fractional_starts, window_max

        if _random_samples is None:
            raise RewriteNotApplicable("pooling", op, "no _random_samples: torch draws the windows at random on "
                                       "every call (pass _random_samples for a deterministic pool)")
        if input.dim() not in (dims + 1, dims + 2):
            raise RewriteNotApplicable("pooling", op, f"a {input.dim()}-D input")
        lengths = [int(n) for n in input.shape[-dims:]]
        pools = [int(k) for k in (kernel_size if isinstance(kernel_size, (list, tuple)) else [kernel_size] * dims)]
        if output_size is None:
            ratios = output_ratio if isinstance(output_ratio, (list, tuple)) else [output_ratio] * dims
            output_size = [int(n * r) for n, r in zip(lengths, ratios)]
        sizes = _sizes(op, input, output_size, dims)
        samples = _random_samples if input.dim() == dims + 2 else _random_samples[0]   # [*planes, dims]
        # ATen reads a 2-D pool's samples as (W, H), a 3-D pool's as (T, H, W)
        order = [1, 0] if dims == 2 else list(range(dims))
        positions = []
        for a in range(dims):
            starts = fractional_starts(samples[..., order[a]], lengths[a], sizes[a], pools[a])
            offsets = torch.arange(pools[a], dtype=torch.int64)
            positions.append(starts.unsqueeze(-1) + offsets)                               # [*planes, O, K]
        values, indices = window_max(input, positions, dims)
        return (values, indices) if return_indices else values

    return fractional_max_pool


def _with_indices(dims: int) -> Any:
    def adaptive_max_pool_with_indices(input: torch.Tensor, output_size: Any, return_indices: bool = True) -> Any:
        return _maximum(dims)(input, output_size, return_indices=True)

    return adaptive_max_pool_with_indices


def _per_axis(value: Any, dims: int, default: Any = None) -> list[int]:
    """An int or a sequence of one or `dims` ints per pooled axis; None or empty (torch's stride) → `default`."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        value = default
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in (values * dims if len(values) == 1 else values)]


def _strided_positions(op: str, length: int, kernel: int, stride: int, padding: int, dilation: int,
                       ceil_mode: bool) -> list[list[int]]:
    """[O][K] input positions of max_pool's windows along one axis: torch's output size (pooling_output_shape:
    with ceil_mode, a last window starting past the input and its left padding is dropped), positions
    start + k·dilation inside [0, length), short windows padded with their first position after the valid ones."""
    if min(kernel, stride, dilation) <= 0 or padding < 0 or padding > kernel // 2:
        raise RewriteNotApplicable("pooling", op, f"kernel {kernel}, stride {stride}, padding {padding}, dilation "
                                   f"{dilation} (torch refuses them)")
    span = dilation * (kernel - 1) + 1
    out = (length + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= length + padding:
        out -= 1
    if out <= 0:
        raise RewriteNotApplicable("pooling", op, f"an output of size {out} (torch refuses it)")
    windows = []
    for i in range(out):
        valid = [p for p in range(i * stride - padding, i * stride - padding + span, dilation) if 0 <= p < length]
        if not valid:  # torch returns -inf and an index outside the window
            raise RewriteNotApplicable("pooling", op, f"a window with no input position (output {i})")
        windows.append(valid + [valid[0]] * (kernel - len(valid)))
    return windows


def _max_with_indices(dims: int) -> Any:
    op = f"torch.nn.functional.max_pool{dims}d"

    def max_pool_with_indices(input: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
                              dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = True) -> Any:
        import numpy as np

        from buildsys.rewrites.mechanism import constant
        from buildsys.rewrites.windows import window_max

        if input.dim() not in (dims + 1, dims + 2):
            raise RewriteNotApplicable("pooling", op, f"a {input.dim()}-D input")
        lengths = [int(n) for n in input.shape[-dims:]]
        kernels = _per_axis(kernel_size, dims)
        strides, pads, dilations = (_per_axis(stride, dims, kernels), _per_axis(padding, dims),
                                    _per_axis(dilation, dims))
        if not len(kernels) == len(strides) == len(pads) == len(dilations) == dims:
            raise RewriteNotApplicable("pooling", op, f"arguments for a pool of another rank than {dims}")
        positions = [constant(np.asarray(_strided_positions(op, *axis, bool(ceil_mode)), dtype=np.int64))
                     for axis in zip(lengths, kernels, strides, pads, dilations)]
        return window_max(input, positions, dims)  # F's *_with_indices return both whatever return_indices says

    return max_pool_with_indices


def _handlers() -> HandlerTable:
    import torch
    import torch.nn.functional as F

    table = by_name({f"adaptive_avg_pool{d}d": _average(d) for d in (1, 2, 3)}, (F,))
    table.update(by_name({f"adaptive_max_pool{d}d": _maximum(d) for d in (1, 2, 3)}, (F,)))
    # return_indices=True dispatches to these: refused by name, not left for the converter to refuse again
    table.update(by_name({f"adaptive_max_pool{d}d_with_indices": _with_indices(d) for d in (1, 2, 3)}, (F,)))
    for d in (2, 3):  # without indices, torch hands the mode the public (dispatching) function itself
        table[getattr(F, f"fractional_max_pool{d}d")] = _fractional(d, False)
        table[getattr(F, f"fractional_max_pool{d}d_with_indices")] = _fractional(d, True)
    table[torch.adaptive_avg_pool1d] = _average(1)  # F.adaptive_avg_pool1d is torch's own function
    # F.max_poolNd(return_indices=True) dispatches to F.max_poolNd_with_indices; without indices, F.max_poolNd is
    # left alone (every converter has a max pool). ATen's own functions too, for a model calling them directly.
    table.update(by_name({f"max_pool{d}d_with_indices": _max_with_indices(d) for d in (1, 2, 3)},
                         (F, torch, torch._C._nn)))
    return table


REWRITES = (
    Rewrite(
        name="pooling",
        version=4,  # 2: the average as transposes with non-negative dims; 3: indices, fractional max pools;
        # 4: max pools with indices, a NaN's index as torch's (the last NaN of the window)
        removes=tuple(f"aten::{kind}_pool{d}d" for kind in ("adaptive_avg", "adaptive_max") for d in (1, 2, 3))
        + ("aten::_adaptive_avg_pool2d", "aten::_adaptive_avg_pool3d", "aten::fractional_max_pool2d",
           "aten::fractional_max_pool3d")
        + tuple(f"aten::max_pool{d}d_with_indices" for d in (1, 2, 3)),
        description="adaptive average and max pooling (1-, 2-, 3-D, any output size) as static bins: a matmul by "
                    "a constant bin matrix per axis (average), a reshape and amax or one amax per bin (max); max "
                    "with indices, fractional max pooling and max pooling with indices as a gather of each "
                    "window and max / argmax",
        handlers=_handlers,
        signs=(r"adaptive_(avg|max)_pool", r"output size that are not factor of input size", r"fractional_max_pool",
               r"MaxPoolWithArgmax"),
    ),
)
