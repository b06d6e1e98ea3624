"""The precise family (buildsys/rewrites/precise.py): log1p and expm1 without their ops, against torch over the
whole float range (tiny, ±0, near −1, large, ±inf, NaN) in float32 and float64; the ops gone from every graph; and
through the legacy ONNX exporter, which writes log1p as log(1 + x) and refuses expm1, into onnxruntime."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from buildsys import rewrites
from tests.helpers.rewrite_checks import assert_equivalent, check
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]


def values(dtype: torch.dtype) -> torch.Tensor:
    tiny = torch.finfo(dtype).tiny
    points = [0.0, -0.0, tiny, -tiny, 1e-30, -1e-30, 1e-12, -1e-12, 1e-7, -1e-7, 1e-3, -1e-3, 0.3, -0.3, 0.999, -0.999,
              1.0, -1.0, 2.5, -2.5, 30.0, -30.0, 80.0, -80.0, 700.0, -700.0, 1e30, float("inf"), float("-inf"),
              float("nan"), -1.5]
    return torch.tensor(points, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["log1p", "expm1"])
def test_matches_torch_to_a_few_ulp(name: str, dtype: torch.dtype) -> None:
    x = values(dtype)
    fn = getattr(torch, name)
    got, want = rewrites.apply(Fn(fn), ["precise"])(x), fn(x)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    finite = ~torch.isnan(want)
    assert torch.equal(torch.isinf(got[finite]), torch.isinf(want[finite]))
    ok = torch.isfinite(want)
    ulps = 16 * torch.finfo(dtype).eps
    assert torch.allclose(got[ok], want[ok], rtol=ulps, atol=0), (x[ok], got[ok] - want[ok])
    assert torch.equal(torch.signbit(got[x == 0]), torch.signbit(want[x == 0]))  # log1p(−0) is −0


def test_every_spelling_and_no_op_left() -> None:
    x = torch.rand(5, 3)
    check(lambda t: torch.special.log1p(t) + t.log1p() + torch.expm1(t) + t.expm1() + torch.special.expm1(t),
          "precise", x, graphs=True)
    check(lambda t: t.clone().log1p_() + t.clone().expm1_() + torch.log1p(t.int()), "precise", x)


def test_through_onnx_where_log_of_one_plus_loses_everything() -> None:
    import onnxruntime

    x = torch.tensor([1e-9, 3e-8, -2e-8, 1e-4], dtype=torch.float32)
    for names, close in (([], False), (["precise"], True)):  # the exporter refuses expm1, writes log1p imprecisely
        f = io.BytesIO()
        fn = (lambda t: torch.log1p(t) + torch.expm1(t)) if names else torch.log1p
        module = Fn(fn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(rewrites.apply(module, names) if names else module, (x,), f, dynamo=False,
                              opset_version=18)
        session = onnxruntime.InferenceSession(f.getvalue())
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        want = fn(x)
        assert torch.allclose(got, want, rtol=1e-6, atol=0) is close, (names, got, want)
        if close:
            assert_equivalent(got, want, 1e-6)


BOUNDS = [(torch.tensor(-2.0), torch.tensor(-3)), (torch.tensor(0.5), 4.0), (-7.3, torch.tensor(11.9)), (0.0, 1.0),
          (1e-3, 5e4)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("steps", [0, 1, 2, 7, 50, 301])
@pytest.mark.parametrize("bounds", range(len(BOUNDS)))
def test_linspace_and_logspace_as_torch_computes_them(bounds: int, steps: int, dtype: torch.dtype) -> None:
    start, end = BOUNDS[bounds]
    eps, span = torch.finfo(dtype).eps, max(abs(float(start)), abs(float(end)))
    # torch's vectorised kernel can round an inner point one ulp (of the bounds) from its scalar path, which this is;
    # a power turns an exponent's ulp into a relative error of ulp · ln(base)
    for fn, rtol, atol in ((lambda: torch.linspace(start, end, steps, dtype=dtype), 0.0, 4 * eps * span),
                           (lambda: torch.logspace(start, end, steps, base=1.5, dtype=dtype),
                            4 * eps * (1 + span * math.log(1.5)), 0.0)):
        got, want = rewrites.apply(Fn(fn), ["precise"])(), fn()
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.allclose(got, want, rtol=rtol, atol=atol), (got - want).abs().max()
        if steps and atol:
            assert got[0] == want[0] and got[-1] == want[-1]


def test_linspace_with_tensor_bounds_leaves_no_op() -> None:
    check(lambda s, e: torch.linspace(s[0], e[0], 9) * torch.logspace(s[0], e[0], 9, base=2.0), "precise",
          torch.tensor([0.25]), torch.tensor([3.5]), graphs=True)
    with pytest.raises(rewrites.RewriteNotApplicable, match="dtype"):
        rewrites.apply(Fn(lambda s: torch.linspace(s[0], 9.0, 4, dtype=torch.int64)), ["precise"])(torch.ones(1))


def test_through_onnx_where_one_step_divides_by_zero() -> None:
    """OpInfo's linspace sample: the exporter's start + i·(end − start)/(steps − 1) is 0·inf = NaN at one step."""
    import onnxruntime

    x = torch.tensor([-2.0])
    fn = lambda t: torch.linspace(t[0], -3.0, 1)  # noqa: E731
    for names in ([], ["precise"]):
        f = io.BytesIO()
        module = rewrites.apply(Fn(fn), names) if names else Fn(fn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), f, dynamo=False, opset_version=18)
        session = onnxruntime.InferenceSession(f.getvalue())
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        assert torch.equal(got, fn(x)) is bool(names), (names, got)
    assert [r.name for r in rewrites.precise_for(["aten.linspace.Tensor_Tensor"])] == ["precise"]
