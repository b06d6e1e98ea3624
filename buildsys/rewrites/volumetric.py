"""The volumetric family: 3-D convolution and pooling as their 2-D forms over the depth axis, at static depth.

- conv3d(input, weight, bias, stride, padding, dilation, groups): the depth padded with zeros, then per tap i of
  the kernel's depth, the frames it reads at every output depth (a strided slice) folded into the batch and
  convolved in 2-D with the kernel's slice i (stride, padding, dilation and groups of the other two axes); the
  taps summed, the bias added. padding 'valid' and 'same' (torch's split: the extra pixel after) included.
- max_pool3d / avg_pool3d(kernel, stride, padding, …): the window is a box, so each reduction is separable:
  the 2-D pool over height and width per frame, then the max (or mean) over the depth taps of the window.
  Depth padding is the lowest float for the max, zeros for the average (count_include_pad=True: every window
  divides by its full size, as torch's default). ceil_mode, divisor_override and count_include_pad=False with
  padding are refused; return_indices=True is the pooling family's (max pools with indices at any rank).
Unbatched [C, D, H, W] inputs are taken as torch does. Cost: kernel-depth 2-D convolutions instead of one 3-D one.

Why a rewrite and not a decomposition: core ATen keeps `convolution`, `max_pool3d_with_indices` and `avg_pool3d`,
and the ExecuTorch runtime's portable kernels have none of them at 3-D (its convolution kernel takes 1-D and 2-D
inputs and fails at run time with error 0x12; the pools have no kernel) while XNNPACK delegates neither. 2-D
convolutions and pools every runtime here has. Equivalence: tests/rewrites/test_rewrite_families_volumetric.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name

if TYPE_CHECKING:
    import torch


def _triple(value: Any) -> tuple[int, int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]),) * 3 if len(value) == 1 else (int(value[0]), int(value[1]), int(value[2]))
    return (int(value),) * 3


def _batched(op: str, input: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if input.dim() not in (4, 5):
        raise RewriteNotApplicable("volumetric", op, f"a {input.dim()}-D input (4-D or 5-D expected)")
    return (input.unsqueeze(0), True) if input.dim() == 4 else (input, False)


def _frames(x: torch.Tensor) -> torch.Tensor:
    """[N, C, D, H, W] → [N·D, C, H, W]: every depth frame a batch entry."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3], x.shape[4])


def _volume(frames: torch.Tensor, depth: int) -> torch.Tensor:
    """[N·D, C, H, W] → [N, C, D, H, W]."""
    return frames.reshape(-1, depth, *frames.shape[1:]).transpose(1, 2)


def _taps(x: torch.Tensor, kernel: int, stride: int, dilation: int) -> list[torch.Tensor]:
    """Per kernel tap along depth (dim 2), the frames it reads at every output depth: strided slices."""
    depth = int(x.shape[2])
    out = (depth - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise RewriteNotApplicable("volumetric", "the depth axis", f"a window of {kernel} over {depth} frames")
    return [x[:, :, i * dilation:i * dilation + (out - 1) * stride + 1:stride] for i in range(kernel)]


def conv3d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
           padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    import torch.nn.functional as F

    x, unbatched = _batched("torch.nn.functional.conv3d", input)
    st, dil = _triple(stride), _triple(dilation)
    kernel = tuple(int(k) for k in weight.shape[2:])
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise RewriteNotApplicable("volumetric", "torch.nn.functional.conv3d", f"padding={padding!r}")
        pad = (0, 0, 0)
        if padding == "same":  # torch's split: the odd pixel after
            total = [d * (k - 1) for d, k in zip(dil, kernel)]
            x = F.pad(x, (total[2] // 2, total[2] - total[2] // 2, total[1] // 2, total[1] - total[1] // 2,
                          total[0] // 2, total[0] - total[0] // 2))
    else:
        pad = _triple(padding)
    if pad[0]:
        x = F.pad(x, (0, 0, 0, 0, pad[0], pad[0]))
    out: torch.Tensor | None = None
    for i, taps in enumerate(_taps(x, kernel[0], st[0], dil[0])):
        y = F.conv2d(_frames(taps), weight[:, :, i], None, st[1:], pad[1:], dil[1:], groups)
        out = y if out is None else out + y
    assert out is not None
    result = _volume(out, int(taps.shape[2]))
    if bias is not None:
        result = result + bias.reshape(1, -1, 1, 1, 1)
    return result.squeeze(0) if unbatched else result


def _pool(op: str, pool2d: Callable[..., torch.Tensor], reduce: Callable[[list[torch.Tensor]], torch.Tensor],
          fill: Callable[[torch.Tensor], float], input: torch.Tensor, kernel_size: Any, stride: Any, padding: Any,
          dilation: Any, **kwargs: Any) -> torch.Tensor:
    import torch.nn.functional as F

    x, unbatched = _batched(op, input)
    k = _triple(kernel_size)
    st = _triple(stride) if stride not in (None, [], ()) else k
    pad, dil = _triple(padding), _triple(dilation)
    if pad[0]:
        x = F.pad(x, (0, 0, 0, 0, pad[0], pad[0]), value=fill(x))
    depth = int(x.shape[2])
    pooled = _volume(pool2d(_frames(x), k[1:], st[1:], pad[1:], **({"dilation": dil[1:]} if dil != (1, 1, 1) else {}),
                            **kwargs), depth)
    out = reduce(_taps(pooled, k[0], st[0], dil[0]))
    return out.squeeze(0) if unbatched else out


def max_pool3d(input: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    op = "torch.nn.functional.max_pool3d"
    if ceil_mode or return_indices:
        raise RewriteNotApplicable("volumetric", op, "ceil_mode=True" if ceil_mode else "return_indices=True")

    def maximum(taps: list[torch.Tensor]) -> torch.Tensor:
        out = taps[0]
        for tap in taps[1:]:
            out = torch.maximum(out, tap)
        return out

    return _pool(op, F.max_pool2d, maximum, lambda x: float(torch.finfo(x.dtype).min), input, kernel_size, stride,
                 padding, dilation)


def avg_pool3d(input: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> torch.Tensor:
    import torch.nn.functional as F

    op = "torch.nn.functional.avg_pool3d"
    if ceil_mode or divisor_override is not None or (not count_include_pad and _triple(padding) != (0, 0, 0)):
        raise RewriteNotApplicable("volumetric", op, "ceil_mode=True" if ceil_mode else
                                   "divisor_override" if divisor_override is not None else
                                   "count_include_pad=False with padding")

    def mean(taps: list[torch.Tensor]) -> torch.Tensor:
        return sum(taps[1:], taps[0]) / len(taps)

    return _pool(op, F.avg_pool2d, mean, lambda x: 0.0, input, kernel_size, stride, padding, 1)


def _handlers() -> HandlerTable:
    import torch
    import torch.nn.functional as F

    # F.conv3d and F.avg_pool3d are torch's own builtins; F.max_pool3d dispatches on return_indices, its indices to
    # F.max_pool3d_with_indices, which the pooling family rewrites (max pools with indices of any rank)
    return by_name({"conv3d": conv3d, "avg_pool3d": avg_pool3d, "max_pool3d": max_pool3d}, (torch, F))


REWRITES = (
    Rewrite(
        name="volumetric",
        version=2,  # 2: return_indices left to the pooling family (which rewrites it) instead of refused
        removes=("aten::conv3d", "aten::max_pool3d", "aten::max_pool3d_with_indices", "aten::avg_pool3d"),
        description="3-D convolution and max / average pooling as their 2-D forms over the depth frames (folded "
                    "into the batch), one per tap of the kernel's depth, summed (conv), maximum or mean (pools)",
        handlers=_handlers,
        signs=(r"\b3-D convolution", r"conv3d", r"max_pool3d", r"avg_pool3d"),
    ),
)
