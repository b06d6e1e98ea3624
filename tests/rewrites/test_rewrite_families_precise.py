"""The precise family (buildsys/rewrites/precise.py): log1p and expm1 without their ops, against torch over the
whole float range (tiny, ±0, near −1, large, ±inf, NaN) in float32 and float64; the ops gone from every graph; and
through the legacy ONNX exporter, which writes log1p as log(1 + x) and refuses expm1, into onnxruntime."""

from __future__ import annotations

import io
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
