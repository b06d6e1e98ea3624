"""The Bessel-function family (buildsys/rewrites/bessel.py): i0, i0e, i1, i1e, modified_bessel_i0 / i1 / k0 / k1,
scaled_modified_bessel_k0 / k1, bessel_j0 / j1 / y0 / y1, compared with torch in float32 and float64 over every branch
of PyTorch's kernels (functions, Tensor methods and in-place forms), NaN and ±inf where torch has them, and gone
from every graph."""

from __future__ import annotations

import math

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
EVERY = FIRST_KIND + SECOND_KIND + BESSEL


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
def test_edge_values_match_torch_exactly(dtype: torch.dtype) -> None:
    """0, −0, ±inf, NaN, negative x, subnormals and the largest float: NaN and ±inf exactly where torch has them
    (i0(±inf), i1(±inf), j(±inf) and y(±inf) are NaN; y at 0 is −inf, k at 0 +inf, both NaN below)."""
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


def test_refusals_of_the_bessel_ops_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("Exporting the operator 'aten::special_bessel_j0' to ONNX opset version 18 is not supported",
                 "Operator torch._ops.aten.special_modified_bessel_k1.default is not in Core ATen opset",
                 "Core ML cannot convert the PyTorch op 'i0' (coremltools has no conversion for it)",
                 "Operator torch._ops.aten.special_i1e.default is not in Core ATen opset"):
        assert [r.name for r in for_refusal(text)][:1] == ["bessel"], text

