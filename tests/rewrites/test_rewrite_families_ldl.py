"""LDLᵀ with Bunch-Kaufman pivoting (buildsys/rewrites/ldl.py, the linalg family) against torch (LAPACK's dsytrf and
dsytrs) in float32 and float64: random symmetric matrices of every size to 8, indefinite ones with small diagonals
(2 × 2 pivots), batches, pivots equal to LAPACK's exactly, LD to rounding, info of a singular matrix; ldl_solve from
torch's own factorisation and from the rewrite's; the ops gone from every graph; through the legacy ONNX exporter
(which refuses both) into onnxruntime."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from buildsys import rewrites
from tests.helpers.rewrite_checks import assert_equivalent, check
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]


def symmetric(n: int, seed: int, dtype: torch.dtype, batch: tuple[int, ...] = (), small_diagonal: bool = False
              ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
    A = A + A.transpose(-1, -2)
    if small_diagonal:  # Bunch-Kaufman then takes 2 × 2 pivots
        A.diagonal(dim1=-2, dim2=-1).mul_(0.01)
    return A.to(dtype)


def factorised(A: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(rewrites.apply(Fn(lambda a: tuple(torch.linalg.ldl_factor_ex(a))), ["linalg"])(A))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_factor_matches_lapack(dtype: torch.dtype) -> None:
    blocks = 0
    for seed in range(60):
        n = 1 + seed % 8
        A = symmetric(n, seed, dtype, small_diagonal=seed % 2 == 0)
        LD, pivots, info = factorised(A)
        want = torch.linalg.ldl_factor_ex(A)
        assert torch.equal(pivots, want.pivots), (seed, pivots, want.pivots)
        assert_equivalent(LD, want.LD, 1e-5 if dtype == torch.float32 else 1e-12)
        assert torch.equal(info, want.info)
        blocks += int((pivots < 0).sum())
    assert blocks > 20, "no 2 × 2 pivots were taken: the test proves little"


def test_batches_and_the_plain_form() -> None:
    A = symmetric(5, 3, torch.float64, batch=(2, 3), small_diagonal=True)
    got = rewrites.apply(Fn(lambda a: tuple(torch.linalg.ldl_factor(a))), ["linalg"])(A)
    want = torch.linalg.ldl_factor(A)
    assert torch.equal(got[1], want.pivots)
    assert_equivalent(got[0], want.LD, 1e-12)


def test_a_zero_column_is_reported_as_lapack_does() -> None:
    A = symmetric(4, 1, torch.float64)
    A[..., 2, :] = 0
    A[..., :, 2] = 0
    LD, pivots, info = factorised(A)
    want = torch.linalg.ldl_factor_ex(A)
    assert int(info) == int(want.info) > 0 and torch.equal(pivots, want.pivots)
    assert_equivalent(LD, want.LD, 1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_solve_matches_lapack(dtype: torch.dtype) -> None:
    for seed in range(24):
        n = 1 + seed % 8
        A = symmetric(n, seed, dtype, small_diagonal=seed % 2 == 1)
        B = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed + 100), dtype=dtype)
        LD, pivots = torch.linalg.ldl_factor(A)
        got = rewrites.apply(Fn(lambda ld, b: torch.linalg.ldl_solve(ld, pivots, b)), ["linalg"])(LD, B)
        assert_equivalent(got, torch.linalg.ldl_solve(LD, pivots, B), 1e-4 if dtype == torch.float32 else 1e-10)
        whole = rewrites.apply(Fn(lambda a, b: torch.linalg.ldl_solve(*torch.linalg.ldl_factor(a), b)), ["linalg"])
        assert_equivalent(whole(A, B), torch.linalg.solve(A, B), 1e-3 if dtype == torch.float32 else 1e-9)


def test_no_ldl_op_is_left_in_any_graph() -> None:
    A, B = symmetric(4, 2, torch.float32, small_diagonal=True), torch.randn(4, 2)
    check(lambda a, b: torch.linalg.ldl_solve(*torch.linalg.ldl_factor(a), b) + torch.linalg.ldl_factor_ex(a).LD.sum(),
          "linalg", A, B, rel=1e-3, graphs=True)


def test_runs_in_onnxruntime() -> None:
    import onnxruntime

    A, B = symmetric(6, 5, torch.float32, small_diagonal=True), torch.randn(6, 2)
    fn = lambda a, b: torch.linalg.ldl_solve(*torch.linalg.ldl_factor(a), b)  # noqa: E731
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rewrites.apply(Fn(fn), ["linalg"]), (A, B), f, dynamo=False, opset_version=18)
    session = onnxruntime.InferenceSession(f.getvalue())
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (A.numpy(), B.numpy()))))[0]
    assert_equivalent(torch.from_numpy(got), fn(A, B), 1e-4)
