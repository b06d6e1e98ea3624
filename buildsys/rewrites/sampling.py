"""The sampling family: F.grid_sample and F.affine_grid as arithmetic and gathers at static sizes.

- affine_grid(theta, size, align_corners): the output's normalised pixel centres (a constant [H·W, 3] of x, y, 1,
  scaled by (n − 1) / n without align_corners, as torch's base grid) times θᵀ: one batched matmul. 2-D (4-D
  size) only; a 5-D size is refused.
- grid_sample(input, grid, mode, padding_mode, align_corners) on 4-D inputs: the grid unnormalised to pixel
  positions as torch's kernel does; `border` clamps them, `reflection` mirrors them (about the first and last
  pixel centres with align_corners, about the image's edges without, then clamps); `bilinear` weighs the four
  neighbours, `nearest` takes the one rounded half to even (torch's nearbyint). Each neighbour is one gather from
  the flattened image at a clamped index, times a mask of where it lies inside the image (`zeros` padding:
  each tap on its own, as torch). Masks are float comparisons multiplied in, not `where` on integers: litert-torch
  refused the integer `equal` of torch's own decomposition ("failed to legalize operation 'tfl.equal'").
  `bicubic` and 5-D (volumetric) inputs are refused, not computed.

Why a rewrite and not a decomposition: PyTorch decomposes grid_sampler_2d, into integer comparisons and advanced
indexing that litert-torch cannot legalize and onnx2tf stops at; coremltools' torch.export frontend has no
grid_sampler_2d and its trace frontend none for a grid that is not affine_grid's; the TorchScript ONNX exporter
refuses affine_grid_generator. Gathers, floor and arithmetic every converter here takes.
Equivalence: tests/rewrites/test_rewrite_families_sampling.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from buildsys.rewrites.base import HandlerTable, Rewrite, RewriteNotApplicable, by_name

if TYPE_CHECKING:
    import numpy as np
    import torch


def _base(n: int, align_corners: bool) -> "np.ndarray":
    """Normalised pixel centres along one axis, as torch's affine_grid base grid (NumPy, float64)."""
    import numpy as np

    line = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
    return line if align_corners else line * (n - 1) / n


def affine_grid(theta: torch.Tensor, size: Sequence[int], align_corners: bool | None = None) -> torch.Tensor:
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    if len(size) != 4:
        raise RewriteNotApplicable("sampling", "torch.nn.functional.affine_grid", f"a {len(size)}-D size (2-D only)")
    h, w = int(size[2]), int(size[3])  # not int(size[0]): the batch may be dynamic (it is theta's)
    align = bool(align_corners)
    xs, ys = np.meshgrid(_base(w, align), _base(h, align))
    base = np.stack([xs, ys, np.ones_like(xs)], axis=-1).reshape(1, h * w, 3)
    grid = torch.matmul(constant(base, theta.dtype), theta.transpose(1, 2))  # [N, H·W, 2]
    return grid.reshape(theta.shape[0], h, w, 2)


def _pixels(coordinate: torch.Tensor, size: int, align: bool, padding: str) -> torch.Tensor:
    """Normalised coordinates along one axis → pixel positions, moved inside by border / reflection padding."""
    import torch

    pixel = (coordinate + 1) / 2 * (size - 1) if align else ((coordinate + 1) * size - 1) / 2
    if padding == "border":
        return torch.clamp(pixel, 0, size - 1)
    if padding == "reflection":
        if align:
            if size == 1:
                return torch.zeros_like(pixel)
            low, span = 0.0, float(size - 1)
        else:
            low, span = -0.5, float(size)
        # |x - low| folded into [0, 2·span), then mirrored into [0, span]
        folded = torch.remainder(torch.abs(pixel - low), 2 * span)
        mirrored = torch.where(folded > span, 2 * span - folded, folded) + low
        return torch.clamp(mirrored, 0, size - 1)
    return pixel


def grid_sample(input: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros",
                align_corners: bool | None = None) -> torch.Tensor:
    import torch

    from buildsys.rewrites.mechanism import static_size

    op = "torch.nn.functional.grid_sample"
    if input.dim() != 4:
        raise RewriteNotApplicable("sampling", op, f"a {input.dim()}-D input (4-D images only)")
    if mode not in ("bilinear", "nearest"):
        raise RewriteNotApplicable("sampling", op, f"mode={mode!r}")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"nn.functional.grid_sample(): expected padding_mode to be 'zeros', 'border', or "
                         f"'reflection', but got: '{padding_mode}'")
    h, w = static_size(input, 2, "sampling", op), static_size(input, 3, "sampling", op)
    n, c = input.shape[0], input.shape[1]
    out_h, out_w = grid.shape[1], grid.shape[2]
    align = bool(align_corners)
    px = _pixels(grid[..., 0], w, align, padding_mode)  # [N, Ho, Wo]
    py = _pixels(grid[..., 1], h, align, padding_mode)
    flat = input.reshape(n, c, h * w)

    def tap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """input at integral pixel positions x, y (floats) [N, Ho, Wo] → [N, C, Ho, Wo], 0 outside the image."""
        # logical_and, not &: coremltools' trace frontend has no aten::__and__
        inside = torch.logical_and(torch.logical_and(x >= 0, x <= w - 1),
                                   torch.logical_and(y >= 0, y <= h - 1)).to(input.dtype)
        index = (torch.clamp(y, 0, h - 1) * w + torch.clamp(x, 0, w - 1)).to(torch.int64)
        gathered = flat.gather(2, index.reshape(n, 1, out_h * out_w).expand(n, c, out_h * out_w))
        return gathered.reshape(n, c, out_h, out_w) * inside.unsqueeze(1)

    if mode == "nearest":
        return tap(torch.round(px), torch.round(py))
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = (px - x0).unsqueeze(1), (py - y0).unsqueeze(1)
    return (tap(x0, y0) * (1 - fx) * (1 - fy) + tap(x0 + 1, y0) * fx * (1 - fy)
            + tap(x0, y0 + 1) * (1 - fx) * fy + tap(x0 + 1, y0 + 1) * fx * fy)


def _handlers() -> HandlerTable:
    import torch.nn.functional as F

    return by_name({"grid_sample": grid_sample, "affine_grid": affine_grid}, (F,))


REWRITES = (
    Rewrite(
        name="sampling",
        version=1,
        removes=("aten::grid_sampler", "aten::grid_sampler_2d", "aten::affine_grid_generator"),
        description="grid_sample (bilinear / nearest; zeros / border / reflection; align_corners) as gathers of the "
                    "flattened image with float masks, affine_grid as a matmul of a constant base grid",
        handlers=_handlers,
        # onnx2tf names the dynamo exporter's node ("node_grid_sampler"), litert-torch its location ("grid_sampler_1")
        signs=(r"GridSample", r"grid_sampler", r"\bgrid_sample\b", r"affine_grid"),
    ),
)
