"""The real-matrix check and the Jacobi rotations of the linear-algebra family: what linalg.py's symmetric eigensolver (two-sided, on A) and
singular.py's SVD (one-sided, on A's columns) share.

A sweep visits every pair (p, q) once in round-robin rounds of disjoint pairs; a round's rotations are one
orthogonal matrix J, built as matmuls of the per-pair (cos, sin) with constant masks, so a round is a few matmuls
and no data-dependent indexing. Each rotation zeroes the off-diagonal entry of its pair's symmetric 2 × 2 block
[[a_pp, a_pq], [a_pq, a_qq]]: t = tan θ = sgn(d)·2a_pq / (|d| + √(d² + 4a_pq²)), d = a_qq − a_pp, the smaller of
the two angles (Golub & Van Loan's symmetric Schur decomposition).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

#: The largest n the family unrolls (Gauss-Jordan: n steps of O(n²); Jacobi: ~SWEEPS·n rounds of n³ matmuls).
MAX_SIZE = 16
#: Jacobi sweeps at most (n > 8): quadratic convergence takes float32 and float64 to rounding for n ≤ 16 within 10.
SWEEPS = 10


def sweeps(n: int) -> int:
    """The sweeps an n-column Jacobi runs: measured on random, graded (σ over 6 decades), clustered and low-rank
    matrices, float32 and float64, both variants reach their final accuracy within 5 sweeps for n ≤ 5 and 7 for
    n ≤ 8; one more each for margin (a sweep squares the error), SWEEPS above (the graph grows with the sweeps)."""
    return 6 if n <= 5 else 8 if n <= 8 else SWEEPS


def eye(n: int) -> list[list[float]]:
    return [[float(i == j) for j in range(n)] for i in range(n)]  # not np.eye: TorchDynamo would trace it to torch


def rounds(n: int) -> list[list[tuple[int, int]]]:
    """The round-robin schedule: every pair (p < q) of range(n) once, in rounds of disjoint pairs."""
    players = list(range(n)) + ([-1] if n % 2 else [])  # -1: the bye
    m = len(players)
    out = []
    for _ in range(m - 1):
        pairs = [(players[i], players[m - 1 - i]) for i in range(m // 2)]
        out.append([(min(p, q), max(p, q)) for p, q in pairs if p >= 0 and q >= 0])
        players = [players[0], players[-1], *players[1:-1]]
    return out


class Round(NamedTuple):
    """One round's disjoint pairs and the constant masks its J is made of: c at (p, p) and (q, q), s at (p, q),
    −s at (q, p) (the cosines' rows, then the sines'), the identity elsewhere."""

    pairs: list[tuple[int, int]]
    masks: "torch.Tensor"  # [2 · pairs, n·n]: where each pair's c, then each pair's s, goes
    identity: "torch.Tensor"  # [n·n]: the identity off the pairs' rows and columns
    one: "torch.Tensor"  # [1]: 1 and −1, constants the rotation selects between
    minus_one: "torch.Tensor"


def schedule(n: int, dtype: "torch.dtype") -> list[Round]:
    """Every round of a sweep over n, with its masks."""
    import numpy as np

    from buildsys.rewrites.mechanism import constant

    out = []
    one, minus_one = constant(np.asarray([1.0]), dtype), constant(np.asarray([-1.0]), dtype)
    for pairs in rounds(n):
        m = len(pairs)
        masks, rest = np.zeros((2 * m, n * n)), np.asarray(eye(n)).flatten()
        for i, (p, q) in enumerate(pairs):
            masks[i, p * n + p] = masks[i, q * n + q] = 1.0
            masks[m + i, p * n + q], masks[m + i, q * n + p] = 1.0, -1.0
            rest[p * n + p] = rest[q * n + q] = 0.0
        out.append(Round(pairs, constant(masks, dtype), constant(rest, dtype), one, minus_one))
    return out


def rotation(step: Round, app: "torch.Tensor", aqq: "torch.Tensor", apq: "torch.Tensor", n: int) -> "torch.Tensor":
    """J [..., n, n] of the round `step` whose pairs' 2 × 2 blocks are (app, aqq, apq) [..., pairs].

    Written in few ops (the graph holds one of these per round, sweeps · n of them): the sign of d (+1 at 0) and
    the guard of a zero denominator (both terms are 0 only where a_pq is: t = 0) select the round's constants, one
    matmul places the cosines and sines together."""
    import torch

    diff = aqq - app
    twice = apq + apq
    denominator = diff.abs() + torch.sqrt(diff * diff + twice * twice)
    direction = torch.where(diff >= 0, step.one, step.minus_one)
    t = direction * twice / torch.where(denominator == 0, step.one, denominator)
    c = torch.rsqrt(t * t + 1.0)
    return (torch.matmul(torch.cat([c, t * c], dim=-1), step.masks) + step.identity).unflatten(-1, (n, n))


def ascending(w: "torch.Tensor", n: int) -> "torch.Tensor":
    """The one-hot permutation [..., n, n] (row i: the place of w[i]) that sorts w ascending, ties by position."""
    import numpy as np
    import torch

    from buildsys.rewrites.mechanism import constant

    mine, other = w.unsqueeze(-1), w.unsqueeze(-2)
    # Python lists, not np.arange: TorchDynamo (torch.export strict=True) would trace it to an arange in the graph
    before = constant(np.asarray([[j < i for j in range(n)] for i in range(n)]))
    rank = torch.logical_or(other < mine, torch.logical_and(other == mine, before)).to(torch.int64).sum(-1)
    return (rank.unsqueeze(-1) == constant(np.asarray(list(range(n)), dtype=np.int64))).to(w.dtype)


def real_matrix(A: "torch.Tensor", op: str, name: str = "A") -> tuple[int, int]:
    """(rows, columns) of A [..., m, n], static; refused where A is not a real tensor, rejected as torch would where
    it has fewer than 2 dimensions."""
    import torch

    from buildsys.rewrites.base import RewriteNotApplicable
    from buildsys.rewrites.mechanism import static_size

    if not isinstance(A, torch.Tensor):
        raise RewriteNotApplicable("linalg", op, f"{name} is not a tensor ({type(A).__name__})")
    if A.is_complex():
        raise RewriteNotApplicable("linalg", op, f"a complex {name} ({A.dtype}): only real matrices are rewritten")
    if A.dim() < 2:
        raise RuntimeError(f"{op}: The input tensor {name} must have at least 2 dimensions.")
    return static_size(A, -2, "linalg", op), static_size(A, -1, "linalg", op)
