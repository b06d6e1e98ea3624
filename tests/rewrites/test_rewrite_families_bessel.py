"""The Bessel-function family (buildsys/rewrites/bessel.py): i0, i0e, i1, i1e, modified_bessel_i0 / i1 / k0 / k1,
scaled_modified_bessel_k0 / k1, bessel_j0 / j1 / y0 / y1, airy_ai, compared with torch in float32 and float64 over every
branch of PyTorch's kernels (functions, Tensor methods and in-place forms), NaN and ±inf where torch has them, gone
from every graph, and airy_ai through the legacy ONNX exporter into onnxruntime."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from buildsys import rewrites
from buildsys.rewrites.base import RewriteNotApplicable
from tests.helpers.rewrite_checks import check
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
SHAPES = [(300,), (4, 7, 9)]
S = torch.special
FIRST_KIND = [torch.i0, S.i0, S.i0e, S.i1, S.i1e, S.modified_bessel_i0, S.modified_bessel_i1]
SECOND_KIND = [S.modified_bessel_k0, S.modified_bessel_k1, S.scaled_modified_bessel_k0, S.scaled_modified_bessel_k1]
BESSEL = [S.bessel_j0, S.bessel_j1, S.bessel_y0, S.bessel_y1]
AIRY = [S.airy_ai]
EVERY = FIRST_KIND + SECOND_KIND + BESSEL + AIRY
#: airy_ai's branch points (−2.09, 2.09, 103.892), the kernel's 8.3203353, the float32 underflow to 0 (25.77),
#: 0, and the zero of the power series' f (−1.98636, where the kernel's loop runs longest).
AIRY_POINTS = [-2.09, -1.98636, 0.0, 2.09, 8.3203353, 25.77, 103.892]


def uniform(low: float, high: float, *shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * (high - low) + low


def around(points: list[float], dtype: torch.dtype) -> torch.Tensor:
    """Each branch point, and the floats either side of it."""
    at = torch.tensor(points, dtype=dtype)
    return torch.cat([at, torch.nextafter(at, at - 1), torch.nextafter(at, at + 1)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_modified_bessel_functions_of_the_first_kind_match_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Both sides of |x| = 8, negative x (i1 odd), up to |x| = 80 for all and ±100 where float32's exp(|x|)
    overflows to inf as torch's kernel does."""
    x = uniform(-20, 20, *shape, dtype=dtype)
    large = uniform(-80, 80, *shape, seed=1, dtype=dtype)
    points = around([-8.0, -1.0, 0.0, 1.0, 8.0, 88.0, 89.0, -100.0], dtype)
    for fn in FIRST_KIND:
        for inputs in (x, large, points):
            check(fn, "bessel", inputs)
    check(lambda t: t.i0(), "bessel", x)
    check(lambda t: t.clone().i0_(), "bessel", x)
    check(lambda t: torch.i0_(t.clone()), "bessel", x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_modified_bessel_functions_of_the_second_kind_match_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """(0, 2] and above, NaN below 0, inf at 0, up to 80 (the scaled forms) and tiny x (log and 1/x)."""
    x = torch.cat([uniform(-1, 10, *shape, dtype=dtype).flatten(), torch.zeros(3, dtype=dtype)])
    large = uniform(2, 80, *shape, seed=1, dtype=dtype)
    tiny = torch.logspace(-30, 0, 50, dtype=dtype)
    points = around([-2.0, 0.0, 1e-5, 2.0, 8.0], dtype)
    for fn in SECOND_KIND:
        for inputs in (x, large, tiny, points):
            check(fn, "bessel", inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bessel_functions_match_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Both sides of |x| = 5 and of j0's 1e-5, negative x (j0 even, j1 odd, y NaN), large x (the asymptotic form)."""
    x = uniform(-30, 30, *shape, dtype=dtype)
    large = uniform(5, 1000, *shape, seed=1, dtype=dtype)
    points = around([-5.0, -1e-5, 0.0, 1e-5, 1.0, 5.0], dtype)
    for fn in BESSEL:
        for inputs in (x, large, points):
            check(fn, "bessel", inputs)
    positive = uniform(1e-3, 12, *shape, seed=2, dtype=dtype)  # y away from its NaN half
    for fn in (S.bessel_y0, S.bessel_y1):
        check(fn, "bessel", positive)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_airy_function_matches_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """−200…30 over all three branches, each branch alone, its edges and the floats beside them, past 103.892
    (0) and float32's underflow to 0 above 25.77."""
    x = uniform(-200, 30, *shape, dtype=dtype)
    oscillating = uniform(-30, -2.09, *shape, seed=1, dtype=dtype)
    series = uniform(-2.09, 2.09, *shape, seed=2, dtype=dtype)
    decaying = uniform(2.09, 110, *shape, seed=3, dtype=dtype)
    for inputs in (x, oscillating, series, decaying, around(AIRY_POINTS, dtype), around([-200.0, 30.0], dtype)):
        check(S.airy_ai, "bessel", inputs)
    check(lambda t: S.airy_ai(x=t), "bessel", series)  # its argument is named x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_airy_function_is_nan_where_torch_is(dtype: torch.dtype) -> None:
    """±inf, NaN, and the x whose ζ = (2/3)·(−x)^(3/2) overflows (sin(inf) in the kernel): NaN; 0 far right."""
    info = torch.finfo(dtype)
    overflow = -3.0706e25 if dtype == torch.float32 else -2.0066e205  # just past ζ's overflow
    x = torch.tensor([math.inf, -math.inf, math.nan, overflow, -info.max, overflow / 2, info.max, 1e4], dtype=dtype)
    want, got = S.airy_ai(x), rewrites.apply(Fn(S.airy_ai), ["bessel"])(x)
    assert want[:5].isnan().all() and not want[5:].isnan().any()
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[-2:], want[-2:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edge_values_match_torch_exactly(dtype: torch.dtype) -> None:
    """0, −0, ±inf, NaN, negative x, subnormals and the largest float: NaN and ±inf exactly where torch has them
    (i0(±inf), i1(±inf), j(±inf), y(±inf) and airy_ai(±inf) are NaN; y at 0 is −inf, k at 0 +inf, both NaN
    below)."""
    info = torch.finfo(dtype)
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, -1.0, -1e-30, 1e-30, info.tiny, info.tiny * info.eps,
                      info.max, -info.max, 88.7, 88.8, 709.7, 709.8, 1e20], dtype=dtype)
    for fn in EVERY:
        want, got = fn(x), rewrites.apply(Fn(fn), ["bessel"])(x)
        assert torch.equal(got.isnan(), want.isnan()), fn
        assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[want.isinf()], want[want.isinf()]), fn
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=0)


def test_integer_and_half_inputs_are_promoted_as_torch_does() -> None:
    ints = torch.arange(-6, 20)
    for fn in EVERY:
        check(fn, "bessel", ints)
    half = uniform(-10, 10, 100, dtype=torch.float16)
    for fn in (torch.i0, S.i0e, S.i1, S.i1e):  # torch's half kernels compute in float32, as the rewrite does
        check(fn, "bessel", half, rel=1e-3)


def test_no_bessel_function_is_left_in_any_graph() -> None:
    def model(t: torch.Tensor) -> torch.Tensor:
        positive = t.abs() + 0.5
        return sum((fn(positive if fn in SECOND_KIND + BESSEL[2:] else t) for fn in EVERY[1:]), torch.i0(t))

    check(model, "bessel", uniform(-10, 10, 4, 5), graphs=True)
    check(lambda t: t.i0() + t.clone().i0_() + torch.i0_(t.clone()), "bessel", uniform(-10, 10, 4, 5), graphs=True)


def test_out_is_refused() -> None:
    x = uniform(0.5, 3, 5)
    with pytest.raises(RewriteNotApplicable, match="out="):
        rewrites.apply(Fn(lambda t: torch.i0(t, out=torch.empty_like(t))), ["bessel"])(x)
    with pytest.raises(RewriteNotApplicable, match="out="):
        rewrites.apply(Fn(lambda t: S.airy_ai(t, out=torch.empty_like(t))), ["bessel"])(x)


def test_refusals_of_the_bessel_ops_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("Exporting the operator 'aten::special_bessel_j0' to ONNX opset version 18 is not supported",
                 "Operator torch._ops.aten.special_modified_bessel_k1.default is not in Core ATen opset",
                 "Core ML cannot convert the PyTorch op 'i0' (coremltools has no conversion for it)",
                 "Operator torch._ops.aten.special_i1e.default is not in Core ATen opset",
                 "Exporting the operator 'aten::special_airy_ai' to ONNX opset version 18 is not supported"):
        assert [r.name for r in for_refusal(text)][:1] == ["bessel"], text



@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_airy_function_runs_in_onnxruntime(dtype: torch.dtype) -> None:
    """Legacy exporter (opset 18), which refuses aten::special_airy_ai, then onnxruntime: torch's values within 1e-4
    of their range, over every branch, NaN at ±inf and NaN."""
    import onnxruntime

    x = torch.cat([uniform(-200, 30, 300, dtype=dtype), around(AIRY_POINTS, dtype),
                   torch.tensor([math.inf, -math.inf, math.nan], dtype=dtype)])
    model = Fn(S.airy_ai)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rewrites.apply(model, ["bessel"]), (x,), f, dynamo=False, opset_version=18)
    session = onnxruntime.InferenceSession(f.getvalue())
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    got, want = torch.from_numpy(got), model(x)
    assert got.dtype == want.dtype and torch.equal(got.isnan(), want.isnan())
    finite = torch.isfinite(want)
    err = (got[finite].double() - want[finite].double()).abs().max().item()
    assert err <= 1e-4 * (want[finite].max() - want[finite].min()).item(), err
