"""Tensors of rank over a runtime's limit, folded away: window partitions at every rank a runtime holds.

Window attention partitions a feature map with a reshape to rank 6 (Swin's [B, H/w, w, W/w, w, C]) or 8 (video Swin's
[B, D/d, d, H/h, h, W/w, w, C]), a transpose and a reshape back, and runtimes hold tensors up to a rank: Core ML 5,
XNNPACK 6 (ExecuTorch's delegate and TFLite's: a higher-rank tensor fails when the runtime prepares the graph, not
when it converts). The axes the transpose keeps adjacent and in order are one axis: with each such run multiplied into
one size, the same transpose moves the same elements over fewer axes (Swin's becomes [B·H/w, w, W/w, w·C], rank 4;
video Swin's rank 6). Where that is still over the limit, the transpose is written as one rank-4 reshape and swap per
axis (coremltools' own expansion). A size that is dynamic (a batch) is one -1 of each reshape, so a chain is folded
only where its dynamic sizes fall in one run of axes; the element order at the chain's end is the original's, so its
closing reshape is unchanged.

`steps` is the plan, shared by the Core ML pass (formats/coreml/high_rank.py) and `folded_ranks`, which rewrites a
torch.export program's graph for the converters that take one (ExecuTorch, litert-torch). Worker side: torch is
imported inside the functions.
"""

from __future__ import annotations

from math import prod
from typing import Any, Callable, Sequence

#: XNNPACK's highest tensor rank (XNN_MAX_TENSOR_DIMS), for ExecuTorch's delegate and TFLite's.
XNNPACK_RANK = 6


def groups(perm: Sequence[int]) -> list[list[int]]:
    """The input axes of `perm` in runs that stay adjacent and in order in its output, in output order:
    [0, 1, 3, 2, 4, 5] → [[0, 1], [3], [2], [4, 5]]."""
    runs: list[list[int]] = []
    for axis in perm:
        if runs and axis == runs[-1][-1] + 1:
            runs[-1].append(axis)
        else:
            runs.append([axis])
    return runs


def folded(shape: Sequence[Any], perm: Sequence[int]) -> tuple[list[Any], list[int]]:
    """The same transpose over fewer axes: each run of `groups(perm)` one axis, in input order (its size the product
    of the run's sizes, dynamic where one of them is), and the perm over them."""
    runs = sorted(groups(perm))
    sizes = [prod(shape[a] for a in run) for run in runs]
    starts = [run[0] for run in runs]
    return sizes, [starts.index(run[0]) for run in groups(perm)]


def _as_shape(sizes: Sequence[Any], dynamic: Callable[[Any], bool]) -> list[int] | None:
    """`sizes` as a reshape's shape, the one dynamic entry -1; None where more than one is dynamic."""
    if sum(1 for n in sizes if dynamic(n)) > 1:
        return None
    return [-1 if dynamic(n) else int(n) for n in sizes]


def steps(shape: Sequence[Any], perm: Sequence[int], limit: int,
          dynamic: Callable[[Any], bool]) -> list[tuple[list[int], list[int]]] | None:
    """The transpose of a tensor of `shape` (rank over `limit`) by `perm` as (reshape, permute) pairs, every tensor
    of rank ≤ `limit` (at least 4) and every reshape with at most one dynamic size; None where that cannot be written."""
    sizes, order = folded(shape, perm)
    if len(sizes) <= limit:
        flat = _as_shape(sizes, dynamic)
        return None if flat is None else [(flat, order)]
    plan, moved, lead = [], set(), 1
    for axis in order:  # move the output's axes to the front one at a time: a rank-4 reshape and a middle swap each
        before = prod(sizes[a] for a in range(axis) if a not in moved)
        after = prod(sizes[a] for a in range(axis + 1, len(sizes)) if a not in moved)
        flat = _as_shape([lead, before, sizes[axis], after], dynamic)
        if flat is None:
            return None
        plan.append((flat, [0, 2, 1, 3]))
        moved.add(axis)
        lead = lead * sizes[axis]
    return plan


def folded_ranks(graph_module: Any, limit: int = XNNPACK_RANK) -> int:
    """`graph_module` (an unlifted torch.export program, in place) with each reshape to a rank over `limit` that only a
    permute reads, which reaches a reshape of rank ≤ `limit` (through copies), written as `steps`; how many."""
    import torch

    aten = torch.ops.aten
    views = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
    copies = {aten.clone.default, aten.contiguous.default}
    graph, done = graph_module.graph, 0
    for node in list(graph.nodes):
        value = node.meta.get("val") if node.op == "call_function" and node.target in views else None
        if value is None or value.dim() <= limit or len(node.users) != 1:
            continue
        (permute,) = node.users
        if permute.target is not aten.permute.default:
            continue
        end = permute
        while len(end.users) == 1 and next(iter(end.users)).target in copies:
            end = next(iter(end.users))
        copied = end is not permute
        closing = next(iter(end.users)) if len(end.users) == 1 else None
        out = closing.meta.get("val") if closing is not None and closing.target in views else None
        if closing is None or out is None or out.dim() > limit:
            continue
        plan = steps(list(value.shape), [int(p) % value.dim() for p in permute.args[1]], limit,
                     lambda n: not isinstance(n, int))
        if plan is None:
            continue
        with graph.inserting_before(permute):
            x = node.args[0]
            for shape, order in plan:
                x = graph.call_function(aten.reshape.default, (x, shape))
                x = graph.call_function(aten.permute.default, (x, order))
        permute.replace_all_uses_with(x)
        graph.erase_node(permute)
        graph.erase_node(node)
        if not copied:  # the original's view read a permute whose strides allowed it; this one's may not
            closing.target = aten.reshape.default
        done += 1
    if done:
        graph.lint()
        graph_module.recompile()
    return done
