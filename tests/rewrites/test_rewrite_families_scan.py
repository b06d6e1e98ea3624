"""The scan family (buildsys/rewrites/scan.py) and the order-statistics family (order.py): cumprod, cummax, cummin,
logcumsumexp; kthvalue, mode, median, nanmedian, quantile, nanquantile, searchsorted, bucketize, histc; compared with torch in float32 and
float64 along every dim, with ties and NaNs, and gone from every graph."""

from __future__ import annotations

import pytest
import torch

from buildsys import rewrites
from tests.helpers.rewrite_checks import check, graph_ops, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
DIMS = [0, 1, -1]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", DIMS)
def test_scans_match_torch(dim: int, dtype: torch.dtype) -> None:
    x = randn(3, 7, 5, dtype=dtype)
    check(lambda t: torch.cumprod(t, dim), "scan", x)
    check(lambda t: t.cumprod(dim=dim, dtype=torch.float64), "scan", x)
    check(lambda t: torch.logcumsumexp(t * 30, dim), "scan", x)  # exp(30·x) overflows float32 unshifted
    ties = (x * 3).round()
    for scan in (torch.cummax, torch.cummin):
        for t in (x, ties):  # ties: the later index, as torch's kernel
            check(lambda u: scan(u, dim).values, "scan", t)
            check(lambda u: scan(u, dim)[1], "scan", t)
    check(lambda t: torch.cumprod((t * 3).long(), dim), "scan", x)  # integer products in int64
    for keepdim in (False, True):  # prod: every length halves to one (7, 5: odd lengths padded with a one)
        check(lambda t: torch.prod(t, dim, keepdim), "scan", x)
        check(lambda t: t.prod(dim=dim, keepdim=keepdim, dtype=torch.float64), "scan", x)
    check(torch.prod, "scan", x)  # over every element
    check(lambda t: torch.prod((t * 2).long()), "scan", x)
    check(lambda t: torch.prod(t[:, :0], dim), "scan", x)  # an empty product is one


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", DIMS)
def test_rank_statistics_match_torch(dim: int, dtype: torch.dtype) -> None:
    x = randn(3, 7, 5, dtype=dtype)
    for k in (1, 2, 3):
        check(lambda t: torch.kthvalue(t, k, dim).values, "order", x)
        check(lambda t: t.kthvalue(k, dim, keepdim=True).indices, "order", x)
    for fn in (torch.median, torch.nanmedian):
        check(lambda t: fn(t, dim).values, "order", x)
        check(lambda t: fn(t, dim, True)[1], "order", x)
        check(fn, "order", x)  # over the flattened input, the value alone


@pytest.mark.parametrize("fn", [torch.median, torch.nanmedian], ids=lambda f: f.__name__)
def test_medians_with_nans_match_torch(fn: object) -> None:
    x = randn(3, 7, 5)
    x[0, 1, :] = float("nan")  # a row of NaN
    x[1, 2, 3] = float("nan")
    x[2, :, 0] = float("nan")
    got = rewrites.apply(Fn(lambda t: fn(t, 2)), ["order"])(x)  # type: ignore[operator]
    want = fn(x, 2)  # type: ignore[operator]
    assert torch.allclose(got.values, want.values, equal_nan=True)
    numbers = ~want.values.isnan()
    assert torch.equal(got.indices[numbers], want.indices[numbers])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", DIMS)
def test_sorts_match_torch(dim: int, dtype: torch.dtype) -> None:
    x = randn(3, 7, 5, dtype=dtype)
    ties = torch.round(x * 2)  # many equal values: the stable order decides the indices
    for data in (x, ties):
        for descending in (False, True):
            check(lambda t: torch.sort(t, dim, descending).values, "order", data)
            check(lambda t: t.sort(dim=dim, descending=descending, stable=True).indices, "order", data)
            check(lambda t: torch.argsort(t, dim=dim, descending=descending, stable=True), "order", data)
            check(lambda t: torch.argsort(t, dim, descending), "order", data)
    check(torch.msort, "order", ties)
    check(lambda t: torch.sort(t.to(torch.int64), dim)[0], "order", ties)  # integers sort too
    check(lambda t: torch.sort(t.sum())[0], "order", x)  # a 0-d input is its own sort


@pytest.mark.parametrize("descending", [False, True])
def test_sorts_with_nans_match_torch(descending: bool) -> None:
    x = randn(4, 6)
    x[0, 2] = x[1, 0] = x[1, 5] = x[3, :] = float("nan")
    got = rewrites.apply(Fn(lambda t: torch.sort(t, dim=1, descending=descending, stable=True)), ["order"])(x)
    want = torch.sort(x, dim=1, descending=descending, stable=True)
    assert torch.allclose(got.values, want.values, equal_nan=True)
    assert torch.equal(got.indices, want.indices)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_searchsorted_bucketize_and_histc_match_torch(dtype: torch.dtype) -> None:
    x = randn(3, 7, 5, dtype=dtype)
    boundaries = torch.sort(randn(10, seed=1, dtype=dtype)).values
    rows = torch.sort(randn(3, 7, 9, seed=2, dtype=dtype), -1).values
    check(lambda v: torch.searchsorted(boundaries, v), "order", x)
    check(lambda v: torch.searchsorted(boundaries, v, right=True, out_int32=True), "order", x)
    check(lambda s, v: torch.searchsorted(s, v, side="right"), "order", rows, x)
    order = torch.argsort(randn(10, seed=3))
    check(lambda v: torch.searchsorted(boundaries[order], v, sorter=torch.argsort(boundaries[order])), "order", x)
    check(lambda v: torch.bucketize(v, boundaries), "order", x)
    check(lambda v: torch.bucketize(v, boundaries, right=True), "order", x)
    for args in ((10, 0, 0), (7, -1, 1), (4, 0.5, 2.0)):
        check(lambda t: torch.histc(t, *args), "order", x)
    check(lambda t: torch.histc(t * 0 + 1, 5), "order", x)  # one value: its range ± 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interpolation", ["linear", "lower", "higher", "midpoint", "nearest"])
def test_quantiles_match_torch(interpolation: str, dtype: torch.dtype) -> None:
    x = randn(3, 7, 5, dtype=dtype)
    levels = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=dtype)
    for fn in (torch.quantile, torch.nanquantile):
        check(lambda t: fn(t, 0.3, interpolation=interpolation), "order", x)
        for dim in DIMS:
            check(lambda t: fn(t, 0.625, dim, interpolation=interpolation), "order", x)
            check(lambda t: fn(t, levels, dim, keepdim=True, interpolation=interpolation), "order", x)
        check(lambda t: fn(t, levels, None, keepdim=True, interpolation=interpolation), "order", x)
        check(lambda t: t.quantile(levels, 1, interpolation=interpolation), "order", x)
    with_nans = x.clone()
    with_nans[0, 1, :] = float("nan")
    with_nans[1, 2, 3] = with_nans[2, :, 0] = float("nan")
    for fn in (torch.quantile, torch.nanquantile):
        got = rewrites.apply(Fn(lambda t: fn(t, levels, 2, interpolation=interpolation)), ["order"])(with_nans)
        want = fn(with_nans, levels, 2, interpolation=interpolation)
        assert torch.allclose(got, want, equal_nan=True, rtol=1e-5, atol=1e-6)


def test_no_scan_or_order_op_is_left_in_any_graph() -> None:
    boundaries = torch.linspace(-1, 1, 6)

    def model(t: torch.Tensor) -> torch.Tensor:
        return (torch.cumprod(t, 1) + torch.prod(t, 0) + torch.cummax(t, 1).values + torch.cummin(t, 0)[0] + torch.logcumsumexp(t, 1)
                + torch.kthvalue(t, 2, 1, keepdim=True).values + torch.median(t, 1, keepdim=True).values
                + torch.nanmedian(t) + torch.bucketize(t, boundaries) + torch.searchsorted(boundaries, t)
                + torch.histc(t, 4, -1, 1).sum() + torch.sort(t, 1, descending=True).values
                + torch.argsort(t, 0).to(t.dtype) + torch.quantile(t, 0.3, 1, keepdim=True))

    x = randn(4, 6)
    removed = {"cumprod", "cummax", "cummin", "logcumsumexp", "prod", "kthvalue", "median", "nanmedian", "searchsorted",
               "bucketize", "histc", "sort", "argsort", "quantile"}
    assert removed <= graph_ops(Fn(model), (x,))["traced"]
    after = graph_ops(rewrites.apply(Fn(model), ["scan", "order"]), (x,))
    for kind in ("traced", "exported", "decomposed"):
        assert not removed & after[kind], f"{kind} graph still has {removed & after[kind]}"


def test_refusals_of_the_members_point_at_their_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text, family in (("operator 'aten::cummax' is not supported at opset 18", "scan"),
                         ("Operator torch._ops.aten.cumprod.default is not in Core ATen opset", "scan"),
                         ("Core ML cannot convert the PyTorch op 'prod' (coremltools has no conversion for it)", "scan"),
                         ("coremltools.convert failed: NotImplementedError: Unsupported fx node prod, kind prod.dim_int",
                          "scan"),
                         ("Core ML cannot convert the PyTorch op 'nanmedian' (coremltools has no conversion)", "order"),
                         ("Operator torch._ops.aten.searchsorted.Tensor is not in Core ATen opset", "order"),
                         ("the program's operator aten::sort.values has no kernel in the ExecuTorch runtime", "order"),
                         ("Unsupported: ONNX export of operator index_add, alpha != 1.", "scatter")):
        assert [r.name for r in for_refusal(text)][:1] == [family], text


def test_a_scan_too_long_for_its_mask_is_refused_not_computed() -> None:
    from buildsys.rewrites.base import RewriteNotApplicable

    with pytest.raises(RewriteNotApplicable, match="more than 1024"):
        rewrites.apply(Fn(lambda t: torch.cumprod(t, -1)), ["scan"])(torch.ones(2, 2000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64], ids=str)
def test_mode_matches_torch(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (3, 7, 5), generator=g).to(dtype)  # few values: ties and repeats everywhere
    for dim in (0, 1, -1):
        for keepdim in (False, True):
            got = rewrites.apply(Fn(lambda t: tuple(torch.mode(t, dim, keepdim))), ["order"])(x)
            want = torch.mode(x, dim, keepdim)
            assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices), (dim, keepdim)
    distinct = randn(4, 6)
    got = rewrites.apply(Fn(lambda t: tuple(t.mode())), ["order"])(distinct)
    assert torch.equal(got[0], distinct.mode().values) and torch.equal(got[1], distinct.mode().indices)
    check(lambda t: torch.mode(t, 1).values, "order", distinct, graphs=True)
