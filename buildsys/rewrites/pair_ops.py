"""Complex ops on real pairs beyond pair.py's core: einsum, where, masked_fill, sin/cos/sgn, like-factories
(zeros_like, empty_like, ones_like, full_like).

Each takes the torch function's own arguments and computes the complex result from real ops on the
parts; pair.py registers them when it first dispatches. einsum of k complex operands is the sum over
which operands contribute their imaginary part (i^m, m of them), 2^k real einsums: exact, and cheap
for the two or three operands models use.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch

from buildsys.rewrites.base import RewriteNotApplicable
from buildsys.rewrites.mechanism import call
from buildsys.rewrites.pair import ComplexPair, Operand, pair, parts, register


def einsum(equation: str, *operands: Operand | Sequence[Operand]) -> ComplexPair:
    """torch.einsum on pairs and real tensors: Σ over the operands' real/imaginary choices of i^m · einsum."""
    ops: Sequence[Operand] = operands[0] if len(operands) == 1 and isinstance(operands[0], (list, tuple)) \
        else operands  # type: ignore[assignment]
    split = [parts(op) for op in ops]
    if any(not isinstance(real, torch.Tensor) or isinstance(imag, float) for real, imag in split):
        raise RewriteNotApplicable("complex", "torch.einsum", "an operand that is a Python number")
    real_sum: torch.Tensor | None = None
    imag_sum: torch.Tensor | None = None
    for choice in itertools.product((0, 1), repeat=len(split)):
        picked = [real if c == 0 else imag for (real, imag), c in zip(split, choice)]
        if any(p is None for p in picked):
            continue  # a real operand has no imaginary part
        term = call(torch.einsum, equation, *picked)
        assert isinstance(term, torch.Tensor)
        power = sum(choice) % 4  # i^m: 1, i, -1, -i
        if power in (0, 2):
            real_sum = (term if power == 0 else -term) if real_sum is None else \
                (real_sum + term if power == 0 else real_sum - term)
        else:
            imag_sum = (term if power == 1 else -term) if imag_sum is None else \
                (imag_sum + term if power == 1 else imag_sum - term)
    return pair(real_sum, imag_sum)


def where(condition: torch.Tensor, input: Operand, other: Operand, *, out: object = None) -> ComplexPair:
    if out is not None:
        raise RewriteNotApplicable("complex", "torch.where", "the out= argument")
    (ar, ai), (br, bi) = parts(input), parts(other)
    real = torch.where(condition, ar, br)
    imag = torch.where(condition, 0.0 if ai is None else ai, 0.0 if bi is None else bi)
    return ComplexPair(real, imag)


def masked_fill(a: ComplexPair, mask: torch.Tensor, value: Operand) -> ComplexPair:
    real, imag = parts(value)
    return ComplexPair(a.real.masked_fill(mask, real), a.imag.masked_fill(mask, 0.0 if imag is None else imag))


def sin(a: ComplexPair) -> ComplexPair:
    # sin(x + iy) = sin x cosh y + i cos x sinh y
    return ComplexPair(torch.sin(a.real) * torch.cosh(a.imag), torch.cos(a.real) * torch.sinh(a.imag))


def cos(a: ComplexPair) -> ComplexPair:
    # cos(x + iy) = cos x cosh y − i sin x sinh y
    return ComplexPair(torch.cos(a.real) * torch.cosh(a.imag), -torch.sin(a.real) * torch.sinh(a.imag))


def sgn(a: ComplexPair) -> ComplexPair:
    """z / |z|, and 0 where z is 0 (torch.sgn)."""
    magnitude = torch.sqrt(a.real * a.real + a.imag * a.imag)
    safe = torch.where(magnitude == 0, torch.ones_like(magnitude), magnitude)
    return ComplexPair(a.real / safe, a.imag / safe)


def zeros_like(a: ComplexPair, **kwargs: object) -> ComplexPair | torch.Tensor:
    """zeros_like / empty_like of a pair: a pair of zeros (empty is zeros, as a graph constant is); a real dtype
    asked for gives a real tensor, as torch does."""
    dtype = kwargs.get("dtype")
    if dtype is not None and not dtype.is_complex:  # type: ignore[attr-defined]
        return torch.zeros_like(a.real, dtype=dtype)  # type: ignore[arg-type]
    return ComplexPair(torch.zeros_like(a.real), torch.zeros_like(a.imag))


def ones_like(a: ComplexPair, **kwargs: object) -> ComplexPair | torch.Tensor:
    dtype = kwargs.get("dtype")
    if dtype is not None and not dtype.is_complex:  # type: ignore[attr-defined]
        return torch.ones_like(a.real, dtype=dtype)  # type: ignore[arg-type]
    return ComplexPair(torch.ones_like(a.real), torch.zeros_like(a.imag))


def full_like(a: ComplexPair, fill_value: complex | float, **kwargs: object) -> ComplexPair:
    value = complex(fill_value)
    return ComplexPair(torch.full_like(a.real, value.real), torch.full_like(a.imag, value.imag))


for _func, _impl in ((torch.einsum, einsum), (torch.where, where), (torch.Tensor.where, lambda a, c, o: where(c, a, o)),
                     (torch.masked_fill, masked_fill), (torch.Tensor.masked_fill, masked_fill),
                     (torch.sin, sin), (torch.Tensor.sin, sin), (torch.cos, cos), (torch.Tensor.cos, cos),
                     (torch.sgn, sgn), (torch.Tensor.sgn, sgn), (torch.ones_like, ones_like),
                     (torch.zeros_like, zeros_like), (torch.empty_like, zeros_like),
                     (torch.full_like, full_like)):
    register(_func, _impl)
