"""The linear-algebra family (buildsys/rewrites/linalg.py): inv / inverse / inv_ex, det / slogdet / logdet,
solve / solve_ex, cholesky / cholesky_ex, eigh / eigvalsh, svdvals and svd on well-conditioned matrices of sizes 1 to 8
(and 16, the largest it takes), batched or not, compared with torch in float32 and float64; the ops gone from every
graph; and its refusals (n > 16, a dynamic n, complex, out=) with their reasons."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import assert_equivalent, check, graph_ops, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
SIZES = [1, 2, 3, 5, 8]
BATCHES = [(), (3,), (2, 2)]
#: float32: Gauss-Jordan and Cholesky stay within ~1e-7 · max|want| on these conditions, Jacobi within ~2e-6
REL = {torch.float32: 1e-4, torch.float64: 1e-10}


def orthogonal(n: int, batch: tuple[int, ...], seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(*batch, n, n, seed=seed, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def spectrum(n: int, batch: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values in [0.5, 2]: condition numbers ≤ 4."""
    return torch.rand(*batch, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5 + 0.5


def general(n: int, batch: tuple[int, ...] = (), dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """U diag(s) Vᵀ with s in [0.5, 2]: well conditioned, not diagonally dominant (the pivoting swaps rows),
    determinants of either sign."""
    u, v, s = orthogonal(n, batch, seed), orthogonal(n, batch, seed + 1), spectrum(n, batch, seed + 2)
    return ((u * s.unsqueeze(-2)) @ v.transpose(-2, -1)).to(dtype)


def spd(n: int, batch: tuple[int, ...] = (), dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Q diag(s) Qᵀ with s in [0.5, 2]: symmetric positive definite."""
    q, s = orthogonal(n, batch, seed), spectrum(n, batch, seed + 2)
    a = (q * s.unsqueeze(-2)) @ q.transpose(-2, -1)
    return (0.5 * (a + a.transpose(-2, -1))).to(dtype)


def rewritten(fn: Callable[..., object]) -> torch.nn.Module:
    return rewrites.apply(Fn(fn), ["linalg"])  # type: ignore[arg-type]


cases = pytest.mark.parametrize("n", SIZES)
batches = pytest.mark.parametrize("batch", BATCHES, ids=str)
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=str)


@dtypes
@batches
@cases
def test_inverse_matches_torch(n: int, batch: tuple[int, ...], dtype: torch.dtype) -> None:
    a, rel = general(n, batch, dtype, seed=n), REL[dtype]
    check(torch.linalg.inv, "linalg", a, rel=rel)
    check(torch.inverse, "linalg", a, rel=rel)
    check(lambda t: t.inverse(), "linalg", a, rel=rel)
    check(lambda t: torch.linalg.inv_ex(t).inverse, "linalg", a, rel=rel)
    check(lambda t: torch.linalg.inv_ex(t)[1], "linalg", a)  # info: 0
    identity = torch.eye(n, dtype=dtype).expand_as(a)
    assert_equivalent(a @ rewritten(torch.linalg.inv)(a), identity, rel)


@dtypes
@batches
@cases
def test_determinants_match_torch(n: int, batch: tuple[int, ...], dtype: torch.dtype) -> None:
    a, positive, rel = general(n, batch, dtype, seed=n), spd(n, batch, dtype, seed=n), REL[dtype]
    for fn in (torch.linalg.det, torch.det, lambda t: t.det()):
        check(fn, "linalg", a, rel=rel)
    for slog in (torch.linalg.slogdet, torch.slogdet, lambda t: t.slogdet()):
        check(lambda t: slog(t)[0], "linalg", a)  # the sign, exactly
        check(lambda t: slog(t)[1], "linalg", a, rel=rel)
    check(lambda t: torch.linalg.slogdet(t).logabsdet, "linalg", a, rel=rel)
    check(torch.logdet, "linalg", positive, rel=rel)
    check(lambda t: t.logdet(), "linalg", positive, rel=rel)
    got, want = rewritten(torch.logdet)(a), torch.logdet(a)  # NaN where det < 0
    assert torch.equal(got.isnan(), want.isnan())
    assert_equivalent(got.nan_to_num(), want.nan_to_num(), rel)


@dtypes
@batches
@cases
def test_solve_matches_torch(n: int, batch: tuple[int, ...], dtype: torch.dtype) -> None:
    a, rel = general(n, batch, dtype, seed=n), REL[dtype]
    matrix, vectors = randn(*batch, n, 3, seed=1, dtype=dtype), randn(*batch, n, seed=2, dtype=dtype)
    check(torch.linalg.solve, "linalg", a, matrix, rel=rel)
    check(torch.linalg.solve, "linalg", a, vectors, rel=rel)  # a (batch of) vector(s)
    check(torch.linalg.solve, "linalg", a, randn(n, seed=3, dtype=dtype), rel=rel)  # one vector for every matrix
    check(torch.linalg.solve, "linalg", a, randn(4, *batch, n, 2, seed=4, dtype=dtype), rel=rel)  # broadcast
    check(torch.linalg.solve, "linalg", a[(0,) * len(batch)], matrix, rel=rel)
    check(lambda s, t: torch.linalg.solve(s, t, left=False), "linalg", a, matrix.transpose(-2, -1), rel=rel)
    check(lambda s, t: torch.linalg.solve_ex(s, t).result, "linalg", a, matrix, rel=rel)
    check(lambda s, t: torch.linalg.solve_ex(s, t, left=False)[1], "linalg", a, matrix.transpose(-2, -1))


@pytest.mark.filterwarnings("ignore:torch.cholesky is deprecated")
@dtypes
@batches
@cases
def test_cholesky_matches_torch(n: int, batch: tuple[int, ...], dtype: torch.dtype) -> None:
    a, rel = spd(n, batch, dtype, seed=n), REL[dtype]
    check(torch.linalg.cholesky, "linalg", a, rel=rel)
    check(lambda t: torch.linalg.cholesky(t, upper=True), "linalg", a, rel=rel)
    check(torch.cholesky, "linalg", a, rel=rel)
    check(lambda t: torch.cholesky(t, True), "linalg", a, rel=rel)
    check(lambda t: t.cholesky(upper=True), "linalg", a, rel=rel)
    check(lambda t: torch.linalg.cholesky_ex(t).L, "linalg", a, rel=rel)
    check(lambda t: torch.linalg.cholesky_ex(t, upper=True)[1], "linalg", a)  # info: 0
    # each reads one triangle only: the other may hold anything
    lower, upper = (torch.where(mask, a, a + 7.0) for mask in (torch.ones(n, n).tril() > 0, torch.ones(n, n).triu() > 0))
    check(torch.linalg.cholesky, "linalg", lower, rel=rel)
    check(lambda t: torch.linalg.cholesky(t, upper=True), "linalg", upper, rel=rel)


def assert_eigenpairs(a: torch.Tensor, w: torch.Tensor, v: torch.Tensor, rel: float) -> None:
    """A V = V diag(w) and Vᵀ V = I (the eigenvectors' signs are free)."""
    scale = a.double().abs().max().item()
    assert (a.double() @ v.double() - v.double() * w.double().unsqueeze(-2)).abs().max().item() <= rel * scale + 1e-6
    identity = torch.eye(a.shape[-1], dtype=torch.float64)
    assert (v.double().transpose(-2, -1) @ v.double() - identity).abs().max().item() <= rel + 1e-6


@dtypes
@batches
@cases
def test_symmetric_eigendecomposition_matches_torch(n: int, batch: tuple[int, ...], dtype: torch.dtype) -> None:
    a, rel = spd(n, batch, dtype, seed=n) * 2.0 - 2.5, REL[dtype]  # eigenvalues of both signs
    check(torch.linalg.eigvalsh, "linalg", a, rel=rel)
    check(lambda t: torch.linalg.eigh(t).eigenvalues, "linalg", a, rel=rel)
    w, v = rewritten(torch.linalg.eigh)(a)
    assert w.shape == (*batch, n) and v.shape == (*batch, n, n) and w.dtype == v.dtype == dtype
    assert_eigenpairs(a, w, v, rel)
    # UPLO: the other triangle may hold anything
    garbage = torch.where(torch.ones(n, n).triu() > 0, a, a - 5.0)
    check(lambda t: torch.linalg.eigvalsh(t, UPLO="U"), "linalg", garbage, rel=rel)
    w, v = rewritten(lambda t: torch.linalg.eigh(t, "U"))(garbage)
    assert_eigenpairs(a, w, v, rel)


def test_repeated_eigenvalues_and_diagonal_matrices() -> None:
    """Rotations with nothing to zero (a_pq = 0, a_pp = a_qq) are the identity; ties keep their order."""
    for a in (torch.eye(5) * 3.0, torch.diag(torch.tensor([2.0, -1.0, 2.0, 0.0, -1.0])), torch.ones(4, 4)):
        check(torch.linalg.eigvalsh, "linalg", a)
        w, v = rewritten(torch.linalg.eigh)(a)
        assert_eigenpairs(a, w, v, 1e-4)


@dtypes
@batches
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (8, 8), (6, 3), (2, 5)], ids=str)
def test_singular_values_match_torch(shape: tuple[int, int], batch: tuple[int, ...], dtype: torch.dtype) -> None:
    k = min(shape)
    left, right = orthogonal(shape[0], batch, 1)[..., :k], orthogonal(shape[1], batch, 2)[..., :k]
    a = ((left * spectrum(k, batch, 3).unsqueeze(-2)) @ right.transpose(-2, -1)).to(dtype)
    check(torch.linalg.svdvals, "linalg", a, rel=REL[dtype])


@dtypes
@pytest.mark.parametrize("batch", [(), (2,)], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (8, 8), (6, 3), (2, 5)], ids=str)
def test_singular_vectors_are_a_valid_svd(shape: tuple[int, int], batch: tuple[int, ...], dtype: torch.dtype) -> None:
    """Compared as PyTorch compares two SVDs (test_compare_cpu: the samples' output_process_fn_grad): S, |U|, |Vᴴ| and
    U Vᴴ, with U Σ Vᴴ = A; distinct singular values, so every vector is unique up to its sign."""
    k = min(shape)
    left, right = orthogonal(shape[0], batch, 4)[..., :k], orthogonal(shape[1], batch, 5)[..., :k]
    a, rel = ((left * spectrum(k, batch, 6).unsqueeze(-2)) @ right.transpose(-2, -1)).to(dtype), REL[dtype]
    full = shape[0] == shape[1]
    check(lambda t: torch.linalg.svd(t, full_matrices=full).S, "linalg", a, rel=rel)
    check(lambda t: torch.linalg.svd(t, full_matrices=full).U.abs(), "linalg", a, rel=rel)
    check(lambda t: torch.linalg.svd(t, full_matrices=False).Vh.abs(), "linalg", a, rel=rel)
    check(lambda t: (lambda u, s, vh: u @ vh)(*torch.linalg.svd(t, full_matrices=False)), "linalg", a, rel=rel)
    check(lambda t: torch.svd(t).V.abs(), "linalg", a, rel=rel)
    u, s, vh = rewritten(lambda t: torch.linalg.svd(t, full_matrices=False))(a)
    assert_equivalent((u * s.unsqueeze(-2)) @ vh, a, rel=rel)
    zeros = rewritten(lambda t: torch.svd(t, compute_uv=False))(a)
    assert [z.shape for z in zeros] == [z.shape for z in torch.svd(a, compute_uv=False)] and not zeros.U.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_largest_size_it_takes(dtype: torch.dtype) -> None:
    a, s, rel = general(16, (2,), dtype, seed=5), spd(16, (2,), dtype, seed=6), REL[dtype]
    check(torch.linalg.inv, "linalg", a, rel=rel)
    check(torch.linalg.det, "linalg", a, rel=rel)
    check(torch.linalg.solve, "linalg", a, randn(2, 16, 4, dtype=dtype), rel=rel)
    check(torch.linalg.cholesky, "linalg", s, rel=rel)
    check(torch.linalg.eigvalsh, "linalg", s, rel=rel)
    w, v = rewritten(torch.linalg.eigh)(s)
    assert_eigenpairs(s, w, v, rel)


def test_singular_inputs_as_lapack_reports_them() -> None:
    """det 0, slogdet (0, −inf) and inv_ex / cholesky_ex's info as torch's; inv of a singular matrix (torch
    raises) is not finite."""
    singular = torch.tensor([[[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]], [[0.0, 0.0, 0.0], [1.0, 2.0, 0.0],
                                                                                     [3.0, 1.0, 1.0]]])
    check(torch.linalg.det, "linalg", singular)
    assert torch.equal(rewritten(lambda t: torch.linalg.slogdet(t)[0])(singular), torch.zeros(2))
    assert torch.equal(rewritten(lambda t: torch.linalg.slogdet(t)[1])(singular), torch.full((2,), -torch.inf))
    check(lambda t: torch.linalg.inv_ex(t).info, "linalg", torch.cat([singular, torch.zeros(1, 3, 3),
                                                                      general(3, (1,))]))
    assert not rewritten(torch.linalg.inv)(singular).isfinite().all()
    not_definite = torch.stack([torch.diag(torch.tensor([1.0, 2.0, -1.0])), -torch.eye(3), spd(3), torch.zeros(3, 3)])
    check(lambda t: torch.linalg.cholesky_ex(t).info, "linalg", not_definite)


@pytest.mark.filterwarnings("ignore:torch.cholesky is deprecated")
def test_no_linalg_op_is_left_in_any_graph() -> None:
    a, s, b = general(3, (2,)), spd(3, (2,)), randn(2, 3, 2)
    check(torch.linalg.inv, "linalg", a, graphs=True)
    check(torch.inverse, "linalg", a, graphs=True)
    check(lambda t: torch.linalg.inv_ex(t)[0], "linalg", a, graphs=True)
    check(torch.linalg.det, "linalg", a, graphs=True)
    check(lambda t: torch.slogdet(t)[1] + torch.linalg.slogdet(t)[0], "linalg", a, graphs=True)
    check(torch.logdet, "linalg", s, graphs=True)
    check(torch.linalg.solve, "linalg", a, b, graphs=True)
    check(lambda t: torch.linalg.cholesky(t) + torch.cholesky(t, upper=True), "linalg", s, graphs=True)
    check(lambda t: torch.linalg.cholesky_ex(t)[0], "linalg", s, graphs=True)
    check(torch.linalg.eigvalsh, "linalg", s, graphs=True)
    check(lambda t: torch.linalg.eigh(t)[1].abs().sum(-1), "linalg", s, graphs=True)
    check(torch.linalg.svdvals, "linalg", a, graphs=True)
    check(lambda t: torch.linalg.svd(t)[0].abs() + torch.svd(t)[2].abs(), "linalg", a, graphs=True)


def test_strict_export_sees_the_rewrite() -> None:
    """TorchDynamo (torch.export strict=True) traces the NumPy-built constants as constants."""
    a, s = general(4, (2,)), spd(4, (2,))

    def model(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(t).sum(-1) + torch.linalg.eigvalsh(u) + torch.linalg.cholesky(u).sum(-2)

    program = torch.export.export(rewritten(model), (a, s), strict=True)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [op for op in ops if "linalg" in op or "cholesky" in op or "eye" in op or "tri" in op], ops
    assert_equivalent(program.module()(a, s), model(a, s))


def test_refusals_say_why() -> None:
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.inv: n = 17 is above 16"):
        rewritten(torch.linalg.inv)(torch.eye(17))
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.eigh: n = 32 is above 16"):
        rewritten(torch.linalg.eigh)(torch.eye(32))
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.det: a complex A \(torch.complex64\)"):
        rewritten(torch.linalg.det)(torch.eye(3, dtype=torch.complex64))
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.solve: a vector B with left=False"):
        rewritten(lambda s, t: torch.linalg.solve(s, t, left=False))(torch.eye(3), torch.ones(3))
    with pytest.raises(RewriteNotApplicable, match=r"full_matrices=True of a 4 × 2 matrix"):
        rewritten(torch.linalg.svd)(torch.ones(4, 2))
    with pytest.raises(RewriteNotApplicable, match=r"the out= argument"):
        rewritten(lambda t: torch.linalg.inv(t, out=torch.empty(3, 3)))(torch.eye(3))
    size = torch.export.Dim("n", min=2, max=8)
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.cholesky: dimension -2 is dynamic"):
        torch.export.export(rewritten(torch.linalg.cholesky), (spd(4, (2,)),), dynamic_shapes=(({1: size, 2: size},),),
                            strict=False)
    with pytest.raises(RuntimeError, match="square"):  # what torch says, not a refusal
        rewritten(torch.linalg.inv)(torch.ones(2, 3))
    for fn in (torch.linalg.inv, torch.linalg.det, torch.linalg.eigvalsh, torch.linalg.cholesky, torch.linalg.svdvals,
               torch.linalg.matrix_rank, torch.linalg.pinv, lambda t: torch.linalg.matrix_norm(t, 1)):
        with pytest.raises(RewriteNotApplicable, match=r"an empty 0 × 0 matrix"):
            rewritten(fn)(torch.zeros(2, 0, 0))


@pytest.mark.parametrize("shape", [(5, 0), (0, 5), (2, 0, 3), (0, 0)], ids=str)
def test_qr_of_an_empty_matrix(shape: tuple[int, ...]) -> None:
    a = torch.zeros(shape)
    for mode in ("reduced", "complete", "r"):
        for part in (0, 1):
            check(lambda t: torch.linalg.qr(t, mode=mode)[part], "linalg", a)


def test_a_dynamic_batch_is_fine() -> None:
    batch = torch.export.Dim("batch", min=2, max=64)
    a = general(3, (4,))
    program = torch.export.export(rewritten(torch.linalg.inv), (a,), dynamic_shapes=(({0: batch},),), strict=False)
    bigger = general(3, (9,), seed=3)
    assert_equivalent(program.module()(bigger), torch.linalg.inv(bigger))


def test_refusals_of_the_linalg_ops_point_at_the_family() -> None:
    from buildsys.rewrites.refusal import for_refusal

    for text in ("Operator torch._ops.aten.linalg_inv_ex.default is not in Core ATen opset",
                 "Operator torch._ops.aten._linalg_det.default is not in Core ATen opset",
                 "Operator torch._ops.aten._linalg_eigh.default is not in Core ATen opset",
                 "Exporting the operator 'aten::linalg_cholesky' to ONNX opset version 18 is not supported",
                 "Exporting the operator 'aten::triangular_solve' to ONNX opset version 18 is not supported",
                 "Exporting the operator 'aten::linalg_solve_triangular' to ONNX opset version 18 is not supported",
                 "Exporting the operator 'aten::cholesky_solve' to ONNX opset version 18 is not supported",
                 "Exporting the operator 'aten::cholesky_inverse' to ONNX opset version 18 is not supported",
                 "Core ML cannot convert the PyTorch op 'linalg_solve' (coremltools has no conversion for it)"):
        assert [r.name for r in for_refusal(text)][:1] == ["linalg"], text


QR_SHAPES = [(5, 5), (6, 3), (3, 6), (1, 4), (4, 1), (16, 9)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", QR_SHAPES)
def test_householder_qr_is_lapacks(shape: tuple[int, int], dtype: torch.dtype) -> None:
    """geqrf, qr in every mode, householder_product and ormqr from every side: LAPACK's results themselves (the
    same signs), square, tall and wide, batched or not; a zero column below the diagonal (τ = 0) included."""
    a = randn(2, *shape, seed=31, dtype=dtype)
    a[..., 1:, 0] = 0.0  # the first reflector is the identity
    for batch in (a, a[0]):
        check(lambda x: torch.geqrf(x)[0], "linalg", batch, rel=REL[dtype])
        check(lambda x: torch.geqrf(x)[1], "linalg", batch, rel=REL[dtype])
        for mode in ("reduced", "complete", "r"):
            for part in (0, 1):
                check(lambda x: torch.linalg.qr(x, mode=mode)[part], "linalg", batch, rel=REL[dtype])
        check(lambda x: torch.qr(x, some=False)[0], "linalg", batch, rel=REL[dtype])
    m, n = shape
    reflectors, tau = torch.geqrf(a)
    if m >= n:
        check(lambda r, t: torch.linalg.householder_product(r, t), "linalg", reflectors, tau, rel=REL[dtype])
    for left in (True, False):
        c = randn(2, m, 4, seed=32, dtype=dtype) if left else randn(2, 4, m, seed=32, dtype=dtype)
        for transpose in (False, True):
            check(lambda r, t, x: torch.ormqr(r, t, x, left=left, transpose=transpose), "linalg",
                  reflectors, tau, c, rel=REL[dtype])


def test_no_householder_op_is_left_in_any_graph() -> None:
    a = randn(4, 3, seed=33)
    check(lambda x: torch.linalg.qr(x)[0] + torch.geqrf(x)[0][:, :3].sum(), "linalg", a, graphs=True)
    reflectors, tau = torch.geqrf(randn(4, 4, seed=34))
    check(lambda r, t, c: torch.ormqr(r, t, c), "linalg", reflectors, tau, randn(4, 2, seed=35), graphs=True)


#: ops a converter may lack that the family's graphs may not hold (the qr OpInfo sample's refusals: diag_embed by the
#: legacy ONNX exporter, alias by coremltools' export frontend, iota by the TFLite runtime)
NOT_PLAIN = {"diag_embed", "alias", "arange", "iota", "eye", "triu", "tril", "detach", "clone_as_alias"}


@pytest.mark.filterwarnings("ignore:torch.qr is deprecated")
@pytest.mark.parametrize("shape", [(5, 5), (6, 3), (3, 6), (2, 4, 4), (1, 1)], ids=str)
def test_qr_graphs_hold_plain_ops_only(shape: tuple[int, ...]) -> None:
    """torch.qr's OpInfo sample (5 × 5) and the other shapes: no diag_embed / alias / iota-like op in the trace, the
    export or its decomposition (the masks, the identity and the index vectors are constants)."""
    a = randn(*shape, seed=41)
    for fn in (lambda t: torch.qr(t)[0], lambda t: torch.qr(t).R, lambda t: torch.linalg.qr(t, mode="complete")[0],
               lambda t: torch.linalg.qr(t, mode="r")[1],
               lambda t: torch.geqrf(t)[0], lambda t: torch.linalg.householder_product(*torch.geqrf(t))
               if t.shape[-2] >= t.shape[-1] else torch.geqrf(t)[1]):
        found = graph_ops(rewritten(fn), (a,))
        for kind in ("traced", "exported", "decomposed"):
            assert not NOT_PLAIN & found[kind], f"{kind}: {NOT_PLAIN & found[kind]}"
        check(fn, "linalg", a)


def low_rank(shape: tuple[int, int], rank: int, batch: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    m, n = shape
    return (randn(*batch, m, rank, seed=seed, dtype=torch.float64) @ randn(*batch, rank, n, seed=seed + 1,
                                                                           dtype=torch.float64)).to(dtype)


def conditioned(shape: tuple[int, int], batch: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """U diag(s) Vᵀ of singular values in [0.5, 2], any m × n."""
    k = min(shape)
    left, right = orthogonal(shape[0], batch, seed)[..., :k], orthogonal(shape[1], batch, seed + 1)[..., :k]
    return ((left * spectrum(k, batch, seed + 2).unsqueeze(-2)) @ right.transpose(-2, -1)).to(dtype)


SPECTRAL_SHAPES = [(1, 1), (3, 3), (5, 4), (4, 5)]


@dtypes
@pytest.mark.parametrize("batch", [(), (3,)], ids=str)
@pytest.mark.parametrize("shape", SPECTRAL_SHAPES, ids=str)
def test_matrix_rank_matches_torch(shape: tuple[int, int], batch: tuple[int, ...], dtype: torch.dtype) -> None:
    """Every rank from 0 to min(m, n) (σ computed on A itself: the zero ones come out at rounding level, below
    torch's default tolerance ε·max(m, n)·σ_max), every tolerance argument, hermitian."""
    for rank in range(min(shape) + 1):
        a = low_rank(shape, rank, batch, dtype, seed=rank)
        check(torch.linalg.matrix_rank, "linalg", a)
        check(lambda t: torch.linalg.matrix_rank(t, atol=0.5, rtol=0.1), "linalg", a)
        check(lambda t: torch.linalg.matrix_rank(t, atol=1.0), "linalg", a)
        check(lambda t: torch.linalg.matrix_rank(t, rtol=0.3), "linalg", a)
        check(lambda t: torch.linalg.matrix_rank(t, 0.7), "linalg", a)  # the deprecated tol: atol, rtol 0
        check(lambda t, u: torch.linalg.matrix_rank(t, atol=u.abs().amax(-1)), "linalg", a, a.sum(-1))  # tensors
        check(lambda t, u: torch.linalg.matrix_rank(t, rtol=u.abs().amax(-1) / 10), "linalg", a, a.sum(-1))
        if shape[0] == shape[1]:
            s = a @ a.transpose(-2, -1) - a.transpose(-2, -1) @ a  # symmetric, of eigenvalues of both signs
            check(lambda t: torch.linalg.matrix_rank(t, hermitian=True), "linalg", a @ a.transpose(-2, -1))
            check(lambda t: torch.linalg.matrix_rank(t, hermitian=True, rtol=0.2), "linalg", s)


@dtypes
@pytest.mark.parametrize("batch", [(), (3,)], ids=str)
@pytest.mark.parametrize("shape", SPECTRAL_SHAPES, ids=str)
def test_pseudo_inverse_norms_and_condition_match_torch(shape: tuple[int, int], batch: tuple[int, ...],
                                                        dtype: torch.dtype) -> None:
    a, rel = conditioned(shape, batch, dtype, seed=sum(shape)), REL[dtype]
    check(torch.linalg.pinv, "linalg", a, rel=rel)
    check(torch.pinverse, "linalg", a, rel=rel)
    check(lambda t: t.pinverse(), "linalg", a, rel=rel)
    check(lambda t: torch.linalg.pinv(t, rtol=0.5), "linalg", a, rel=rel)  # drops the σ below 0.5·σ_max
    check(lambda t: torch.linalg.pinv(t, atol=0.8), "linalg", a, rel=rel)
    check(lambda t: torch.linalg.pinv(t, 0.6), "linalg", a, rel=rel)  # rcond
    check(lambda t: torch.linalg.pinv(low_rank(shape, 1, (), dtype, 3) + 0 * t), "linalg", a, rel=rel)
    stacked = torch.stack([a, 2.0 * a], dim=-2)  # [..., m, 2, n]: norms over dims that are not the last two
    for ord in (2, -2, "nuc", "fro", 1, -1, float("inf"), -float("inf")):
        check(lambda t: torch.linalg.matrix_norm(t, ord), "linalg", a, rel=rel)
        check(lambda t: torch.linalg.norm(t, ord, dim=(-1, -2), keepdim=True), "linalg", a, rel=rel)
        for dim in ((0, -1), (-1, 0), (-3, -2)):
            for keepdim in (False, True):
                check(lambda t: torch.linalg.matrix_norm(t, ord, dim, keepdim), "linalg", stacked, rel=rel)
    check(lambda t: torch.norm(t, p="nuc", dim=(-2, -1)), "linalg", a, rel=rel)
    check(lambda t: torch.norm(t, p="fro", dim=(-2, -1)) + torch.norm(t, p=3), "linalg", a, rel=rel)  # torch's own
    vector_norms: list[tuple[float | None, int | tuple[int, ...] | None]] = [
        (None, None), (None, (-2, -1)), (3, -1), (-1, (0,)), (float("inf"), None)]
    for vector_ord, vector_dim in vector_norms:
        vector = a.flatten() if vector_ord is not None and vector_dim is None else a
        check(lambda t: torch.linalg.norm(t, vector_ord, vector_dim), "linalg", vector, rel=rel)  # vector norms
    if shape[0] == shape[1]:
        s = a + a.transpose(-2, -1)
        check(lambda t: torch.linalg.pinv(t, hermitian=True), "linalg", s + 3.0 * torch.eye(shape[0], dtype=dtype),
              rel=rel)
        for p in (None, 2, -2, 1, -1, float("inf"), "fro", "nuc"):
            check(lambda t: torch.linalg.cond(t, p), "linalg", a, rel=rel)
    if not batch:
        check(lambda t: torch.linalg.norm(t, 2), "linalg", a, rel=rel)
        check(lambda t: torch.norm(t, p="nuc"), "linalg", a, rel=rel)
        check(lambda t: t.norm(p="nuc"), "linalg", a, rel=rel)
        check(lambda t: torch.nuclear_norm(t), "linalg", a, rel=rel)


LSTSQ_SHAPES = [(1, 1), (3, 3), (5, 4), (4, 5), (4, 3), (2, 3)]


@dtypes
@pytest.mark.parametrize("batch", [(), (3,)], ids=str)
@pytest.mark.parametrize("shape", LSTSQ_SHAPES, ids=str)
@pytest.mark.parametrize("driver", [None, "gels", "gelsy", "gelss", "gelsd"])
def test_least_squares_match_torch(driver: str | None, shape: tuple[int, int], batch: tuple[int, ...],
                                   dtype: torch.dtype) -> None:
    """Every field of every driver's result as torch's on the CPU (empty ones with their shapes and dtypes); a
    matrix or (a batch of) vector(s) B, B's batch broadcast against A's."""
    a, rel = conditioned(shape, batch, dtype, seed=sum(shape) + 5), REL[dtype]
    m = shape[0]
    for b in (randn(*batch, m, 2, seed=3, dtype=dtype), randn(*batch, m, seed=4, dtype=dtype)):
        for field in range(4):
            check(lambda s, t: torch.linalg.lstsq(s, t, driver=driver)[field], "linalg", a, b, rel=rel)
    if batch:  # A's batch of 1 against B's of 3
        for field in range(4):
            check(lambda s, t: torch.linalg.lstsq(s, t, driver=driver)[field], "linalg", a[:1],
                  randn(*batch, m, 2, seed=5, dtype=dtype), rel=rel)
    b = randn(*batch, m, 2, seed=6, dtype=dtype)
    for field in (0, 2, 3):  # rank-deficient at this rcond: the residuals are torch's empty tensor (and NaN here)
        if driver in (None, "gelsy"):  # gelsy's rank at another rcond is its pivoted QR's estimate, not the SVD's
            with pytest.raises(RewriteNotApplicable, match="rcond with the gelsy driver"):
                rewritten(lambda s, t: torch.linalg.lstsq(s, t, rcond=0.6, driver=driver)[field])(a, b)
        else:
            check(lambda s, t: torch.linalg.lstsq(s, t, rcond=0.6, driver=driver)[field], "linalg", a, b, rel=rel)


def test_least_squares_of_a_rank_deficient_matrix() -> None:
    """The minimum-norm solution and the rank as gelsy / gelss / gelsd give them; gelss / gelsd's residuals (empty
    in torch: their shape depends on the rank) are NaN."""
    a, b = low_rank((5, 3), 2, (), torch.float64, seed=9), randn(5, 2, seed=10, dtype=torch.float64)
    for driver in ("gelsy", "gelss", "gelsd"):
        check(lambda s, t: torch.linalg.lstsq(s, t, driver=driver).solution, "linalg", a, b, rel=1e-8)
        check(lambda s, t: torch.linalg.lstsq(s, t, driver=driver).rank, "linalg", a, b)
    residuals = rewritten(lambda s, t: torch.linalg.lstsq(s, t, driver="gelss").residuals)(a, b)
    assert residuals.shape == (2,) and residuals.isnan().all() and torch.linalg.lstsq(a, b, driver="gelss").residuals.numel() == 0


def test_no_svd_op_is_left_in_any_graph() -> None:
    """matrix_rank, pinv, the spectral norms and cond leave no _linalg_svd (torch computes them with it inside one
    op the table would not see); lstsq, which torch.export cannot trace (its outputs' shapes depend on the data),
    exports once rewritten."""
    a = conditioned((4, 3), (2,), torch.float32, seed=11)
    s = a.transpose(-2, -1) @ a
    check(torch.linalg.matrix_rank, "linalg", a, graphs=True)
    check(lambda t: torch.linalg.matrix_rank(t, hermitian=True), "linalg", s, graphs=True)
    check(lambda t: torch.linalg.pinv(t) + torch.pinverse(t)
          + torch.linalg.pinv(t.transpose(-2, -1) @ t, hermitian=True) @ t.transpose(-2, -1), "linalg", a, graphs=True)
    check(lambda t: torch.linalg.matrix_norm(t, 2) + torch.linalg.norm(t, "nuc", dim=(-2, -1))
          + torch.linalg.matrix_norm(t, -2), "linalg", a, graphs=True)
    check(lambda t: torch.linalg.cond(t) + torch.linalg.cond(t, "nuc") + torch.linalg.cond(t, 1), "linalg", s,
          graphs=True)
    check(lambda t: torch.linalg.matrix_norm(t, 1) + torch.linalg.norm(t, float("inf"), dim=(-2, -1)), "linalg", a,
          graphs=True)  # the ords without an SVD leave no linalg_matrix_norm either
    check(torch.linalg.svdvals, "linalg", a, graphs=True)
    b = randn(2, 4, 2, seed=12)
    for driver in (None, "gels", "gelss"):
        fn = (lambda s, t: tuple(torch.linalg.lstsq(s, t, driver=driver)))
        found = graph_ops(rewritten(fn), (a, b))
        for kind in ("traced", "exported", "decomposed"):
            assert not {op for op in found[kind] if "linalg" in op or "svd" in op or "lstsq" in op}, found[kind]


def triangle(n: int, batch: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Both triangles random (the one not read is garbage to torch), 4 added to the diagonal: well conditioned."""
    return (randn(*batch, n, n, seed=seed, dtype=torch.float64) + 4.0 * torch.eye(n, dtype=torch.float64)).to(dtype)


TRIANGULAR = pytest.mark.filterwarnings("ignore:torch.triangular_solve is deprecated")


@TRIANGULAR
@dtypes
@batches
@pytest.mark.parametrize("n", [1, 3, 5])
def test_triangular_solves_match_torch(n: int, batch: tuple[int, ...], dtype: torch.dtype) -> None:
    a, rel = triangle(n, batch, dtype, seed=n), REL[dtype]
    b, column, wide = randn(*batch, n, 2, seed=1, dtype=dtype), randn(n, 1, seed=2, dtype=dtype), \
        randn(4, *batch, n, 3, seed=3, dtype=dtype)  # one column for every matrix; a broadcast batch
    for upper in (True, False):
        for unit in (True, False):
            for transpose in (True, False):
                for rhs in (b, column, wide):
                    check(lambda s, t: torch.triangular_solve(s, t, upper, transpose, unit).solution, "linalg", rhs, a,
                          rel=rel)
            check(lambda s, t: torch.triangular_solve(s, t, upper=upper, unitriangular=unit)[1], "linalg", wide, a)
            check(lambda s, t: s.triangular_solve(t, upper, unitriangular=unit)[0], "linalg", b, a, rel=rel)
            for rhs in (b, column, wide):
                check(lambda s, t: torch.linalg.solve_triangular(s, t, upper=upper, unitriangular=unit), "linalg", a,
                      rhs, rel=rel)
                check(lambda s, t: torch.linalg.solve_triangular(s, t, upper=upper, left=False, unitriangular=unit),
                      "linalg", a, rhs.transpose(-2, -1), rel=rel)
        for rhs in (b, column, wide):
            check(lambda s, t: torch.cholesky_solve(s, t, upper), "linalg", rhs, a, rel=rel)
        check(lambda s, t: s.cholesky_solve(t, upper=upper), "linalg", b, a, rel=rel)
        check(lambda t: torch.cholesky_inverse(t, upper), "linalg", a, rel=rel)
        check(lambda t: t.cholesky_inverse(upper=upper), "linalg", a, rel=rel)


@TRIANGULAR
def test_no_triangular_solve_op_is_left_in_any_graph() -> None:
    a, b = triangle(3, (2,), torch.float32, seed=5), randn(2, 3, 2, seed=6)
    check(lambda s, t: torch.triangular_solve(s, t)[0] + torch.triangular_solve(s, t, False, True)[1][..., :2],
          "linalg", b, a, graphs=True)
    check(lambda s, t: torch.linalg.solve_triangular(s, t, upper=False)
          + torch.linalg.solve_triangular(s, t.transpose(-2, -1), upper=True, left=False).transpose(-2, -1),
          "linalg", a, b, graphs=True)
    check(torch.cholesky_solve, "linalg", b, a, graphs=True)
    check(torch.cholesky_inverse, "linalg", a, graphs=True)


def test_triangular_solve_refusals_say_why() -> None:
    with pytest.raises(RewriteNotApplicable, match=r"torch.linalg.solve_triangular: n = 17 is above 16"):
        rewritten(lambda s, t: torch.linalg.solve_triangular(s, t, upper=True))(torch.eye(17), torch.ones(17, 2))
    with pytest.raises(RewriteNotApplicable, match=r"torch.cholesky_inverse: a complex L \(torch.complex64\)"):
        rewritten(torch.cholesky_inverse)(torch.eye(3, dtype=torch.complex64))
    with pytest.raises(RewriteNotApplicable, match=r"the out= argument"):
        rewritten(lambda s, t: torch.cholesky_solve(s, t, out=torch.empty(3, 2)))(torch.ones(3, 2), torch.eye(3))
    with pytest.raises(RuntimeError, match="at least 2 dimensions"):  # what torch says, not a refusal
        rewritten(lambda s, t: torch.linalg.solve_triangular(s, t, upper=True))(torch.eye(3), torch.ones(3))


@TRIANGULAR
@dtypes
def test_triangular_solves_run_in_onnxruntime(dtype: torch.dtype) -> None:
    """Legacy exporter (opset 18), which refuses all four ops, then onnxruntime: torch's values."""
    import io
    import warnings

    import onnxruntime

    a, b = triangle(5, (3,), dtype, seed=7), randn(2, 1, 5, 2, seed=8, dtype=dtype)
    functions: list[Callable[[torch.Tensor, torch.Tensor], object]] = [
        lambda s, t: torch.triangular_solve(t, s, upper=False, transpose=True),
        lambda s, t: torch.linalg.solve_triangular(s, t, upper=True),
        lambda s, t: torch.linalg.solve_triangular(s, t.transpose(-2, -1), upper=False, left=False,
                                                   unitriangular=True),
        lambda s, t: torch.cholesky_solve(t, s, upper=True),
        lambda s, t: torch.cholesky_inverse(s) + t.sum(),
    ]
    for fn in functions:
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(rewritten(fn), (a, b), f, dynamo=False, opset_version=18)  # type: ignore[arg-type]
        session = onnxruntime.InferenceSession(f.getvalue())
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, dict(zip(names, (a.numpy(), b.numpy()))))
        want = fn(a, b)
        for g, w in zip(got, want if isinstance(want, tuple) else (want,)):
            assert_equivalent(torch.from_numpy(g), w, REL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matrix_exp_matches_torch(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    for n, scale in [(1, 1.0), (2, 0.1), (3, 1.0), (5, 3.0), (8, 0.5), (4, 20.0)]:
        A = (torch.randn(2, n, n, generator=g, dtype=torch.float64) * scale).to(dtype)
        got = rewrites.apply(Fn(torch.linalg.matrix_exp), ["linalg"])(A)
        want = torch.linalg.matrix_exp(A)
        rel = 1e-4 if dtype == torch.float32 else 1e-10
        assert (got - want).abs().max() <= rel * want.abs().max(), (n, scale, (got - want).abs().max())
    x = torch.zeros(3, 3, dtype=dtype)
    assert torch.equal(rewrites.apply(Fn(lambda t: t.matrix_exp()), ["linalg"])(x), torch.eye(3, dtype=dtype))
    check(lambda t: torch.matrix_exp(t) + torch.linalg.matrix_exp(t), "linalg", torch.randn(2, 4, 4), rel=1e-4,
          graphs=True)
