"""The `unfold` and `fold` rewrites: sliding windows as gathers and one-hot convolutions.

- Tensor.unfold(dim, size, step) (framing a signal; what torch.stft decomposes into) is one
  index_select with the constant window indices [n_windows · size] and a reshape.
- F.unfold (im2col) is a grouped conv2d whose C·kh·kw output channels each pick one kernel position
  (a one-hot kernel): the output channel order c·kh·kw + i·kw + j is F.unfold's.
- F.fold (col2im, the overlap-add back) is the transposed grouped conv2d with the same one-hot kernel,
  output_padding making up the rows and columns no window covers.

Equivalence: tests/rewrites/test_rewrites.py (gathers are exact; the one-hot convolutions multiply by 1 and add
zeros, exact in fp32 unless the backend reorders sums of overlapping windows in fold).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

Size2 = Union[int, Sequence[int]]


def _pair(value: Size2) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def tensor_unfold(input: torch.Tensor, dimension: int, size: int, step: int) -> torch.Tensor:
    """Tensor.unfold: windows of `size` every `step` along `dimension`, as a new last dimension."""

    if input.dim() == 0:  # torch treats a 0-D tensor as one element: one window of `size` (0 or 1) values
        if size > 1 or step <= 0:
            raise RuntimeError(f"maximum size for tensor at dimension 0 is 1 but size is {size}"
                               if size > 1 else f"step is {step} but must be > 0")
        return input.reshape(1)[:size]
    from buildsys.rewrites.mechanism import constant, static_size, to_last

    dim = dimension % input.dim()
    length = static_size(input, dim, "unfold", "Tensor.unfold")
    if size > length or step <= 0:
        raise RuntimeError(f"maximum size for tensor at dimension {dim} is {length} but size is {size}"
                           if size > length else f"step is {step} but must be > 0")
    import numpy as np

    windows = (length - size) // step + 1
    index = constant((np.arange(windows)[:, None] * step + np.arange(size)[None, :]).reshape(-1))
    picked = input.index_select(dim, index)                       # [..., windows·size, ...]
    return to_last(picked.unflatten(dim, (windows, size)), dim + 1)  # a permute: Core ML has no movedim


def _one_hot_kernel(channels: int, kh: int, kw: int, dtype: torch.dtype) -> torch.Tensor:
    """[channels·kh·kw, 1, kh, kw]: output channel c·kh·kw + k has a single 1 at kernel position k."""
    import numpy as np

    from buildsys.rewrites.mechanism import constant

    eye = np.eye(kh * kw).reshape(kh * kw, 1, kh, kw)  # a constant in the graph, not an eye op
    return constant(np.tile(eye, (channels, 1, 1, 1)), dtype)


def unfold(input: torch.Tensor, kernel_size: Size2, dilation: Size2 = 1, padding: Size2 = 0,
           stride: Size2 = 1) -> torch.Tensor:
    """F.unfold (im2col) of [N, C, H, W] or [C, H, W] → [N, C·kh·kw, L]."""
    import torch

    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    if x.dim() != 4 or not x.is_floating_point():
        raise RewriteNotApplicable("unfold", "torch.nn.functional.unfold", "only 3-D or 4-D floating-point input")
    from buildsys.rewrites.mechanism import static_size

    (kh, kw), channels = _pair(kernel_size), static_size(x, 1, "unfold", "torch.nn.functional.unfold")
    out = torch.nn.functional.conv2d(x, _one_hot_kernel(channels, kh, kw, x.dtype), stride=_pair(stride),
                                     padding=_pair(padding), dilation=_pair(dilation), groups=channels)
    out = out.flatten(2)
    return out if batched else out.squeeze(0)


def fold(input: torch.Tensor, output_size: Size2, kernel_size: Size2, dilation: Size2 = 1, padding: Size2 = 0,
         stride: Size2 = 1) -> torch.Tensor:
    """F.fold (col2im) of [N, C·kh·kw, L] or [C·kh·kw, L] → [N, C, H, W]: overlapping values add up."""
    import torch

    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(0)
    if x.dim() != 3 or not x.is_floating_point():
        raise RewriteNotApplicable("fold", "torch.nn.functional.fold", "only 2-D or 3-D floating-point input")
    (kh, kw), (h, w) = _pair(kernel_size), _pair(output_size)
    (dh, dw), (ph, pw), (sh, sw) = _pair(dilation), _pair(padding), _pair(stride)
    rows = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    cols = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    from buildsys.rewrites.mechanism import static_size

    planes = static_size(x, 1, "fold", "torch.nn.functional.fold")
    if planes % (kh * kw) or static_size(x, 2, "fold", "torch.nn.functional.fold") != rows * cols:
        raise RuntimeError(f"fold: expected input of shape [N, C*{kh * kw}, {rows * cols}], got {list(x.shape)}")
    channels = planes // (kh * kw)
    covered_h = (rows - 1) * sh - 2 * ph + dh * (kh - 1) + 1
    covered_w = (cols - 1) * sw - 2 * pw + dw * (kw - 1) + 1
    grid = x.unflatten(2, (rows, cols))
    out = torch.nn.functional.conv_transpose2d(
        grid, _one_hot_kernel(channels, kh, kw, x.dtype), stride=(sh, sw), padding=(ph, pw),
        output_padding=(h - covered_h, w - covered_w), groups=channels, dilation=(dh, dw))
    return out if batched else out.squeeze(0)


def _unfold_handlers() -> HandlerTable:
    import torch

    # torch.unfold_copy: the same windows as a fresh tensor (what a view becomes in a functional graph)
    return {torch.Tensor.unfold: tensor_unfold, torch.unfold_copy: tensor_unfold, torch.nn.functional.unfold: unfold}


def _fold_handlers() -> HandlerTable:
    import torch

    return {torch.nn.functional.fold: fold}


REWRITES = (
    Rewrite(name="unfold", version=4, removes=("aten::unfold", "aten::unfold_copy", "aten::im2col"),  # 4: a 0-D tensor
            description="Tensor.unfold as one constant-index gather; F.unfold (im2col) as a grouped conv2d "
                        "with one-hot kernels",
            handlers=_unfold_handlers),
    Rewrite(name="fold", version=1, removes=("aten::col2im",),
            description="F.fold (col2im) as a grouped conv_transpose2d with one-hot kernels",
            handlers=_fold_handlers),
)
