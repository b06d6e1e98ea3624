"""The resampling family: F.interpolate in every mode (nearest, nearest-exact, linear, bilinear, bicubic, trilinear,
area; align_corners; size or scale_factor, recompute_scale_factor; antialias) and torch's own antialiased upsample
functions, as one constant matrix per spatial axis.

Every one of these is separable and linear in its input: along each spatial axis, output position j is a fixed
weighted sum of input positions, and a d-D resample is the d 1-D resamples one after the other. So the rewrite
does not re-derive PyTorch's coordinate conventions (half-pixel offsets, align_corners, the cubic kernel's
clamped borders, the antialias filter's support, nearest-exact's rounding): per axis it asks PyTorch itself,
running the same function eagerly on an identity basis laid along that axis (every other axis of length 2, which
each mode maps to itself), and reads the [L_in, L_out] matrix off the result. The graph is then a transpose and a
matmul per axis. Static sizes only (the matrices depend on them); floating dtypes only.

Why a rewrite and not a decomposition: measured on OpInfo's samples, the legacy ONNX exporter refuses
nearest-exact and the antialiased bilinear, coremltools has no conversion for bicubic, trilinear or nearest-exact,
and PyTorch's decompositions of these are index arithmetic with gathers that several converters take no better.
A matmul every converter takes. Equivalence: tests/rewrites/test_rewrite_families_resample.py.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

_FAMILY = "resample"
#: The length of the basis' other axes (each mode maps it to itself at scale 1).
OTHER = 2


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    """Run real tensors outside any tracer in force (torch.jit.trace's, torch.export's fake and proxy modes): the
    matrices are computed, not traced, and enter the graph as constants."""
    import torch
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    set_state = getattr(torch._C, "_set_tracing_state")  # private, and untyped in torch's stubs
    state = torch._C._get_tracing_state()
    set_state(None)
    try:
        # no torch.no_grad(): torch.export records a grad-mode switch as a wrap_with_set_grad_enabled node even
        # here, and a saved program holding one does not load (SpecViolationError); the basis needs no grad anyway
        with unset_fake_temporarily(), disable_proxy_modes_tracing():
            yield
    finally:
        set_state(state)


def _separable(x: torch.Tensor, dims: int, op: str, along: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """x [N, C, *spatial(dims)] resampled one axis at a time by the matrix `along(basis, a)` gives: `along` runs the
    original function on `basis` [L_a, 1, 2…, L_a at axis a, 2…] (one unit impulse per batch entry, constant along
    the other axes) and returns its output, whose axis a holds the response."""
    import torch

    from buildsys.rewrites.mechanism import constant, static_size

    if not x.is_floating_point():
        raise RewriteNotApplicable(_FAMILY, op, f"{x.dtype} input (the resampling matrices are floating point)")
    if x.dim() != dims + 2:
        raise RewriteNotApplicable(_FAMILY, op, f"a {x.dim()}-D input to a {dims}-D resample")
    lengths = [static_size(x, 2 + a, _FAMILY, op) for a in range(dims)]
    for a, length in enumerate(lengths):
        shape = [length, 1] + [1] * dims
        shape[2 + a] = length
        with _eager():
            # the other axes at length 2, mapped to themselves: PyTorch's antialiased kernels misplace every
            # window along one axis when another has length 1
            basis = torch.eye(length, dtype=torch.float64).reshape(shape).expand(
                *[n if i < 2 or i == 2 + a else OTHER for i, n in enumerate(shape)]).contiguous()
            response = along(basis, a)
            index: list[slice | int] = [slice(None)] * response.dim()
            for b in range(dims):
                index[2 + b] = slice(None) if b == a else 0
            matrix = response[tuple(index)].reshape(length, -1).numpy()                  # [L_in, L_out]
        axis, last = 2 + a, x.dim() - 1
        x = (x.transpose(axis, last) @ constant(matrix, x.dtype)).transpose(axis, last)
    return x


def _per_axis(value: Any, dims: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * dims


def interpolate(input: torch.Tensor, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                antialias: bool = False) -> torch.Tensor:
    """F.interpolate, every mode, as per-axis matrices PyTorch computes itself."""
    import torch.nn.functional as F

    op = f"torch.nn.functional.interpolate (mode {mode!r})"
    dims = input.dim() - 2
    if dims not in (1, 2, 3):
        raise RewriteNotApplicable(_FAMILY, op, f"a {input.dim()}-D input")
    sizes = _per_axis(size, dims) if size is not None else None
    scales = _per_axis(scale_factor, dims) if scale_factor is not None else None

    def along(basis: torch.Tensor, a: int) -> torch.Tensor:
        one_size = [OTHER] * dims
        if sizes is not None:
            one_size[a] = sizes[a]
        one_scale = [1.0] * dims
        if scales is not None:
            one_scale[a] = scales[a]
        # bicubic, bilinear and trilinear are defined only at their rank: the basis keeps every axis
        return F.interpolate(basis, size=one_size if sizes is not None else None,
                             scale_factor=one_scale if scales is not None else None, mode=mode,
                             align_corners=align_corners, recompute_scale_factor=recompute_scale_factor,
                             antialias=antialias)

    return _separable(input, dims, op, along)


def _antialiased(original: Callable[..., torch.Tensor], name: str) -> Callable[..., torch.Tensor]:
    """torch's antialiased upsample functions as called directly: torch._C._nn.<name>(input, output_size,
    align_corners, scale_factors) and torch.ops.aten.<name>, whose default overload takes (scales_h, scales_w)."""
    op = f"torch.ops.aten.{name}"

    def upsample(input: torch.Tensor, output_size: Sequence[int] | None, align_corners: bool, *scales: Any,
                 **named: Any) -> torch.Tensor:
        given = list(scales) + list(named.values())
        per_axis = list(given[0]) if len(given) == 1 and given[0] is not None else given if len(given) == 2 else None
        if per_axis is not None and any(v is None for v in per_axis):
            per_axis = None

        def along(basis: torch.Tensor, a: int) -> torch.Tensor:
            sizes = None
            if output_size is not None:
                sizes = [OTHER, OTHER]
                sizes[a] = int(output_size[a])
            if per_axis is None:
                return original(basis, sizes, align_corners, *given)
            ones: list[Any] = [1.0, 1.0]
            ones[a] = per_axis[a]
            return original(basis, sizes, align_corners, *([ones] if len(given) == 1 else ones))

        return _separable(input, 2, op, along)

    return upsample


def _handlers() -> HandlerTable:
    import torch
    import torch.nn.functional as F

    table: dict[Callable[..., object], Any] = {F.interpolate: interpolate}
    for name in ("_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa"):
        packet = getattr(torch.ops.aten, name)
        for func in (getattr(torch._C._nn, name), packet, packet.default, packet.vec):
            table[func] = _antialiased(func, name)
    return table


REWRITES = (
    Rewrite(
        name="resample",
        version=2,  # 2: no grad-mode switch in the traced forward (a saved program holding one did not load)
        removes=tuple(f"aten::{op}" for op in (
            "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
            "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
            "upsample_bicubic2d", "upsample_trilinear3d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")),
        description="F.interpolate in every mode (antialias, nearest-exact, bicubic, trilinear, area, …) and the "
                    "antialiased upsample functions as one constant matrix per spatial axis, read from PyTorch "
                    "itself on an identity basis",
        handlers=_handlers,
        signs=(r"upsample_\w+", r"\bResize\b"),
    ),
)
