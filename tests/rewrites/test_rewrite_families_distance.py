"""The distance family (buildsys/rewrites/distance.py) and the triangular family (triangular.py): cdist (every p,
both compute modes), pdist, pairwise_distance, dist; triu / tril with every diagonal, in place
or not, triu_indices / tril_indices; compared with torch in float32 and float64, and gone from every graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.rewrite_checks import check, randn

PS = [0.0, 1.0, 2.0, 3.0, 1.5, float("inf")]
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("left", "right"), [((10, 3), (7, 3)), ((2, 10, 3), (2, 30, 3)), ((3, 1, 40, 4), (3, 20, 4))])
def test_cdist_matches_torch(left: tuple[int, ...], right: tuple[int, ...], dtype: torch.dtype) -> None:
    x1, x2 = randn(*left, seed=1, dtype=dtype), randn(*right, seed=2, dtype=dtype)
    for p in PS:
        check(lambda a, b: torch.cdist(a, b, p=p), "distance", x1, x2)
    for mode in ("use_mm_for_euclid_dist", "donot_use_mm_for_euclid_dist", "use_mm_for_euclid_dist_if_necessary"):
        check(lambda a, b: torch.cdist(a, b, compute_mode=mode), "distance", x1, x2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(6, 3), (2, 9, 4), (12, 5)])
def test_pdist_pairwise_distance_and_dist(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x1, x2 = randn(*shape, seed=3, dtype=dtype), randn(*shape, seed=4, dtype=dtype)
    for p in PS:
        if len(shape) == 2:
            check(lambda a: F.pdist(a, p=p), "distance", x1)
        check(lambda a, b: F.pairwise_distance(a, b, p=p), "distance", x1, x2)
        check(lambda a, b: torch.pairwise_distance(a, b[:1], p=p, eps=1e-3, keepdim=True), "distance", x1, x2)
        check(lambda a, b: torch.dist(a, b, p=p), "distance", x1, x2)
    check(lambda a, b: torch.nn.PairwiseDistance(p=1.0, keepdim=True)(a, b[:1] * 1e-3), "distance", x1, x2)


@pytest.mark.parametrize("name", ["cdist", "pdist", "pairwise-distance"])
def test_no_distance_op_is_left_in_any_graph(name: str) -> None:
    from tests.helpers.rewrite_ops import cases

    module, args, _, _ = cases()[name]
    check(module.fn, "distance", *args, graphs=True)  # type: ignore[arg-type]
    check(lambda a, b: torch.cdist(a, b.repeat(1, 4, 1), p=2.0), "distance", randn(2, 30, 3), randn(2, 10, 3),
          graphs=name == "cdist")  # the matmul form


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bool], ids=str)
@pytest.mark.parametrize("shape", [(5, 7), (3, 6, 6), (2, 2, 8, 3)])
def test_triu_and_tril_match_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = (randn(*shape) * 5).to(dtype) if dtype != torch.bool else randn(*shape) > 0
    for diagonal in (-9, -2, -1, 0, 1, 3, 9):
        check(lambda t: torch.triu(t, diagonal), "triangular", x)
        check(lambda t: t.tril(diagonal=diagonal), "triangular", x)

    def in_place(t: torch.Tensor) -> torch.Tensor:
        y = t.clone()
        y.triu_(-1)
        return y.tril_(2)

    check(in_place, "triangular", x, graphs=dtype == torch.float32 and len(shape) == 2)


def test_triangle_indices_are_constants() -> None:
    def pick(t: torch.Tensor) -> torch.Tensor:
        rows, cols = torch.triu_indices(5, 7, 1)
        low = torch.tril_indices(5, 7, offset=-1, dtype=torch.int32)
        return torch.cat([t[rows, cols], t[low[0].long(), low[1].long()], low.float().flatten()])

    check(pick, "triangular", randn(5, 7), graphs=True)
