"""The gamma family (buildsys/rewrites/gamma.py, buildsys/rewrites/orthogonal.py): Hurwitz zeta, polygamma and the
orthogonal polynomials of torch.special, compared with torch in float32 and float64 over every branch of PyTorch's
kernels (their special values, closed forms, recurrences, overflow), with n a number and a tensor; gone from every
graph, and through the legacy ONNX exporter into onnxruntime."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from buildsys import rewrites
from buildsys.rewrites.base import RewriteNotApplicable
from tests.helpers.rewrite_checks import assert_equivalent, check, graph_ops, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
S = torch.special
CHEBYSHEV = [f"{prefix}chebyshev_polynomial_{kind}" for prefix in ("", "shifted_") for kind in "tuvw"]
RECURRENCES = ["hermite_polynomial_h", "hermite_polynomial_he", "laguerre_polynomial_l", "legendre_polynomial_p"]
#: Fixed degrees: each side of every kernel threshold (4, 6, 8), of the unrolled recurrence (64), truncated floats.
DEGREES: list[Any] = [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 40, 64, 65, 100, 2.7, -0.5]
#: Tensor degrees: the same, and NaN and inf (0, as the kernels' cast gives on x86).
TENSOR_DEGREES = [-2.0, -0.5, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 20, 30, 64, 100, 2.7, math.nan, math.inf]


def uniform(low: float, high: float, *shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * (high - low) + low


def rewritten(fn: Callable[..., Any], *args: object) -> Any:
    return rewrites.apply(Fn(fn), ["gamma"])(*args)


def arguments(name: str, dtype: torch.dtype) -> torch.Tensor:
    """Both sides of ±1 (the shifted ones: of 0 and 1), the edges themselves, values a hair inside and outside."""
    x = torch.cat([torch.tensor([1.0, -1.0, 0.0, -0.0, 0.5, -0.5, 1 - 1e-7, -1 + 1e-7, 1 + 1e-6, -1 - 1e-6, 2.0,
                                 -3.0, 1e-8, 0.99999, -0.99999], dtype=dtype), uniform(-1.2, 1.2, 200, dtype=dtype)])
    if name.startswith("shifted"):
        x = torch.cat([(x + 1) / 2, torch.tensor([0.0, 1.0, 1e-9, 1 - 1e-9], dtype=dtype)])
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zeta_matches_torch(dtype: torch.dtype) -> None:
    x = torch.cat([torch.tensor([1.0, 1.5, 2.0, 3.0, 0.5, math.inf, math.nan, 5.0, 40.0], dtype=dtype),
                   uniform(1.0, 30.0, 60, dtype=dtype)])
    q = torch.cat([torch.tensor([0.0, -1.0, -1.5, 1.0, 0.5, math.inf, 1e-30, -15.5, 2.5, -3.0], dtype=dtype),
                   uniform(-5.0, 40.0, 60, seed=1, dtype=dtype)])
    grid_x, grid_q = torch.meshgrid(x, q, indexing="ij")
    check(S.zeta, "gamma", grid_x, grid_q)
    check(S.zeta, "gamma", grid_x.round(), grid_q)  # integer x: negative q allowed
    check(S.zeta, "gamma", x[:, None], q)  # broadcast
    check(lambda t: S.zeta(t, 2.0), "gamma", x)
    check(lambda t: S.zeta(3.0, t), "gamma", q)
    check(S.zeta, "gamma", torch.arange(2, 6), torch.arange(1, 5))  # integers promoted
    beyond = rewritten(S.zeta, torch.full((1,), 2.0, dtype=dtype), torch.full((1,), -16.5, dtype=dtype))
    assert beyond.isnan().all()  # q ≤ −16: past the unrolled terms (documented)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(500,), (4, 5, 6)])
def test_polygamma_matches_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = randn(*shape, dtype=dtype) * 6
    edges = torch.tensor([0.0, -0.0, -1.0, -2.0, 1.0, 10.0, math.inf, -math.inf, math.nan, 1e-3, -0.5, 0.5, -20.5,
                          -30.25, -17.0], dtype=dtype)
    for n in (0, 1, 2, 3, 4, 5, 6, 10):
        check(lambda t: torch.polygamma(n, t), "gamma", x)
        check(lambda t: S.polygamma(n, t), "gamma", edges)
        check(lambda t: t.polygamma(n), "gamma", x - 20)  # below −16: the reflection
    check(lambda t: t.clone().polygamma_(2), "gamma", x)
    check(lambda t: torch.polygamma(1, t), "gamma", torch.arange(-3, 5))
    with pytest.raises(RuntimeError, match="negative n"):
        rewritten(lambda t: torch.polygamma(-1, t), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CHEBYSHEV + RECURRENCES)
def test_polynomials_with_a_number_degree_match_torch(name: str, dtype: torch.dtype) -> None:
    fn, x = getattr(S, name), arguments(name, dtype)
    for n in DEGREES:
        check(lambda t: fn(t, n), "gamma", x)
    check(lambda t: fn(t, 3), "gamma", torch.arange(-3, 4))  # integers promoted
    if name.startswith("hermite"):
        limit = 512 if dtype == torch.float64 else 128
        check(lambda t: fn(t, limit), "gamma", x / 4)
        assert rewritten(lambda t: fn(t, limit + 1), x).isnan().all()  # above the kernel's limit: NaN, as torch
    elif not name.startswith("chebyshev") and not name.startswith("shifted"):
        check(lambda t: fn(t, 300), "gamma", x)
        with pytest.raises(RewriteNotApplicable):
            rewritten(lambda t: fn(t, 1025), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CHEBYSHEV + RECURRENCES)
def test_polynomials_with_a_tensor_degree_match_torch(name: str, dtype: torch.dtype) -> None:
    fn, x = getattr(S, name), arguments(name, dtype)
    grid_x, grid_n = torch.meshgrid(x, torch.tensor(TENSOR_DEGREES, dtype=dtype), indexing="ij")
    check(fn, "gamma", grid_x, grid_n)
    check(fn, "gamma", x[:, None], torch.arange(12))  # an integer n, broadcast: the basis-building use
    check(lambda n: fn(0.25, n), "gamma", torch.arange(-2, 15))  # a number x
    if name in ("laguerre_polynomial_l", "legendre_polynomial_p"):
        inner = torch.tensor([0.5, -0.5, 0.3, 2.0], dtype=dtype)
        assert rewritten(fn, inner, torch.full((4,), 129.0, dtype=dtype)).isnan().all()  # above 128: NaN (documented)
        edges = torch.tensor([0.0, -0.0] if name.startswith("laguerre") else [1.0, -1.0], dtype=dtype)
        check(fn, "gamma", edges, torch.tensor([1000.0, 1001.0], dtype=dtype))  # the kernels' special values, any n


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CHEBYSHEV)
def test_chebyshev_overflow_matches_the_recurrence(name: str, dtype: torch.dtype) -> None:
    """Outside [−1, 1] a large n overflows: inf where torch's recurrence first overflows, NaN (inf − inf) after."""
    fn = getattr(S, name)
    x = torch.tensor([1.5, -1.5, 3.0, -3.0, 10.0, -10.0, 1e3, -1e3, 1e10, -1e10, 1e30, -1e30, math.inf, -math.inf,
                      1.0001, -1.0001], dtype=dtype)
    x = (x + 1) / 2 if name.startswith("shifted") else x
    grid_x, grid_n = torch.meshgrid(x, torch.arange(0, 300, dtype=dtype), indexing="ij")
    got, want = rewritten(fn, grid_x, grid_n), fn(grid_x, grid_n)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[want.isinf()], want[want.isinf()])
    finite = torch.isfinite(want)
    assert ((got[finite] - want[finite]).abs() <= 1e-4 * want[finite].abs() + 1e-6).all()  # each on its own scale
    for n in (65, 100, 250):
        check(lambda t: fn(t, n), "gamma", x[:12])


def everything(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Each op once, n a number and (for the Chebyshev ones, whose tensor-n graphs are small) a tensor."""
    total = S.zeta(x + 2, x + 1) + torch.polygamma(0, x) + torch.polygamma(1, x) + S.polygamma(3, x)
    for name in CHEBYSHEV + RECURRENCES:
        total = total + getattr(S, name)(x, 5) + (getattr(S, name)(x, n) if name in CHEBYSHEV else 0)
    return total


def test_no_gamma_op_is_left_in_any_graph() -> None:
    x, n = uniform(0.1, 0.9, 3, 4), torch.arange(12.0).reshape(3, 4)
    removed = {o.split("::")[1] for o in rewrites.get("gamma").removes}
    before = graph_ops(Fn(everything), (x, n))
    assert removed - {"special_polygamma"} <= before["traced"]  # torch.special.polygamma traces as polygamma
    after = graph_ops(rewrites.apply(Fn(everything), ["gamma"]), (x, n))
    for kind in ("traced", "exported", "decomposed"):
        assert not removed & after[kind], f"{kind} graph still has {removed & after[kind]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_rewritten_ops_run_in_onnxruntime(dtype: torch.dtype, tmp_path: Path) -> None:
    """Legacy exporter (opset 18), which refuses every one of these ops, then onnxruntime: torch's values."""
    import onnxruntime

    x = torch.cat([torch.tensor([1.0, -1.0, 0.0, 0.5], dtype=dtype), uniform(-1.2, 1.2, 76, dtype=dtype)])
    x = x.reshape(8, 10)
    n = (torch.arange(80, dtype=dtype) % 14).reshape(8, 10)

    def each(t: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
        values = [S.zeta(t.abs() + 1.5, t + 2.0), torch.polygamma(0, 5 * t), torch.polygamma(1, 5 * t),
                  torch.polygamma(3, 5 * t), torch.polygamma(2, 5 * t - 20)]
        for name in CHEBYSHEV + RECURRENCES:  # a tensor n: Hermite's selects among 128 (512) terms, left out
            argument = (t + 1) / 2 if name.startswith("shifted") else t
            values += [getattr(S, name)(argument, 5), getattr(S, name)(argument, 12)]
            values += [getattr(S, name)(argument, degrees)] if not name.startswith("hermite") else []
        return torch.stack(values)

    model, path = Fn(each), tmp_path / "gamma.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rewrites.apply(model, ["gamma"]), (x, n), path, dynamo=False, opset_version=18)
    session = onnxruntime.InferenceSession(str(path))
    (got,) = session.run(None, {i.name: v.numpy() for i, v in zip(session.get_inputs(), (x, n))})
    for row, expected in zip(torch.from_numpy(got), model(x, n)):
        assert_equivalent(row, expected)


def test_refusals_of_the_ops_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("Exporting the operator 'aten::special_zeta' to ONNX opset version 18 is not supported",
                 "Exporting the operator 'aten::polygamma' to ONNX opset version 18 is not supported",
                 "Operator torch._ops.aten.special_chebyshev_polynomial_t.n_scalar is not in Core ATen opset",
                 "Operator torch._ops.aten.special_legendre_polynomial_p.default is not in Core ATen opset"):
        assert [r.name for r in for_refusal(text)][:1] == ["gamma"], text
