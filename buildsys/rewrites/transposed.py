"""The transposed convolutions (conv_transpose1d / 2d / 3d) as plain convolutions of the zero-stuffed input.

A transposed convolution is the convolution whose gradient the plain one is: with stride s, padding p, dilation d,
output_padding o, groups g and a weight [C_in, C_out/g, *K], it equals a stride-1 convolution, dilation d, of the
input with s − 1 zeros between neighbours, padded by d·(K − 1) − p before and d·(K − 1) − p + o after (where that is
negative, the output is cropped by as much), with the weight's in and out channels swapped within each group and its taps reversed. Every step is a
stack, reshape, pad or slice, a flip and a transpose, so nothing here needs the weight to be a constant.

Why: Core ML's conv_transpose takes only a constant weight ("Input weight must be const at compile time"), where
its conv takes one computed at run time, as a hypernetwork or a weight-shared decoder makes it. Equivalence:
tests/rewrites/test_rewrite_families_transposed.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch


def _per_dim(value: Any, dims: int) -> list[int]:
    values = [value] * dims if isinstance(value, int) else list(value)
    return values * dims if len(values) == 1 else values


def _stuffed(x: torch.Tensor, axis: int, stride: int) -> torch.Tensor:
    """x with stride − 1 zeros between neighbours along `axis` (length (L − 1)·stride + 1)."""
    import torch

    if stride == 1:
        return x
    length = int(x.shape[axis])
    spread = torch.stack([x] + [torch.zeros_like(x)] * (stride - 1), dim=axis + 1)
    return spread.flatten(axis, axis + 1).narrow(axis, 0, (length - 1) * stride + 1)


def _cropped(x: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
    """x without `before` and `after` entries at the ends of `axis`."""
    return x.narrow(axis, before, int(x.shape[axis]) - before - after) if before or after else x


def _padded(x: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
    """x padded with `before` and `after` zeros at the ends of `axis`."""
    import torch

    pads = [before, after]
    if any(pads):
        shape = list(x.shape)
        parts = []
        for amount in pads:
            shape[axis] = amount
            parts.append(torch.zeros(shape, dtype=x.dtype, device=x.device) if amount else None)
        x = torch.cat([p for p in (parts[0], x, parts[1]) if p is not None], dim=axis)
    return x


def conv_transpose(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
                   padding: Any = 0, output_padding: Any = 0, groups: int = 1, dilation: Any = 1, *,
                   dims: int) -> torch.Tensor:
    """F.conv_transpose{dims}d as a stride-1 convolution of the zero-stuffed, padded input."""
    import torch

    if isinstance(padding, str):
        raise RewriteNotApplicable("conv-transpose", f"F.conv_transpose{dims}d", f"padding={padding!r}")
    unbatched = input.dim() == dims + 1
    x = input.unsqueeze(0) if unbatched else input
    strides, pads, outs, dilations = (_per_dim(v, dims) for v in (stride, padding, output_padding, dilation))
    taps = [int(k) for k in weight.shape[2:]]
    crops = []
    for a in range(dims):  # a padding past the kernel's reach crops the output (never the input: it may get too short)
        axis = 2 + a
        x = _stuffed(x, axis, strides[a])
        reach = dilations[a] * (taps[a] - 1)
        before, after = reach - pads[a], reach - pads[a] + outs[a]
        x = _padded(x, axis, max(before, 0), max(after, 0))
        crops.append((axis, max(-before, 0), max(-after, 0)))
    c_in, per_group = int(weight.shape[0]), int(weight.shape[1])
    w = weight.reshape(groups, c_in // groups, per_group, *taps).transpose(1, 2)
    w = w.reshape(groups * per_group, c_in // groups, *taps).flip(list(range(2, 2 + dims)))
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[dims - 1]
    out = conv(x, w, bias, 1, 0, dilations, groups)
    for axis, before, after in crops:
        out = _cropped(out, axis, before, after)
    return out.squeeze(0) if unbatched else out


def _each(dims: int) -> Any:
    def handler(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
                padding: Any = 0, output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> torch.Tensor:
        return conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, dims=dims)
    return handler


_HANDLERS: dict[int, Any] = {d: _each(d) for d in (1, 2, 3)}


def _handlers() -> HandlerTable:
    import torch

    table: dict[Any, Any] = {}
    for d, handler in _HANDLERS.items():
        for namespace in (torch, torch.nn.functional):
            table[getattr(namespace, f"conv_transpose{d}d")] = handler
    return table


def _ops(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"aten::{n}" for n in names)


REWRITES = (
    Rewrite(
        name="conv-transpose",
        version=1,
        removes=_ops(["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]),
        description="conv_transpose1d / 2d / 3d (stride, padding, output_padding, groups, dilation) as a stride-1 "
                    "convolution of the zero-stuffed input with the flipped, regrouped weight: no constant weight "
                    "needed",
        handlers=_handlers,
        signs=(r"op_type: conv_transpose\) Input weight must be const",),
    ),
)
