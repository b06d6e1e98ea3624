"""The LU functions of the linear-algebra family (buildsys/rewrites/lu.py): lu_factor / lu_factor_ex, linalg.lu,
torch.lu / Tensor.lu, lu_unpack, linalg.lu_solve and torch.lu_solve / Tensor.lu_solve against torch in float32 and
float64, square, tall and wide, batched or not: LAPACK's pivots exactly (ties to the first row of maximal |value|,
zero pivots reported in info), LU / L / U to rounding, P exactly; the ops gone from every graph (and no iota / eye /
tril / triu / alias / scatter in their place); the refusals."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import check, graph_ops, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
REL = {torch.float32: 1e-4, torch.float64: 1e-10}
SHAPES = [(1, 1), (3, 3), (5, 4), (4, 5), (8, 8), (16, 16)]
BATCHES = [(), (3,), (2, 2)]
#: ops a converter may lack that none of these graphs may hold
NOT_PLAIN = {"arange", "iota", "eye", "tril", "triu", "alias", "scatter", "diag_embed", "index_put", "gather"}

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=str)
pytestmark = [pytest.mark.filterwarnings("ignore:torch.lu is deprecated"),
              pytest.mark.filterwarnings("ignore:torch.lu_solve is deprecated")]
batches = pytest.mark.parametrize("batch", BATCHES, ids=str)
shapes = pytest.mark.parametrize("shape", SHAPES, ids=str)


def rewritten(fn: Callable[..., object]) -> torch.nn.Module:
    return rewrites.apply(Fn(fn), ["linalg"])  # type: ignore[arg-type]


@dtypes
@batches
@shapes
def test_factorisations_match_torch(shape: tuple[int, int], batch: tuple[int, ...], dtype: torch.dtype) -> None:
    a, rel = randn(*batch, *shape, seed=sum(shape), dtype=dtype), REL[dtype]
    check(lambda t: torch.linalg.lu_factor(t).LU, "linalg", a, rel=rel)
    check(lambda t: torch.linalg.lu_factor(t).pivots, "linalg", a)  # int32, exactly
    check(lambda t: torch.linalg.lu_factor_ex(t)[0], "linalg", a, rel=rel)
    check(lambda t: torch.linalg.lu_factor_ex(t)[1], "linalg", a)
    check(lambda t: torch.linalg.lu_factor_ex(t).info, "linalg", a)
    for part in range(3):
        check(lambda t: torch.linalg.lu(t)[part], "linalg", a, rel=rel)
    check(lambda t: torch.lu(t)[0], "linalg", a, rel=rel)
    check(lambda t: torch.lu(t, get_infos=True)[1], "linalg", a)
    check(lambda t: t.lu()[1], "linalg", a)
    check(lambda t: t.lu(get_infos=True)[2], "linalg", a)
    p, lower, upper = rewritten(torch.linalg.lu)(a)
    assert ((p @ lower @ upper).double() - a.double()).abs().max().item() <= rel * a.abs().max().item() * 10


@dtypes
@batches
@shapes
def test_unpacking_matches_torch(shape: tuple[int, int], batch: tuple[int, ...], dtype: torch.dtype) -> None:
    """lu_unpack of torch's own factorisation (its pivots an input of the graph, not a constant)."""
    lu, pivots = torch.linalg.lu_factor(randn(*batch, *shape, seed=7, dtype=dtype))
    for part in range(3):
        check(lambda t, q: torch.lu_unpack(t, q)[part], "linalg", lu, pivots)
    check(lambda t, q: torch.lu_unpack(t, q, unpack_pivots=False)[1], "linalg", lu, pivots)
    check(lambda t, q: torch.lu_unpack(t, q, unpack_data=False)[0], "linalg", lu, pivots)
    for flags in ((True, False), (False, True), (False, False)):
        got, want = rewritten(lambda t, q: torch.lu_unpack(t, q, *flags))(lu, pivots), torch.lu_unpack(lu, pivots, *flags)
        assert [(g.shape, g.dtype) for g in got] == [(w.shape, w.dtype) for w in want]


@dtypes
@batches
@pytest.mark.parametrize("n", [1, 3, 5, 16])
def test_solves_match_torch(n: int, batch: tuple[int, ...], dtype: torch.dtype) -> None:
    q = torch.linalg.qr(randn(*batch, n, n, seed=n, dtype=torch.float64)).Q
    a = (q * (torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) + 0.5)).to(dtype)
    lu, pivots = torch.linalg.lu_factor(a)
    b, rel = randn(*batch, n, 3, seed=1, dtype=dtype), REL[dtype]
    for left in (True, False):
        for adjoint in (False, True):
            rhs = b if left else b.transpose(-2, -1)
            check(lambda t, p, x: torch.linalg.lu_solve(t, p, x, left=left, adjoint=adjoint), "linalg",
                  lu, pivots, rhs, rel=rel)
    check(lambda t, p, x: torch.linalg.lu_solve(t, p, x), "linalg", lu, pivots, randn(4, *batch, n, 2, dtype=dtype),
          rel=rel)  # B's batch broadcast against LU's
    check(lambda t, p, x: torch.lu_solve(x, t, p), "linalg", lu, pivots, b, rel=rel)
    check(lambda t, p, x: x.lu_solve(t, p), "linalg", lu, pivots, b, rel=rel)
    check(lambda t, x: torch.linalg.lu_solve(*torch.linalg.lu_factor(t), x), "linalg", a, b, rel=rel)


def test_ties_and_zero_pivots_as_lapack() -> None:
    """idamax's choice among equal |values| (the first), a zero column (no exchange, info = its column), small
    integer matrices (ties everywhere).

    The random integer matrices are the invertible ones: where one is singular, whether the last pivot comes out
    exactly zero (info = n) or as a rounding residue (info = 0) depends on LAPACK's kernel for the host's CPU
    (FMA or not), so no rewrite can match it everywhere; the singular cases below eliminate exactly."""
    ints = torch.randint(-2, 3, (64, 4, 4), generator=torch.Generator().manual_seed(3)).to(torch.float64)
    ints = ints[torch.linalg.det(ints).abs() > 0.5]  # an integer determinant: nonzero is at least 1
    singular = torch.tensor([[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]], [[0.0, 0.0, 0.0], [1.0, 2.0, 0.0],
                                                                                     [3.0, 1.0, 1.0]]])
    ties = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 3.0, 1.0], [1.0, -3.0, 2.0]])
    for a in (ints, singular, ties, torch.zeros(2, 3, 3), torch.zeros(3, 5)):
        for field in range(3):
            check(lambda t: torch.linalg.lu_factor_ex(t)[field], "linalg", a)
        check(lambda t: torch.linalg.lu(t)[0], "linalg", a)


def test_no_lu_op_is_left_in_any_graph() -> None:
    a, b = randn(2, 4, 4, seed=5), randn(2, 4, 2, seed=6)
    lu, pivots = torch.linalg.lu_factor(a)
    fns: list[tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = [
        (lambda t: torch.linalg.lu_factor_ex(t)[0].sum(-1) + torch.linalg.lu_factor(t)[1], (a,)),
        (lambda t: torch.linalg.lu(t)[0] + torch.lu(t)[0], (a,)),
        (lambda t, p: torch.lu_unpack(t, p)[0], (lu, pivots)),
        (lambda t, p, x: torch.linalg.lu_solve(t, p, x) + torch.lu_solve(x, t, p), (lu, pivots, b)),
        (lambda t: torch.lu_unpack(*torch.linalg.lu_factor(t))[1], (randn(5, 3, seed=8),))]
    for fn, args in fns:
        check(fn, "linalg", *args, graphs=True)
        found = graph_ops(rewritten(fn), args)
        for kind in ("traced", "exported", "decomposed"):
            assert not NOT_PLAIN & found[kind], f"{kind}: {NOT_PLAIN & found[kind]}"


def test_refusals_say_why() -> None:
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.lu_factor: pivot=False"):
        rewritten(lambda t: torch.linalg.lu_factor(t, pivot=False))(torch.eye(3))
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.lu: min\(m, n\) = 17 is above 16"):
        rewritten(torch.linalg.lu)(torch.eye(17))
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.lu_factor_ex: a complex A"):
        rewritten(torch.linalg.lu_factor_ex)(torch.eye(3, dtype=torch.complex64))
    with pytest.raises(RewriteNotApplicable, match=r"the out= argument"):
        rewritten(lambda t: torch.linalg.lu_factor(t, out=(torch.empty(3, 3), torch.empty(3, dtype=torch.int32))))(
            torch.eye(3))
    with pytest.raises(RuntimeError, match="square"):  # what torch says, not a refusal
        rewritten(lambda t, p, x: torch.linalg.lu_solve(t, p, x))(torch.ones(3, 4), torch.ones(3, dtype=torch.int32),
                                                                  torch.ones(3, 1))


def test_refusals_of_the_lu_ops_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("Operator torch._ops.aten.linalg_lu_factor_ex.default is not in Core ATen opset",
                 "Exporting the operator 'aten::lu_unpack' to ONNX opset version 18 is not supported",
                 "Operator torch._ops.aten.linalg_lu_solve.default is not in Core ATen opset"):
        assert [r.name for r in for_refusal(text)][:1] == ["linalg"], text
