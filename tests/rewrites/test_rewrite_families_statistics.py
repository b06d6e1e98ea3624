"""The statistics family (cov, corrcoef), the view-scatter rewrite (diagonal_scatter, as_strided_scatter), the
strided-view rewrite (as_strided) and bilinear against
torch in float32 and float64: every correction and weighting of cov, one variable or many; diagonals at every offset
and pair of dims; strided views with offsets; the ops gone from every graph; through the legacy ONNX exporter, which
refuses all four, into onnxruntime."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from buildsys import rewrites
from tests.helpers.rewrite_checks import assert_equivalent, check, graph_ops, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]


def same(name: str, fn, *args: torch.Tensor) -> None:  # noqa: ANN001
    got, want = rewrites.apply(Fn(fn), [name])(*args), fn(*args)
    assert_equivalent(got, want, 1e-5 if want.dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cov_and_corrcoef(dtype: torch.dtype) -> None:
    x, one = randn(4, 9, dtype=dtype), randn(7, dtype=dtype)
    f, a = torch.tensor([1, 2, 1, 3, 1, 1, 2, 1, 4]), torch.rand(9, dtype=dtype) + 0.1
    for correction in (0, 1, 2):
        same("statistics", lambda t: torch.cov(t, correction=correction), x)
        same("statistics", lambda t: torch.cov(t, correction=correction, fweights=f), x)
        same("statistics", lambda t, w: torch.cov(t, correction=correction, aweights=w), x, a)
        same("statistics", lambda t, w: torch.cov(t, correction=correction, fweights=f, aweights=w), x, a)
    same("statistics", lambda t: t.cov(), one)
    same("statistics", torch.corrcoef, x)
    same("statistics", lambda t: t.corrcoef(), one)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_view_scatters(dtype: torch.dtype) -> None:
    x = randn(4, 3, 5, dtype=dtype)
    for offset, dim1, dim2 in [(0, 0, 1), (1, 0, 2), (-2, 2, 0), (2, -1, -3)]:
        src = torch.diagonal(randn(4, 3, 5, seed=1, dtype=dtype), offset, dim1, dim2).contiguous()
        same("view-scatter", lambda t, s: torch.diagonal_scatter(t, s, offset, dim1, dim2), x, src)
    flat = randn(3, 4, dtype=dtype)
    same("view-scatter", lambda t, s: torch.as_strided_scatter(t, s, (2, 2), (1, 3), 1), flat, randn(2, 2, dtype=dtype))
    same("view-scatter", lambda t, s: t.as_strided_scatter(s, (3,), (4,)), flat, randn(3, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_views(dtype: torch.dtype) -> None:
    x = randn(2, 16, 3, dtype=dtype)
    # Longformer's chunks: windows of 8 frames overlapping by 4, over a contiguous [batch, frames, features] tensor
    same("strided-view", lambda t: t.as_strided((2, 3, 8, 3), (48, 12, 3, 1)), x)
    same("strided-view", lambda t: torch.as_strided(t, (4, 5), (6, 1), 2), x)
    same("strided-view", lambda t: t[1].as_strided((3, 3), (1, 3)), x)  # a view with its own storage offset
    same("strided-view", lambda t: (t * 2).view(2, 4, 4, 3).as_strided((2, 3, 2), (48, 12, 1), 5).sum(-1), x)
    # a transposed input, its view's strides computed from its own (as Longformer does after a transpose)
    same("strided-view", lambda t: t.transpose(1, 2).as_strided((2, 3, 4, 2), (48, 1, 12, 3)), x)


def test_a_strided_view_of_overlapping_elements_or_past_them_is_refused() -> None:
    from buildsys.rewrites.base import RewriteNotApplicable

    x = randn(4, 6)
    with pytest.raises(RewriteNotApplicable, match="overlap"):
        rewrites.apply(Fn(lambda t: t[:1].expand(3, 6).as_strided((2, 2), (1, 2))), ["strided-view"])(x)
    with pytest.raises(RewriteNotApplicable, match="outside"):
        rewrites.apply(Fn(lambda t: t[:2].as_strided((3, 6), (6, 1))), ["strided-view"])(x)


def test_no_op_left_and_onnxruntime_runs_them() -> None:
    import onnxruntime

    x, s = randn(4, 6), randn(4, seed=2)
    # the original cannot be exported at all (torch.cov's data-dependent torch.equal): the rewritten one can
    found = graph_ops(rewrites.apply(Fn(lambda t: torch.cov(t) + torch.corrcoef(t)), ["statistics"]), (x,))
    assert not {"cov", "corrcoef"} & (found["traced"] | found["exported"] | found["decomposed"])
    check(lambda t, u: torch.diagonal_scatter(t, u) + torch.as_strided_scatter(t, u.reshape(2, 2), (2, 2), (6, 1)),
          "view-scatter", x, s, graphs=True)
    check(lambda t: t.as_strided((3, 2, 4), (6, 1, 1)) * 2, "strided-view", x, graphs=True)
    for name, fn, args in (("statistics", lambda t: torch.corrcoef(t) + torch.cov(t), (x,)),
                           ("view-scatter", lambda t, u: torch.diagonal_scatter(t, u, 1)[..., :5] * 2, (x, s))):
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(rewrites.apply(Fn(fn), [name]), args, f, dynamo=False, opset_version=18)
        session = onnxruntime.InferenceSession(f.getvalue())
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, dict(zip(names, (a.numpy() for a in args))))[0]
        assert_equivalent(torch.from_numpy(got), fn(*args), 1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bilinear(dtype: torch.dtype) -> None:
    layer = torch.nn.Bilinear(5, 3, 4).to(dtype).eval()
    x1, x2 = randn(2, 7, 5, dtype=dtype), randn(2, 7, 3, seed=1, dtype=dtype)
    with torch.no_grad():
        assert_equivalent(rewrites.apply(layer, ["bilinear"])(x1, x2), layer(x1, x2),
                          1e-5 if dtype == torch.float32 else 1e-12)
    w = randn(4, 5, 3, seed=2, dtype=dtype)
    same("bilinear", lambda a, b: torch.nn.functional.bilinear(a, b, w), x1[0], x2[0])
    same("bilinear", lambda a, b: torch.nn.functional.bilinear(a, b, w), x1[0, 0], x2[0, 0])
    check(lambda a, b: torch.nn.functional.bilinear(a, b, w.float()), "bilinear", randn(3, 5), randn(3, 3),
          graphs=True)


def _chunks(t: torch.Tensor) -> torch.Tensor:
    """Longformer's chunking: [batch, 16, 3] as windows of 8 frames overlapping by 4, the strides from the tensor's."""
    view = t.view(t.size(0), 2, 8, t.size(2))
    size, stride = list(view.size()), list(view.stride())
    size[1], stride[1] = size[1] * 2 - 1, stride[1] // 2
    return view.as_strided(size=size, stride=stride)


def test_a_strided_view_keeps_the_batch_it_does_not_index_dynamic() -> None:
    rewritten = rewrites.apply(Fn(_chunks), ["strided-view"])
    batch = torch.export.Dim("batch")
    program = torch.export.export(rewritten, (randn(2, 16, 3),), dynamic_shapes=(({0: batch},),), strict=False)
    assert "as_strided" not in str(program.graph_module.code)
    for n in (1, 5):
        x = randn(n, 16, 3, seed=n)
        assert_equivalent(program.module()(x), _chunks(x), 0.0)
