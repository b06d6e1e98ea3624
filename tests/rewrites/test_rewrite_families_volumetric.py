"""The volumetric family (buildsys/rewrites/volumetric.py): 3-D convolution and pooling as 2-D ones over the depth
frames, against torch over strides, paddings ('same' and 'valid' too), dilations, groups, bias, unbatched inputs and
two dtypes; no 3-D op left in any graph; what it does not implement refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import check, graph_ops, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
#: (input shape, weight shape, keyword arguments)
CONVS = [
    ((2, 3, 5, 6, 6), (4, 3, 3, 3, 3), {}),
    ((1, 4, 7, 5, 6), (6, 2, 3, 1, 2), {"stride": (2, 1, 2), "padding": (1, 0, 1), "groups": 2}),
    ((2, 2, 8, 6, 6), (3, 2, 2, 3, 3), {"dilation": (2, 1, 2), "padding": 2, "stride": 1}),
    ((1, 3, 4, 5, 5), (2, 3, 3, 2, 3), {"padding": "same"}),
    ((3, 4, 5, 5), (2, 3, 2, 2, 2), {"padding": "valid"}),  # unbatched
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_conv3d_matches_torch(dtype: torch.dtype, bias: bool) -> None:
    for shape, weight, kwargs in CONVS:
        w = randn(*weight, seed=1, dtype=dtype)
        b = randn(weight[0], seed=2, dtype=dtype) if bias else None
        check(lambda x: F.conv3d(x, w, b, **kwargs), "volumetric", randn(*shape, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_3d_pools_match_torch(dtype: torch.dtype) -> None:
    x = randn(2, 3, 7, 6, 6, dtype=dtype)
    for kwargs in ({"kernel_size": 2}, {"kernel_size": (3, 2, 2), "stride": (2, 1, 2), "padding": (1, 1, 0)},
                   {"kernel_size": 3, "stride": 1, "padding": 1}):
        check(lambda v: F.max_pool3d(v, **kwargs), "volumetric", x)
        check(lambda v: F.avg_pool3d(v, **kwargs), "volumetric", x)
    check(lambda v: F.max_pool3d(v, 2, dilation=(2, 1, 1)), "volumetric", x)
    check(lambda v: F.avg_pool3d(v, 2, count_include_pad=False), "volumetric", x)  # no padding: the same mean
    check(lambda v: F.max_pool3d(v, 2), "volumetric", x[0])  # unbatched


def test_a_3d_max_pool_with_indices_is_the_pooling_familys() -> None:
    """Both families active (as a route enables them): the values by volumetric's separable max, the indices by
    pooling's windows, each torch's."""
    x = randn(2, 3, 7, 6, 6)
    check(lambda v: F.max_pool3d(v, 2), ("volumetric", "pooling"), x)
    check(lambda v: F.max_pool3d(v, 3, stride=2, padding=1, return_indices=True)[1], ("volumetric", "pooling"), x)


def test_a_video_classifier_keeps_no_3d_op_in_any_graph() -> None:
    """A C3D-style clip classifier: Conv3d, BatchNorm3d, MaxPool3d, AvgPool3d, AdaptiveAvgPool3d, Linear."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.BatchNorm3d(8), torch.nn.ReLU(),
                              torch.nn.MaxPool3d((1, 2, 2)), torch.nn.Conv3d(8, 8, (3, 1, 1), stride=(2, 1, 1)),
                              torch.nn.AvgPool3d(2), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 5)).eval().requires_grad_(False)
    clip = randn(2, 3, 8, 8, 8)
    check(lambda c: net(c), ("volumetric", "pooling"), clip)
    # Not check(graphs=True): the 2-D max pools the rewrite leaves are max_pool2d_with_indices in core ATen, an op
    # the pooling family names among those it removes (it does where the indices are used). The 3-D ops by name (a
    # decomposed 3-D convolution is `convolution`, as a 2-D one: the traced and exported graphs name it conv3d)
    three_d = {"conv3d", "max_pool3d", "max_pool3d_with_indices", "avg_pool3d", "adaptive_avg_pool3d",
               "_adaptive_avg_pool3d"}
    before = graph_ops(Fn(net), (clip,))
    assert {"conv3d", "max_pool3d_with_indices", "avg_pool3d"} <= before["exported"] | before["decomposed"]
    after = graph_ops(rewrites.apply(Fn(net), ["volumetric", "pooling"]), (clip,))
    for kind in ("traced", "exported", "decomposed"):
        assert not three_d & after[kind], f"{kind} graph still has {three_d & after[kind]}"


def test_what_it_does_not_implement_is_refused_not_computed() -> None:
    x = randn(1, 2, 4, 4, 4)
    for fn, match in ((lambda v: F.max_pool3d(v, 2, ceil_mode=True), "ceil_mode"),
                      (lambda v: F.avg_pool3d(v, 2, padding=1, count_include_pad=False), "count_include_pad"),
                      (lambda v: F.avg_pool3d(v, 2, divisor_override=3), "divisor_override")):
        with pytest.raises(RewriteNotApplicable, match=match):
            rewrites.apply(Fn(fn), ["volumetric"])(x)


def test_refusals_of_3d_ops_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("the ExecuTorch runtime's convolution kernel runs 1-D and 2-D convolutions only: aten::conv3d",
                 "the program's operator aten::max_pool3d_with_indices.out has no kernel in the ExecuTorch runtime",
                 "the program's operator aten::avg_pool3d.out has no kernel in the ExecuTorch runtime"):
        assert "volumetric" in [r.name for r in for_refusal(text)], text
