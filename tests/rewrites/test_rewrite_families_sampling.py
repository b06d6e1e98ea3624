"""The sampling family (buildsys/rewrites/sampling.py): grid_sample and affine_grid as gathers and a matmul, against
torch over modes, paddings, align_corners, grids reaching past the image, output sizes and dtypes; no sampling op
left in any graph; what it does not implement refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import check, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [False, True])
def test_grid_sample_matches_torch(dtype: torch.dtype, mode: str, padding: str, align: bool) -> None:
    for image, out in (((2, 3, 6, 7), (5, 4)), ((1, 1, 1, 5), (3, 3)), ((3, 2, 4, 4), (4, 4))):
        grid = 1.4 * torch.tanh(randn(image[0], *out, 2, seed=2, dtype=dtype))  # some of it outside the image
        check(lambda x, g: F.grid_sample(x, g, mode=mode, padding_mode=padding, align_corners=align), "sampling",
              randn(*image, seed=1, dtype=dtype), grid)


@pytest.mark.parametrize("align", [False, True])
def test_affine_grid_and_the_spatial_transformer_match_torch(align: bool) -> None:
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) + 0.3 * randn(3, 2, 3, seed=4)
    for size in ([3, 2, 5, 7], [3, 1, 1, 4], [3, 4, 8, 8]):
        check(lambda t: F.affine_grid(t, size, align_corners=align), "sampling", theta)
        check(lambda x, t: F.grid_sample(x, F.affine_grid(t, size, align_corners=align), align_corners=align),
              "sampling", randn(*size, seed=5), theta)


def test_no_sampling_op_is_left_in_any_graph() -> None:
    def warp(x: torch.Tensor, theta: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False) + F.grid_sample(x, flow, mode="nearest",
                                                                           padding_mode="border", align_corners=True)

    check(warp, "sampling", randn(2, 3, 6, 6), randn(2, 2, 3, seed=1), torch.tanh(randn(2, 6, 6, 2, seed=2)),
          graphs=True)


def test_what_it_does_not_implement_is_refused_not_computed() -> None:
    with pytest.raises(RewriteNotApplicable, match="mode='bicubic'"):
        rewrites.apply(Fn(lambda x, g: F.grid_sample(x, g, mode="bicubic", align_corners=False)), ["sampling"])(
            randn(1, 1, 4, 4), randn(1, 2, 2, 2))
    with pytest.raises(RewriteNotApplicable, match="a 5-D input"):
        rewrites.apply(Fn(lambda x, g: F.grid_sample(x, g, align_corners=False)), ["sampling"])(
            randn(1, 1, 2, 4, 4), randn(1, 2, 2, 2, 3))


def test_refusals_of_grid_sample_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("onnx2tf stopped: onnx_op_name: node_grid_sampler (step saved-model-from-onnx)",
                 "coremltools.convert failed: NotImplementedError: Unsupported fx node grid_sampler_2d, kind "
                 "grid_sampler_2d (step coreml-from-pt2)",
                 "operator 'aten::affine_grid_generator' is not supported at opset 18",
                 "litert-torch could not convert the model: ValueError: Failed to run converter passes: <unknown>:0: "
                 "error: loc(\"unseen.Warp;\"(\"grid_sampler_1\")): failed to legalize operation 'tfl.equal'"):
        assert "sampling" in [r.name for r in for_refusal(text)], text


def test_a_dynamic_batch_stays_dynamic() -> None:
    """affine_grid's size comes from the input's shape; reading its batch would specialise a dynamic export."""
    def stn(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)

    module = rewrites.apply(Fn(stn), ["sampling"])
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (randn(2, 1, 5, 5), randn(2, 2, 3, seed=1)),
                                  dynamic_shapes=(({0: batch}, {0: batch}),))  # Fn takes *args
    x, theta = randn(3, 1, 5, 5, seed=2), randn(3, 2, 3, seed=3)
    torch.testing.assert_close(program.module()(x, theta), stn(x, theta), rtol=1e-5, atol=1e-6)
