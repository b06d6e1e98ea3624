"""The floating-point family (buildsys/rewrites/floating.py): fmax / fmin, copysign, signbit, nextafter, frexp,
ldexp, heaviside, float_power, logaddexp / logaddexp2, erfcx, ndtr, log_ndtr, entr, sinc, xlog1py, compared with
torch in float32 and float64 (functions, Tensor methods, in-place forms; the IEEE operations bit for bit, ±0, ±inf
and NaN included), gone from every graph, and through the legacy ONNX exporter into onnxruntime."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from buildsys import rewrites
from tests.helpers.rewrite_checks import assert_equivalent, check, graph_ops, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
BITS = {torch.float32: torch.int32, torch.float64: torch.int64}
S = torch.special


def specials(dtype: torch.dtype) -> torch.Tensor:
    """±0, ±inf, a quiet NaN, powers of two and their neighbours, the smallest normal and subnormal, the largest."""
    info = torch.finfo(dtype)
    return torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1.0, -1.0, 2.0, 0.5, 0.75, -3.0, 1024.0,
                         1.0 - info.eps / 2, 1.0 + info.eps, info.tiny, -info.tiny, info.tiny * info.eps,
                         -info.tiny * info.eps, info.tiny / 3, info.max, -info.max], dtype=dtype)


def spread(count: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Values of every magnitude: random bit patterns (NaNs dropped: a NaN's sign and payload are not compared)."""
    bits = BITS[dtype]
    values = torch.randint(torch.iinfo(bits).min, torch.iinfo(bits).max, (count,), dtype=bits,
                           generator=torch.Generator().manual_seed(seed)).view(dtype)
    return values[~values.isnan()]


def rewritten(fn: Callable[..., Any], *args: object) -> Any:
    return rewrites.apply(Fn(fn), ["floating"])(*args)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit where torch's result is a number (−0 is not 0); NaN where torch's is NaN."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    number = ~want.isnan()
    assert torch.equal(got[number].view(BITS[got.dtype]), want[number].view(BITS[want.dtype]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ieee_operations_are_bit_exact(dtype: torch.dtype) -> None:
    a = torch.cat([specials(dtype), spread(3000, dtype)])
    b = torch.cat([specials(dtype).flip(0), spread(3000, dtype, seed=1)])
    a, b = a[:min(len(a), len(b))], b[:min(len(a), len(b))]
    for fn in (torch.fmax, torch.fmin, torch.copysign, torch.nextafter, lambda s, t: s.fmax(t),
               lambda s, t: s.fmin(t), lambda s, t: s.copysign(t), lambda s, t: s.nextafter(t),
               lambda s, t: s.clone().copysign_(t), lambda s, t: s.clone().nextafter_(t)):
        assert_same_bits(rewritten(fn, a, b), fn(a, b))
    for towards in (math.inf, -math.inf, 0.0):
        target = torch.full_like(a, towards)
        assert_same_bits(rewritten(torch.nextafter, a, target), torch.nextafter(a, target))
    for number in (-0.0, 0.0, -2.5, 3):
        assert_same_bits(rewritten(lambda t: torch.copysign(t, number), a), torch.copysign(a, number))
    mantissa, exponent = rewritten(torch.frexp, a)
    assert_same_bits(mantissa, torch.frexp(a).mantissa)
    assert exponent.dtype == torch.int32 and torch.equal(exponent, torch.frexp(a).exponent)
    assert torch.equal(rewritten(lambda t: t.frexp()[1], a), a.frexp()[1])
    signbits: tuple[Callable[..., torch.Tensor], ...] = (torch.signbit, lambda t: t.signbit())
    for fn in signbits:
        got = rewritten(fn, a)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.bool and torch.equal(got, fn(a))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_sign_of_zero_counts(dtype: torch.dtype) -> None:
    zeros = torch.tensor([0.0, -0.0, 0.0, -0.0], dtype=dtype)
    signs = torch.tensor([-0.0, 0.0, -1.0, 1.0], dtype=dtype)
    assert torch.equal(rewritten(torch.signbit, zeros), torch.tensor([False, True, False, True]))
    assert_same_bits(rewritten(torch.copysign, torch.ones_like(zeros), signs),
                     torch.tensor([-1.0, 1, -1, 1], dtype=dtype))
    assert_same_bits(rewritten(torch.fmax, zeros, signs), torch.fmax(zeros, signs))
    assert_same_bits(rewritten(torch.nextafter, zeros, signs), torch.nextafter(zeros, signs))
    # a NaN's sign bit is not read: positive (torch reads it: a NaN made by 0/0 on x86 is negative)
    assert torch.equal(rewritten(torch.copysign, torch.ones(1, dtype=dtype), torch.tensor([math.nan], dtype=dtype)),
                       torch.ones(1, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(300,), (4, 7, 9)])
def test_elementary_members_match_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    a, b = randn(*shape, dtype=dtype) * 4, randn(shape[-1], seed=1, dtype=dtype) * 4  # b broadcast
    check(torch.ldexp, "floating", a, b.round())
    check(lambda s, t: s.ldexp(t), "floating", a, b.round())
    check(lambda s, t: s.clone().ldexp_(t), "floating", a, b.round())
    with_zeros = torch.where(a.abs() < 1, torch.zeros_like(a), a)
    check(torch.heaviside, "floating", with_zeros, b)
    check(lambda s, t: s.clone().heaviside_(t), "floating", with_zeros, b)
    check(torch.float_power, "floating", a.abs(), b)
    check(lambda t: torch.float_power(t, 3), "floating", a)
    check(lambda t: torch.float_power(2, t), "floating", b)
    check(lambda t: t.double().float_power_(-1.5), "floating", a.abs() + 0.1)
    for fn in (torch.logaddexp, torch.logaddexp2, lambda s, t: s.logaddexp2(t)):
        check(fn, "floating", a * 20, b * 20)
    edges = torch.tensor([math.inf, -math.inf, math.inf, math.nan, 1.0, -math.inf, 0.0], dtype=dtype)
    for fn in (torch.logaddexp, torch.logaddexp2):
        check(fn, "floating", edges, edges.roll(1))
        check(fn, "floating", edges, edges)
    ints = torch.arange(-3, 4)
    check(torch.copysign, "floating", ints, -ints)  # integers: promoted to float, as torch does


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_error_function_relatives_match_torch(dtype: torch.dtype) -> None:
    wide = torch.cat([torch.linspace(-30, 30, 2001, dtype=dtype), torch.logspace(0, 12, 50, dtype=dtype),
                      torch.tensor([0.0, -0.0, 0.46875, 4.0, 50.0, -26.7, math.inf, -math.inf, math.nan], dtype=dtype)])
    check(S.erfcx, "floating", wide)
    check(S.ndtr, "floating", wide)
    for part in (wide[wide < -1], wide[wide >= -1]):  # both branches of log_ndtr, each on its own scale
        check(S.log_ndtr, "floating", part)
    check(S.log_ndtr, "floating", torch.linspace(-1000, 10, 301, dtype=dtype))
    positive = torch.cat([wide.abs(), torch.tensor([1e-30, 1.0, -1.0, -0.5], dtype=dtype)])
    check(S.entr, "floating", positive)
    for fn in (torch.sinc, S.sinc, lambda t: t.sinc(), lambda t: t.clone().sinc_()):
        check(fn, "floating", wide[:2001] / 7)
    check(torch.sinc, "floating", torch.tensor([0.0, -0.0, 1.0, 2.0, math.inf, math.nan, 1e-20], dtype=dtype))
    x, y = randn(6, 40, dtype=dtype) * 3, randn(40, seed=1, dtype=dtype).abs() * 3 - 0.9
    x = torch.where(x.abs() < 0.5, torch.zeros_like(x), x)
    check(S.xlog1py, "floating", x, y)
    check(lambda t: S.xlog1py(t, 2.0), "floating", x)
    check(lambda t: S.xlog1py(2, t), "floating", y)
    y_edges = torch.tensor([math.nan, -1.0, -1.0, math.inf, 1e-10, 0.0], dtype=dtype)
    check(S.xlog1py, "floating", torch.tensor([0.0, 0.0, 1.0, 0.0, 3.0, 2.0], dtype=dtype), y_edges)
    check(S.entr, "floating", torch.arange(-2, 5))  # integers promoted


def terms(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    """Every function of the family (in a's dtype); the first ten are IEEE operations, exact."""
    mantissa, exponent = torch.frexp(a)
    exact = [torch.fmax(a, b), torch.fmin(a, b), torch.copysign(a, b), torch.signbit(a), torch.nextafter(a, b),
             mantissa, exponent, torch.ldexp(a, b.round()), torch.heaviside(a, b), torch.nextafter(b, b * 0)]
    rest = [torch.logaddexp(a, b), torch.logaddexp2(a, b), S.erfcx(a), S.ndtr(a), S.log_ndtr(a), S.entr(b.abs()),
            torch.sinc(a), S.sinc(b), S.xlog1py(a, b.abs()), torch.float_power(a.abs(), 2)]
    return [t.to(a.dtype) for t in exact + rest]


def test_no_floating_op_is_left_in_any_graph() -> None:
    a, b = randn(4, 5), randn(4, 5, seed=1)
    everything = Fn(lambda s, t: torch.stack(terms(s, t)).sum(0))
    removed = {o.split("::")[1] for o in rewrites.get("floating").removes}
    before = graph_ops(everything, (a, b))
    assert removed - {"special_sinc"} <= before["traced"]  # torch.special.sinc traces as sinc
    after = graph_ops(rewrites.apply(everything, ["floating"]), (a, b))
    for kind in ("traced", "exported", "decomposed"):
        assert not removed & after[kind], f"{kind} graph still has {removed & after[kind]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_rewritten_ops_run_in_onnxruntime(dtype: torch.dtype, tmp_path: Path) -> None:
    """Legacy exporter (opset 18), which refuses every one of these ops, then onnxruntime: torch's values (the IEEE
    operations bit for bit)."""
    import onnxruntime

    a = torch.cat([specials(dtype), randn(43, dtype=dtype) * 3]).reshape(8, 8)
    b = torch.cat([specials(dtype).flip(0), randn(43, seed=1, dtype=dtype) * 3]).reshape(8, 8)
    model = Fn(lambda s, t: torch.stack(terms(s, t)))
    path = tmp_path / "floating.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rewrites.apply(model, ["floating"]), (a, b), path, dynamo=False, opset_version=18)
    session = onnxruntime.InferenceSession(str(path))
    (got,) = session.run(None, {i.name: v.numpy() for i, v in zip(session.get_inputs(), (a, b))})
    want = model(a, b)
    for k, (row, expected) in enumerate(zip(torch.from_numpy(got), want)):
        if k < 10:
            assert_same_bits(row, expected)
        else:
            assert_equivalent(row, expected)


def test_refusals_of_the_ops_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("Exporting the operator 'aten::fmax' to ONNX opset version 18 is not supported",
                 "Exporting the operator 'aten::special_erfcx' to ONNX opset version 18 is not supported",
                 "Operator torch._ops.aten.nextafter.default is not in Core ATen opset",
                 "Core ML cannot convert the PyTorch op 'copysign' (coremltools has no conversion for it)"):
        assert [r.name for r in for_refusal(text)][:1] == ["floating"], text
