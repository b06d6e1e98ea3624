"""The scatter family (buildsys/rewrites/scatter.py, onehot.py, indexing.py): scatter, scatter_add, scatter_reduce,
index_add, index_copy, index_reduce, index_put and `x[idx] = v`, in and out of place, float and integer dtypes,
compared with torch on random indices (duplicates included), and no scatter left in any graph."""

from __future__ import annotations

import pytest
import torch

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import check, randn
from tests.helpers.rewrite_ops import Fn

REDUCTIONS = ["sum", "prod", "mean", "amax", "amin"]
DTYPES = [torch.float32, torch.float64, torch.int64, torch.int32]


def _values(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    x = randn(*shape, seed=seed) * 4
    return x.to(dtype) if not dtype.is_floating_point else x.to(dtype)


def _index(shape: tuple[int, ...], high: int, seed: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("base", "index", "dim"), [((3, 6, 4), (3, 4, 4), 1), ((5, 7), (2, 7), 0),
                                                    ((2, 3, 8), (2, 2, 5), -1), ((9,), (12,), 0)])
def test_scatter_reduce_every_reduction(dtype: torch.dtype, base: tuple[int, ...], index: tuple[int, ...],
                                        dim: int) -> None:
    target, idx = _values(base, dtype, 1), _index(index, base[dim], 2)
    src = _values(tuple(n + 1 for n in index), dtype, 3)  # larger than the index: only its part is read
    for reduce in REDUCTIONS:
        for include_self in (True, False):
            check(lambda s: target.scatter_reduce(dim, idx, s, reduce, include_self=include_self), "scatter", src)
    check(lambda s: torch.scatter_add(target, dim, idx, s), "scatter", src)
    check(lambda s: target.scatter(dim, idx, s), "scatter", src)  # duplicates: the last write wins, as on CPU
    check(lambda s: target.scatter(dim, idx, 2), "scatter", src)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64], ids=str)
def test_scatter_with_reduce_add_and_multiply(dtype: torch.dtype) -> None:
    target, idx, src = _values((4, 5), dtype, 4), _index((3, 5), 4, 5), _values((3, 5), dtype, 6)
    for reduce in ("add", "multiply"):
        check(lambda s: target.scatter(0, idx, s, reduce=reduce), "scatter", src)
        check(lambda s: target.scatter(0, idx, value=3, reduce=reduce), "scatter", src)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("base", "dim", "k"), [((6, 4), 0, 9), ((3, 7, 2), 1, 5), ((2, 3, 5), -1, 3)])
def test_index_add_copy_and_reduce(dtype: torch.dtype, base: tuple[int, ...], dim: int, k: int) -> None:
    target = _values(base, dtype, 7)
    size = base[dim]
    shape = list(base)
    shape[dim] = k
    source = _values(tuple(shape), dtype, 8)
    idx = _index((k,), size, 9)
    unique = torch.randperm(size, generator=torch.Generator().manual_seed(1))[:min(k, size)]
    alpha = 2 if dtype.is_floating_point is False else 0.5
    check(lambda s: target.index_add(dim, idx, s, alpha=alpha), "scatter", source)
    check(lambda s: torch.index_add(target, dim, idx, s), "scatter", source)
    check(lambda s: target.index_copy(dim, unique, s.narrow(dim, 0, len(unique))), "scatter", source)
    for reduce in ("prod", "mean", "amax", "amin"):
        for include_self in (True, False):
            check(lambda s: target.index_reduce(dim, idx, s, reduce, include_self=include_self), "scatter", source)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64], ids=str)
def test_index_put_and_setitem(dtype: torch.dtype) -> None:
    target = _values((3, 6, 4), dtype, 10)
    rows, cols = torch.tensor([0, 2, 2, 1]), torch.tensor([1, -1, 5, 1])

    def writes(s: torch.Tensor) -> torch.Tensor:
        out = target.clone()
        out.index_put_((rows, cols), s[0, :4], accumulate=True)
        a = target.index_put((rows[:3], cols[:3]), s[1, :3])
        b = target.index_put((target > 0,), torch.tensor(7).to(dtype))
        c = target.index_put((target[..., 0] > 0,), s[0, 0], accumulate=True)
        out[:, torch.tensor([1, 3])] = s[:, :2]
        out[torch.tensor([0, 2]), :, torch.tensor([1, 3])] = s[0, :2].T.reshape(2, 4)[:, :1]  # non-adjacent: dims first
        out[..., torch.tensor([[0], [2]])] = 5
        return torch.cat([out.flatten(), a.flatten(), b.flatten(), c.flatten()])

    check(writes, "scatter", _values((3, 6, 4), dtype, 11))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool], ids=str)
def test_slice_assignment_is_a_where(dtype: torch.dtype) -> None:
    def regions(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(3, 6, 5, dtype=dtype)
        out[:, 1:4] = t[:, :3]
        out[..., -1] = t[:, 0, :1].expand(3, 6) if dtype != torch.bool else True
        out[1, 2:, :2] = 1
        out[0] = out[2]
        return out

    x = _values((3, 6, 5), torch.float32, 12)
    check(regions, "scatter", x.to(dtype) if dtype != torch.bool else x > 0, graphs=dtype == torch.float32)


def test_in_place_forms_and_no_scatter_left_in_any_graph() -> None:
    def message_passing(x: torch.Tensor) -> torch.Tensor:
        """A graph layer: edge messages summed into their target nodes, then the max over each node's edges."""
        src, dst = torch.tensor([0, 1, 1, 2, 3, 3]), torch.tensor([1, 0, 2, 3, 2, 0])
        messages = x.index_select(0, src) * 0.5
        summed = torch.zeros(4, x.shape[1]).index_add_(0, dst, messages)
        biggest = torch.zeros(4, x.shape[1]).scatter_reduce_(0, dst[:, None].expand(-1, x.shape[1]), messages,
                                                             "amax", include_self=False)
        return summed + biggest

    for rows in (4, 7):
        check(message_passing, "scatter", randn(rows, 5), graphs=rows == 4)
    check(lambda x: torch.zeros(3, 5).scatter_(1, (x.abs() * 2).long() % 5, x), "scatter", randn(3, 4), graphs=True)


def test_what_the_family_does_not_implement_is_refused_not_computed() -> None:
    with pytest.raises(RewriteNotApplicable, match="a boolean mask with a value per masked element"):
        rewrites.apply(Fn(lambda t: t.index_put((t > 0,), torch.arange(24.0))), ["scatter"])(randn(4, 6))
    with pytest.raises(RewriteNotApplicable, match="an index 1 beside index tensors"):
        def mixed(t: torch.Tensor) -> torch.Tensor:
            out = t.clone()
            out[1, torch.tensor([0, 2])] = 0.0
            return out
        rewrites.apply(Fn(mixed), ["scatter"])(randn(4, 6))
    with pytest.raises(RewriteNotApplicable, match=r"dimension 1 is dynamic"):
        dynamic = torch.export.Dim("slots", min=3, max=64)
        torch.export.export(rewrites.apply(Fn(lambda t: t.index_add(1, torch.tensor([0, 2]), t[:, :2])), ["scatter"]),
                            (randn(2, 8),), dynamic_shapes=(({1: dynamic},),), strict=False)


def test_zero_dimensional_inputs_are_one_element() -> None:
    """A 0-D input with a 0-D source and a one-element index (OpInfo's index_add sample, alpha ≠ 1): torch treats it
    as one element along dim 0, and so does the family."""
    x, source, one = torch.tensor(2.0), torch.tensor(3.0), torch.tensor([0])
    check(lambda a, b: torch.index_add(a, 0, one, b, alpha=2), "scatter", x, source)
    check(lambda a, b: a.index_copy(0, one, b), "scatter", x, source)
    check(lambda a, b: a.index_reduce(0, one, b, "prod"), "scatter", x, source)
    check(lambda a, b: a.scatter_add(0, torch.tensor(0), b), "scatter", x, source)
    check(lambda a, b: a.scatter_reduce(0, torch.tensor(0), b, "amax", include_self=False), "scatter", x, source)


SEGMENT_REDUCTIONS = ["sum", "mean", "max", "min", "prod"]


@pytest.mark.parametrize("reduce", SEGMENT_REDUCTIONS)
@pytest.mark.parametrize(("shape", "axis", "lengths"), [((5,), 0, [0, 1, 2, 2]), ((10, 3, 2), 0, [1, 2, 0, 6, 0, 1]),
                                                        ((3, 5), 1, [[0, 1, 2, 2], [5, 0, 0, 0], [1, 1, 1, 2]]),
                                                        ((2, 6, 3), -2, [[3, 3], [0, 6]])])
def test_segment_reduce_lengths_and_offsets(reduce: str, shape: tuple[int, ...], axis: int, lengths: list) -> None:
    """Every reduction over segments given as lengths or as offsets, empty segments included, with and without
    `initial`; the segments a constant of the model or one of its inputs."""
    data = randn(*shape, seed=11)
    lens = torch.tensor(lengths)
    offsets = torch.cat([torch.zeros(*lens.shape[:-1], 1, dtype=lens.dtype), torch.cumsum(lens, -1)], dim=-1)
    for initial in (None, 2.0):
        check(lambda d: torch.segment_reduce(d, reduce, lengths=lens, axis=axis, initial=initial), "scatter", data)
        check(lambda d: torch.segment_reduce(d, reduce, offsets=offsets, axis=axis, initial=initial), "scatter", data)
        check(lambda d, ln: torch.segment_reduce(d, reduce, lengths=ln, axis=axis, initial=initial), "scatter",
              data, lens)


def test_segment_reduce_leaves_no_segment_op_and_refuses_indices() -> None:
    lens = torch.tensor([2, 0, 3])
    check(lambda d: torch.segment_reduce(d, "max", lengths=lens), "scatter", randn(5, 4, seed=12), graphs=True)
    with pytest.raises(RewriteNotApplicable, match="indices"):
        rewrites.apply(Fn(lambda d: torch.segment_reduce(d, "sum", indices=lens)), ["scatter"])(randn(5))
