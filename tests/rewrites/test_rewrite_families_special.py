"""The special-function family (buildsys/rewrites/special.py): erfinv, ndtri, lgamma, digamma, mvlgamma, hypot,
spherical_bessel_j0, xlogy, round(decimals), var_mean / std_mean, compared with torch over their domains in float32
and float64 (functions, Tensor methods and in-place forms), and gone from every graph."""

from __future__ import annotations

import pytest
import torch

from buildsys import rewrites
from tests.helpers.rewrite_checks import check, graph_ops, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]


def uniform(low: float, high: float, *shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * (high - low) + low


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(300,), (4, 7, 9)])
def test_inverse_error_functions_match_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = uniform(-0.9999, 0.9999, *shape, dtype=dtype)
    check(torch.erfinv, "special", x)
    check(torch.special.erfinv, "special", x)
    check(lambda t: t.erfinv(), "special", x)
    check(lambda t: t.clone().erfinv_(), "special", x)
    check(torch.special.ndtri, "special", uniform(1e-4, 1 - 1e-4, *shape, seed=1, dtype=dtype))
    edges = torch.tensor([-1.0, 1.0, 0.0, 1.5, -2.0], dtype=dtype)  # ±inf at ±1, NaN outside
    got = rewrites.apply(Fn(torch.erfinv), ["special"])(edges)
    assert torch.equal(got.isnan(), torch.erfinv(edges).isnan())
    assert torch.equal(got[:3], torch.erfinv(edges)[:3])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gamma_functions_match_torch(dtype: torch.dtype) -> None:
    x = randn(400, dtype=dtype) * 8  # both sides of ½ and of the shift, negative non-integers
    for fn in (torch.lgamma, torch.special.gammaln, torch.digamma, torch.special.psi, torch.special.digamma):
        check(fn, "special", x)
    check(lambda t: t.lgamma() + t.digamma(), "special", x)
    large = uniform(1.0, 1e5, 50, dtype=dtype)
    check(torch.lgamma, "special", large)
    positive = uniform(2.0, 12.0, 3, 50, seed=2, dtype=dtype)
    for p in (1, 2, 5):
        check(lambda t: torch.mvlgamma(t, p), "special", positive)
        check(lambda t: torch.special.multigammaln(t, p=p), "special", positive)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_elementwise_members_match_torch(dtype: torch.dtype) -> None:
    a, b = randn(6, 40, dtype=dtype) * 3, randn(40, seed=1, dtype=dtype) * 3
    check(torch.hypot, "special", a, b)
    check(lambda s, t: s.hypot(t), "special", a, b)
    with_zeros = torch.cat([a.flatten(), torch.zeros(4, dtype=dtype)])
    check(torch.special.spherical_bessel_j0, "special", with_zeros)
    check(torch.xlogy, "special", with_zeros, with_zeros.abs() + 0.5)
    check(lambda t: torch.special.xlogy(t, 2.0), "special", with_zeros)
    nan_y = torch.tensor([0.0, 1.0, float("nan"), 0.0], dtype=dtype)
    got = rewrites.apply(Fn(torch.xlogy), ["special"])(torch.tensor([0.0, 2.0, 0.0, 1.0], dtype=dtype), nan_y)
    assert torch.equal(got.isnan(), torch.tensor([False, False, True, False]))
    for decimals in (-2, -1, 0, 1, 3):
        check(lambda t: torch.round(t, decimals=decimals), "special", a * 100)
        check(lambda t: t.round(decimals=decimals), "special", a * 100)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kwargs", [{}, {"dim": 1}, {"dim": (0, 2), "keepdim": True}, {"dim": -1, "correction": 0},
                                    {"unbiased": False}, {"dim": [1], "unbiased": True, "keepdim": True}], ids=str)
def test_var_mean_and_std_mean_match_torch(kwargs: dict[str, object], dtype: torch.dtype) -> None:
    x = randn(3, 4, 5, dtype=dtype)
    for fn in (torch.var_mean, torch.std_mean):
        check(lambda t: fn(t, **kwargs)[0], "special", x)  # type: ignore[call-overload]
        check(lambda t: fn(t, **kwargs)[1], "special", x)  # type: ignore[call-overload]
    check(lambda t: torch.var_mean(t, False)[0], "special", x)  # var_mean(x, unbiased)


def test_no_special_function_is_left_in_any_graph() -> None:
    """Each member's op is in the original's graphs and in none of the rewritten ones (round stays: only its
    decimals overload is removed, plain round is in every converter)."""
    def model(t: torch.Tensor) -> torch.Tensor:
        return (torch.erfinv(t) + torch.lgamma(t + 2) + torch.digamma(t + 2) + torch.mvlgamma(t + 3, 2)
                + torch.hypot(t, t * 2) + torch.special.ndtri(t.abs() / 2 + 0.1) + torch.xlogy(t, t.abs() + 1)
                + torch.special.spherical_bessel_j0(t) + torch.var_mean(t, 1, keepdim=True)[0]
                + torch.std_mean(t, 0)[1])

    x = uniform(-0.9, 0.9, 4, 5)
    removed = {"erfinv", "special_ndtri", "lgamma", "digamma", "mvlgamma", "hypot", "special_spherical_bessel_j0",
               "xlogy", "var_mean", "std_mean"}
    before = graph_ops(Fn(model), (x,))
    assert removed - {"mvlgamma", "var_mean", "std_mean"} <= before["traced"]
    after = graph_ops(rewrites.apply(Fn(model), ["special"]), (x,))
    for kind in ("traced", "exported", "decomposed"):
        assert not removed & after[kind], f"{kind} graph still has {removed & after[kind]}"
    rounded = graph_ops(rewrites.apply(Fn(lambda t: torch.round(t, decimals=2)), ["special"]), (x,))
    assert "round" in rounded["traced"]  # plain round, the one every converter has


def test_refusals_of_the_members_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("operator 'aten::erfinv' is not supported at opset 18",
                 "Operator torch._ops.aten.special_ndtri.default is not in Core ATen opset",
                 "Core ML cannot convert the PyTorch op 'hypot' (coremltools has no conversion for it)",
                 "Operator torch._ops.aten.round.decimals is not in Core ATen opset",
                 "Operator torch._ops.aten.var_mean.correction is not in Core ATen opset"):
        assert [r.name for r in for_refusal(text)][:1] == ["special"], text
