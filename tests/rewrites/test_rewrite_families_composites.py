"""The linalg family's composites (buildsys/rewrites/composites.py): linalg.tensorinv, linalg.tensorsolve (with
dims), linalg.matrix_power / torch.matrix_power / Tensor.matrix_power of every sign, against torch in float32 and
float64; the ops, and the LAPACK call torch hides inside them, gone from every graph; through the legacy ONNX exporter
(which refuses tensorinv) into onnxruntime; torch's own errors kept."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from buildsys import rewrites
from tests.helpers.rewrite_checks import assert_equivalent, check, graph_ops
from tests.helpers.rewrite_ops import Fn
from tests.rewrites.test_rewrite_families_linalg import REL, general

DTYPES = [torch.float32, torch.float64]
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=str)


@dtypes
@pytest.mark.parametrize("shape, ind", [((6, 2, 3), 1), ((2, 3, 6), 2), ((2, 2, 4), 2), ((4, 2, 2), 1), ((3, 3), 1)],
                         ids=str)
def test_tensorinv_matches_torch(shape: tuple[int, ...], ind: int, dtype: torch.dtype) -> None:
    n = 1
    for s in shape[:ind]:
        n *= s
    a = general(n, (), dtype, seed=len(shape) + ind).reshape(shape)
    check(lambda t: torch.linalg.tensorinv(t, ind=ind), "linalg", a, rel=REL[dtype])


@dtypes
def test_tensorsolve_matches_torch(dtype: torch.dtype) -> None:
    a = general(6, (), dtype, seed=3).reshape(2, 3, 6)
    b = torch.randn(2, 3, generator=torch.Generator().manual_seed(4), dtype=dtype)
    check(torch.linalg.tensorsolve, "linalg", a, b, rel=REL[dtype])
    moved = general(6, (), dtype, seed=5).reshape(6, 2, 3)  # dims=(0,): A's first axis is the solution's
    check(lambda s, t: torch.linalg.tensorsolve(s, t, dims=(0,)), "linalg", moved, b, rel=REL[dtype])


@dtypes
@pytest.mark.parametrize("n", [-5, -2, -1, 0, 1, 2, 3, 4, 7])
def test_matrix_power_matches_torch(n: int, dtype: torch.dtype) -> None:
    a = general(4, (3,), dtype, seed=n + 10) * 0.9  # powers of a spectrum in [0.45, 1.8] stay in range
    rel = REL[dtype] * 10  # seven matmuls (and an inverse) compound the rounding
    check(lambda t: torch.linalg.matrix_power(t, n), "linalg", a, rel=rel)
    check(lambda t: torch.matrix_power(t, n), "linalg", a, rel=rel)
    check(lambda t: t.matrix_power(n), "linalg", a, rel=rel)


def test_matrix_power_of_integers_and_large_matrices_for_non_negative_powers() -> None:
    """Only the inverse needs a float matrix within the family's size; n ≥ 0 is matmuls."""
    ints = torch.randint(-3, 4, (2, 5, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(rewrites.apply(Fn(lambda t: torch.linalg.matrix_power(t, 3)), ["linalg"])(ints),
                       torch.linalg.matrix_power(ints, 3))
    check(lambda t: torch.matrix_power(t, 5), "linalg", general(20, (), torch.float64, seed=1), rel=1e-10)


def test_no_composite_op_is_left_in_any_graph() -> None:
    a, b = general(6, (), torch.float32, seed=3), torch.randn(6)
    check(lambda s, t: torch.linalg.tensorinv(s.reshape(2, 3, 6), ind=2).sum()
          + torch.linalg.tensorsolve(s.reshape(2, 3, 6), t.reshape(2, 3)).sum()
          + torch.linalg.matrix_power(s, -3).sum(), "linalg", a, b, graphs=True)
    ops = graph_ops(rewrites.apply(Fn(lambda s: torch.linalg.tensorinv(s.reshape(2, 3, 6))), ["linalg"]), (a,))
    assert not {"linalg_inv_ex", "linalg_inv", "inverse"} & (ops["exported"] | ops["decomposed"])


def test_torchs_errors_stay_torchs() -> None:
    with pytest.raises(RuntimeError, match="prod"):
        rewrites.apply(Fn(lambda t: torch.linalg.tensorinv(t, ind=1)), ["linalg"])(torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="square matrices"):
        rewrites.apply(Fn(lambda t: torch.linalg.matrix_power(t, 2)), ["linalg"])(torch.ones(2, 3))


@dtypes
def test_the_composites_run_in_onnxruntime(dtype: torch.dtype) -> None:
    """The legacy exporter (opset 18) refuses tensorinv; rewritten, all three export and compute torch's values."""
    import onnxruntime

    a, b = general(6, (), dtype, seed=8), torch.randn(6, generator=torch.Generator().manual_seed(9), dtype=dtype)
    for fn in (lambda s, t: torch.linalg.tensorinv(s.reshape(3, 2, 6), ind=2),
               lambda s, t: torch.linalg.tensorsolve(s.reshape(2, 3, 6), t.reshape(2, 3)),
               lambda s, t: torch.linalg.matrix_power(s, -2) + t.sum()):
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(rewrites.apply(Fn(fn), ["linalg"]), (a, b), f, dynamo=False, opset_version=18)
        session = onnxruntime.InferenceSession(f.getvalue())
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, {name: value.numpy() for name, value in zip(names, (a, b))})[0]
        assert_equivalent(torch.from_numpy(got), fn(a, b), REL[dtype] * 10)
