"""The pooling family (buildsys/rewrites/pooling.py, windows.py): adaptive average and max pooling as static bins,
against torch over 1-, 2- and 3-D pools, output sizes that divide the input, that do not, that exceed it and None,
with and without a batch axis, in two dtypes; adaptive max with its indices; fractional max pooling 2-D / 3-D
(output size or ratio, indices) from given samples, refused without them; max pooling with indices (1-, 2-, 3-D,
kernel / stride / padding / dilation / ceil_mode, ties, NaN) exactly torch's; no such pool left in any graph."""

from __future__ import annotations

from typing import Any, Callable, cast

import pytest
import torch
import torch.nn.functional as F

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from buildsys.rewrites.pooling import _bins
from tests.helpers.rewrite_checks import check, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
#: (input shape, output size) per pool rank: sizes that divide, that do not, larger than the input, None, 1.
CASES: dict[int, list[tuple[tuple[int, ...], Any]]] = {
    1: [((2, 3, 10), 5), ((2, 3, 10), 3), ((1, 2, 4), 7), ((3, 7), 2)],
    2: [((2, 3, 8, 8), (4, 2)), ((2, 3, 5, 7), (3, 3)), ((1, 2, 2, 2), 7), ((2, 3, 6, 5), (None, 2)),
        ((3, 5, 5), 1)],
    3: [((1, 2, 4, 6, 6), (2, 3, 3)), ((1, 2, 3, 5, 4), 2), ((2, 3, 4, 4), (None, 3, 5))],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pools_match_torch(dtype: torch.dtype, dims: int, kind: str) -> None:
    pool = getattr(F, f"adaptive_{kind}_pool{dims}d")
    for shape, size in CASES[dims]:
        check(lambda x: pool(x, size), "pooling", randn(*shape, seed=dims, dtype=dtype))


def test_the_modules_and_a_pyramid_pooling_head_match_torch() -> None:
    """A PSPNet-style pyramid (bins 1, 2, 3, 6 over a 5 × 5 map), upsampled back and concatenated."""
    pyramid = torch.nn.ModuleList(torch.nn.AdaptiveAvgPool2d(s) for s in (1, 2, 3, 6))

    def head(x: torch.Tensor) -> torch.Tensor:
        pooled = [F.interpolate(p(x), size=x.shape[-2:], mode="bilinear", align_corners=False) for p in pyramid]
        return torch.cat([x, *pooled, torch.nn.AdaptiveMaxPool2d((3, 2))(x).flatten(1)[..., None, None].expand(
            -1, -1, *x.shape[-2:])], dim=1)

    check(head, "pooling", randn(2, 4, 5, 5), graphs=True)


def test_the_bins_are_torchs() -> None:
    assert _bins(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert _bins(2, 7) == [(0, 1), (0, 1), (0, 1), (0, 2), (1, 2), (1, 2), (1, 2)]
    assert _bins(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_adaptive_max_returns_torchs_indices(dims: int) -> None:
    """Windows of unequal sizes (sizes that do not divide), ties included (a rounded input): the first maximum's
    flat index into the plane, as torch's kernel."""
    pool = getattr(F, f"adaptive_max_pool{dims}d")
    for shape, size in CASES[dims]:
        x = (randn(*shape, seed=dims) * 2).round()
        check(lambda v: pool(v, size, return_indices=True)[1], "pooling", x)
        check(lambda v: pool(v, size, return_indices=True)[0], "pooling", x)


@pytest.mark.parametrize(("dims", "shape", "kernel", "size"), [
    (2, (2, 3, 16, 16), 2, (8, 8)), (2, (1, 2, 9, 13), (3, 2), (5, 7)), (2, (3, 10, 10), 3, None),
    (2, (2, 1, 7, 7), 2, 1), (3, (2, 3, 5, 5, 5), 2, (2, 3, 2)), (3, (2, 6, 7, 5), (2, 3, 1), None)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fractional_max_pools_match_torch_from_their_samples(dims: int, shape: tuple[int, ...], kernel: object,
                                                             size: object, dtype: torch.dtype) -> None:
    """The samples are an input of the model: the windows depend on them (a gather per plane); an output size or
    an output ratio; values and indices; with and without a batch axis."""
    pool = getattr(F, f"fractional_max_pool{dims}d")
    batch = shape[0] if len(shape) == dims + 2 else 1
    samples = torch.rand(batch, shape[-dims - 1], dims, generator=torch.Generator().manual_seed(3), dtype=dtype)
    x = randn(*shape, seed=4, dtype=dtype)
    options = {"output_size": size} if size is not None else {"output_ratio": (0.5,) * dims}
    for u in (samples, samples * 6 - 3):  # torch draws samples in [0, 1); OpInfo's are anywhere in [-9, 9]
        for indices in (False, True):
            check(lambda v, w: pool(v, kernel, return_indices=indices, _random_samples=w, **options)[1 if indices else
                  slice(None)], "pooling", x, u)


def test_fractional_pooling_leaves_no_pool_and_needs_its_samples() -> None:
    samples = torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(5))
    check(lambda v, u: F.fractional_max_pool2d(v, 2, output_size=5, _random_samples=u), "pooling",
          randn(1, 2, 12, 12), samples, graphs=True)
    check(lambda v: F.adaptive_max_pool2d(v, (3, 5), return_indices=True)[1], "pooling", randn(1, 2, 7, 9),
          graphs=True)
    with pytest.raises(RewriteNotApplicable, match="_random_samples"):
        rewrites.apply(Fn(lambda x: F.fractional_max_pool2d(x, 2, output_size=3)), ["pooling"])(randn(1, 2, 8, 8))


def test_refusals_of_adaptive_pools_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    legacy = ("Unsupported: ONNX export of operator adaptive_max_pool2d, output size that are not factor of input "
              "size. Please feel free to request support")
    assert "pooling" in [r.name for r in for_refusal(legacy)]
    assert "pooling" in [r.name for r in for_refusal("Lowering not found: aten.adaptive_max_pool3d.default")]


def test_the_rewritten_average_exports_with_the_legacy_onnx_exporter_and_runs(tmp_path: object) -> None:
    """AlexNet's and VGG's AdaptiveAvgPool2d((7, 7)) over a 2 × 2 map (a small input): the legacy exporter refuses
    the original; the rewrite's transposes must be valid ONNX (negative movedim dims made an invalid perm)."""
    import numpy as np
    import onnxruntime as ort

    pool = torch.nn.AdaptiveAvgPool2d((7, 5))
    x = randn(1, 4, 2, 3)
    path = f"{tmp_path}/pool.onnx"
    torch.onnx.export(rewrites.apply(Fn(lambda v: pool(v)), ["pooling"]), (x,), path, dynamo=False)
    session = ort.InferenceSession(path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, pool(x).numpy(), rtol=1e-5, atol=1e-6)


#: (input shape, kernel_size, stride, padding, dilation, ceil_mode) per pool rank: windows hanging over the edge
#: (padding, ceil_mode), dilated, strides above the kernel, no batch axis, per-axis arguments.
MAX_POOLS: dict[int, list[tuple[tuple[int, ...], Any, Any, Any, Any, bool]]] = {
    1: [((2, 3, 10), 3, None, 0, 1, False), ((2, 3, 10), 3, 2, 1, 1, True), ((1, 2, 9), 2, 3, 1, 2, True),
        ((3, 11), 4, 2, 2, 3, False), ((2, 1, 7), 3, 1, 1, 2, True), ((1, 2, 5), 5, 5, 2, 1, True)],
    2: [((2, 3, 8, 8), 2, None, 0, 1, False), ((2, 3, 7, 6), (3, 2), (2, 3), 1, (2, 1), True),
        ((1, 2, 9, 9), 3, 2, 1, 1, True), ((3, 7, 5), (2, 3), 1, (1, 1), 2, False),
        ((1, 1, 6, 7), 4, (3, 2), (2, 1), 1, True)],
    3: [((1, 2, 4, 6, 6), 2, None, 0, 1, False), ((1, 2, 5, 6, 7), (3, 2, 3), (2, 2, 3), 1, 1, True),
        ((2, 5, 5, 6), 3, 2, (1, 0, 1), (1, 2, 1), True)],
}


def _max_pool_inputs(shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    """Random, rounded (ties), and with NaN (single ones, and whole runs: torch returns the last NaN's index)."""
    x = randn(*shape, seed=7, dtype=dtype)
    nans = x.clone()
    nans.view(-1)[::5] = float("nan")
    runs = x.clone()
    runs.view(-1)[(torch.arange(runs.numel()) % 7) < 3] = float("nan")
    return [x, (x * 2).round(), nans, runs]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_pools_with_indices_match_torch(dims: int, dtype: torch.dtype) -> None:
    pool = getattr(F, f"max_pool{dims}d")
    for shape, kernel, stride, padding, dilation, ceil in MAX_POOLS[dims]:
        options = {"stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil}
        for x in _max_pool_inputs(shape, dtype):
            values, indices = pool(x, kernel, return_indices=True, **options)
            got = [rewrites.apply(Fn(lambda v: pool(v, kernel, return_indices=True, **options)[part]), ["pooling"])(x)
                   for part in (0, 1)]
            assert torch.equal(got[1], indices), (shape, kernel, options)
            assert torch.allclose(got[0], values, rtol=0, atol=0, equal_nan=True), (shape, kernel, options)
            check(lambda v: pool(v, kernel, return_indices=False, **options), "pooling", x)


def test_every_max_pool_with_indices_spelling_is_rewritten() -> None:
    """The modules, F's *_with_indices and ATen's own functions: none left in any graph; without indices, the
    max pool is left alone (every converter has one)."""
    x = randn(1, 2, 7, 9)
    check(lambda v: torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True)(v)[1], "pooling", x,
          graphs=True)
    check(lambda v: F.max_pool1d_with_indices(v, [2])[1], "pooling", x[0], graphs=True)
    check(lambda v: torch.max_pool1d_with_indices(v, [3], [2], [1])[1], "pooling", x[0], graphs=True)
    check(lambda v: torch._C._nn.max_pool2d_with_indices(v, [2, 3])[1], "pooling", x, graphs=True)
    check(lambda v: torch.nn.MaxPool3d(2, return_indices=True)(v)[1], "pooling", x[None], graphs=True)
    from tests.helpers.rewrite_checks import graph_ops

    kept = graph_ops(rewrites.apply(Fn(lambda v: F.max_pool2d(v, 3, 2)), ["pooling"]), (x,))
    assert "max_pool2d" in kept["traced"] | kept["exported"]


def test_max_pools_torch_refuses_are_refused() -> None:
    with pytest.raises(RewriteNotApplicable, match="torch refuses"):  # padding above half the kernel
        rewrites.apply(Fn(lambda v: F.max_pool1d(v, 2, padding=2, return_indices=True)[1]), ["pooling"])(
            randn(1, 1, 5))
    with pytest.raises(RewriteNotApplicable, match="no input position"):  # torch: -inf at an index outside
        rewrites.apply(Fn(lambda v: F.max_pool1d(v, 2, 1, 1, 3, return_indices=True)[1]), ["pooling"])(
            randn(1, 1, 2))
    from buildsys.rewrites.refusal import for_refusal

    assert "pooling" in [r.name for r in for_refusal("'MaxPoolWithArgmax' is neither a custom op nor a flex op")]


def test_max_pool_with_indices_exports_with_the_legacy_onnx_exporter_and_runs(tmp_path: object) -> None:
    """Values and indices as torch's in onnxruntime (ceil_mode, padding, dilation)."""
    import numpy as np
    import onnxruntime as ort

    def fn(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(v, (3, 2), (2, 1), 1, (1, 2), ceil_mode=True, return_indices=True)

    x = (randn(2, 3, 9, 8) * 2).round()
    path = f"{tmp_path}/max_pool.onnx"
    torch.onnx.export(rewrites.apply(Fn(cast(Callable[..., torch.Tensor], fn)), ["pooling"]), (x,), path,
                      dynamo=False, opset_version=18)
    session = ort.InferenceSession(path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    want = fn(x)
    np.testing.assert_array_equal(got[0], want[0].numpy())
    np.testing.assert_array_equal(got[1], want[1].numpy())
