"""The order family's histograms (buildsys/rewrites/histograms.py): torch.histogram / Tensor.histogram and
torch.histogramdd against torch in float32 and float64: bins as counts (one, or one per dimension) or edge tensors,
range, weight, density, an empty range, NaN and points outside the range; the ops gone from every graph; through the
legacy ONNX exporter (which refuses both) into onnxruntime, histc too."""

from __future__ import annotations

import io
import warnings
from typing import Any

import pytest
import torch

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import assert_equivalent, check, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=str)


def same(fn: Any, *args: torch.Tensor) -> None:
    """The rewritten fn's histogram equals torch's to rounding, its edges too: torch's vectorised linspace may put an
    inner edge one ulp apart, which a density divides by as a bin length (100 bins over ~4: ~3e-6 in float32)."""
    got, want = rewrites.apply(Fn(fn), ["order"])(*args), fn(*args)
    rtol = 1e-5 if want[0].dtype == torch.float32 else 1e-12
    assert torch.allclose(got[0], want[0], rtol=rtol, atol=0), (got[0], want[0])
    for g, w in zip(*(e if isinstance(e, (list, tuple)) else [e] for e in (got[1], want[1]))):
        assert_equivalent(g, w, 1e-6)


@dtypes
@pytest.mark.parametrize("bins", [1, 4, (2, 3, 2), [3, 1, 5]], ids=str)
@pytest.mark.parametrize("density", [False, True])
def test_histogramdd_matches_torch(bins: Any, density: bool, dtype: torch.dtype) -> None:
    points, weight = randn(4, 10, 3, dtype=dtype), torch.rand(4, 10, dtype=dtype)
    same(lambda x: torch.histogramdd(x, bins, density=density), points)
    same(lambda x, w: torch.histogramdd(x, bins, weight=w, density=density), points, weight)
    same(lambda x: torch.histogramdd(x, bins, range=[-1.0, 1.0, -0.5, 2.0, 0.0, 0.3], density=density), points)


@dtypes
def test_histogramdd_with_edge_tensors(dtype: torch.dtype) -> None:
    edges = [torch.tensor([-2.0, 0.0, 0.5, 1.0], dtype=dtype), torch.tensor([-1.0, 3.0], dtype=dtype)]
    points = randn(30, 2, dtype=dtype)
    same(lambda x: torch.histogramdd(x, edges), points)
    same(lambda x: torch.histogramdd(x, edges, density=True), points)


@dtypes
def test_histogram_matches_torch(dtype: torch.dtype) -> None:
    x = randn(5, 8, dtype=dtype)
    for bins in (1, 7, 100):
        same(lambda t: torch.histogram(t, bins), x)
        same(lambda t: t.histogram(bins, density=True), x)
        same(lambda t: torch.histogram(t, bins, range=(-0.5, 0.5), weight=t.abs()), x)
    same(lambda t: torch.histogram(t, torch.tensor([-1.0, -0.2, 0.0, 2.0], dtype=dtype)), x)
    same(lambda t: torch.histogram(t * 0 + 3, 4), x)  # one value: its range ± 0.5
    with_nan = x.clone()
    with_nan[1, 2] = float("nan")
    same(lambda t: torch.histogram(t, 5, range=(-1.0, 1.0)), with_nan)


def test_no_histogram_op_is_left_in_any_graph() -> None:
    x = randn(12, 2)
    check(lambda t: torch.histogramdd(t, (3, 2)).hist.sum() + torch.histogram(t, 4).hist.sum()
          + torch.histogramdd(t, 2, range=[0.0, 1.0, 0.0, 1.0]).bin_edges[1].sum(), "order", x, graphs=True)


def test_what_it_does_not_take_is_refused() -> None:
    with pytest.raises(RewriteNotApplicable, match="cells is above"):
        rewrites.apply(Fn(lambda t: torch.histogramdd(t, 64).hist), ["order"])(randn(64, 4))
    with pytest.raises(RewriteNotApplicable, match="out= argument"):
        rewrites.apply(Fn(lambda t: torch.histogram(t, 3, out=(torch.empty(3), torch.empty(4)))), ["order"])(randn(5))


@dtypes
def test_histograms_run_in_onnxruntime(dtype: torch.dtype) -> None:
    import onnxruntime

    x = randn(20, 2, dtype=dtype)
    for fn in (lambda t: torch.histogramdd(t, (3, 4), density=True).hist,
               lambda t: torch.histogram(t, 6, weight=t.abs()).hist,
               lambda t: torch.histc(t, 7)):  # the family's histc: its float64 range once went through float32
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(rewrites.apply(Fn(fn), ["order"]), (x,), f, dynamo=False, opset_version=18)
        session = onnxruntime.InferenceSession(f.getvalue())
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert_equivalent(torch.from_numpy(got), fn(x), 1e-6)
