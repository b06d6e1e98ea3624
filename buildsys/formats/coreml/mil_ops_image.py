"""Reference implementations of MIL's resampling ops in NumPy: an image sampled at coordinates (resample: what
coremltools makes of grid_sample) or through an affine map (affine: affine_grid + grid_sample), every sampling,
padding and coordinates mode MIL defines, as PyTorch's grid_sample computes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.formats.coreml.mil_registry import Args, const_value, op

if TYPE_CHECKING:
    import numpy as np
    from coremltools.converters.mil.mil import Operation

    Array = np.ndarray

_PADDINGS = ("constant", "border", "reflection", "symmetric")
_COORDINATES = ("unnormalized", "normalized_minus_one_to_one", "normalized_zero_to_one")


def _resampling(operation: "Operation") -> str | None:
    for key, default, allowed in (("sampling_mode", "bilinear", ("bilinear", "nearest")),
                                  ("padding_mode", "constant", _PADDINGS),
                                  ("coordinates_mode", "normalized_minus_one_to_one", _COORDINATES)):
        value = const_value(operation, key) or default
        if value not in allowed:
            return f"{operation.op_type} {key} {value}"
    return None


def _to_pixels(c: "Array", size: int, mode: str, align: bool) -> "Array":
    """Coordinates along one axis in `mode` → pixel positions (0 is the first pixel's centre), as PyTorch's
    grid_sample unnormalises them (its align_corners is the MIL op's)."""
    if mode == "unnormalized":
        return c
    if mode == "normalized_zero_to_one":
        c = 2 * c - 1
    return (c + 1) / 2 * (size - 1) if align else ((c + 1) * size - 1) / 2


def _padded(p: "Array", size: int, padding: str) -> "Array":
    """Pixel positions moved inside the image for the paddings that move them (border clamps; reflection mirrors
    about the first and last pixel centres; symmetric about the image's edges, then clamps)."""
    import numpy as np

    if padding == "border":
        return np.clip(p, 0, size - 1)
    if padding == "reflection" and size > 1:
        period = 2 * (size - 1)
        q = np.abs(p) % period
        return np.where(q > size - 1, period - q, q)
    if padding == "reflection":
        return np.zeros_like(p)
    if padding == "symmetric":
        period = 2 * size
        q = np.abs(p + 0.5) % period
        return np.clip(np.where(q > size, period - q, q) - 0.5, 0, size - 1)
    return p


def _sample(x: "Array", px: "Array", py: "Array", sampling: str, padding: str, fill: float) -> "Array":
    """x [B, C, H, W] sampled at pixel positions px, py [B, H2, W2] → [B, C, H2, W2]; a tap outside the image is
    `fill` (constant padding: each of bilinear's four taps on its own, as PyTorch's zeros padding)."""
    import numpy as np

    b, _, h, w = x.shape
    px, py = _padded(px, w, padding), _padded(py, h, padding)
    batch = np.arange(b)[:, None, None]

    def tap(ix: "Array", iy: "Array") -> "Array":
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        got = x[batch, :, np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]  # [B, H2, W2, C]
        return np.where(inside[..., None], got, np.float32(fill))

    if sampling == "nearest":  # PyTorch rounds half to even (nearbyint), as np.rint does
        out = tap(np.rint(px).astype(np.int64), np.rint(py).astype(np.int64))
    else:
        x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
        fx, fy = (px - x0)[..., None], (py - y0)[..., None]
        out = (tap(x0, y0) * (1 - fx) * (1 - fy) + tap(x0 + 1, y0) * fx * (1 - fy)
               + tap(x0, y0 + 1) * (1 - fx) * fy + tap(x0 + 1, y0 + 1) * fx * fy)
    return np.moveaxis(out, -1, 1).astype(x.dtype)


@op("resample", refuse=_resampling)
def resample(a: Args) -> "Array":
    import numpy as np

    x, grid = a.tensor("x"), a.tensor("coordinates").astype(np.float64)
    mode, align = a.text("coordinates_mode", "normalized_minus_one_to_one"), a.flag("align_corners")
    px = _to_pixels(grid[..., 0], x.shape[-1], mode, align)
    py = _to_pixels(grid[..., 1], x.shape[-2], mode, align)
    return _sample(x, px, py, a.text("sampling_mode", "bilinear"), a.text("padding_mode", "constant"),
                   a.number("padding_value", 0.0))


@op("affine", refuse=_resampling)
def affine(a: Args) -> "Array":
    """The output's normalised grid (PyTorch's affine_grid base: pixel centres, scaled by (n - 1) / n without
    align_corners) through each batch's [a0, a1, a2, b0, b1, b2], then resampled."""
    import numpy as np

    x, theta = a.tensor("x"), a.tensor("transform_matrix").astype(np.float64).reshape(-1, 6)
    height, width = a.integer("output_height"), a.integer("output_width")
    align = a.flag("align_corners")
    mode = a.text("coordinates_mode", "normalized_minus_one_to_one")

    def base(n: int) -> "Array":
        line = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
        return line if align else line * (n - 1) / n

    gx, gy = np.meshgrid(base(width), base(height))  # [H2, W2]
    theta = np.broadcast_to(theta, (x.shape[0], 6))[:, :, None, None]
    nx = theta[:, 0] * gx + theta[:, 1] * gy + theta[:, 2]
    ny = theta[:, 3] * gx + theta[:, 4] * gy + theta[:, 5]
    px = _to_pixels(nx, x.shape[-1], mode, align)
    py = _to_pixels(ny, x.shape[-2], mode, align)
    return _sample(x, px, py, a.text("sampling_mode", "bilinear"), a.text("padding_mode", "constant"),
                   a.number("padding_value", 0.0))
