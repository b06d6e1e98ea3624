"""buildsys.rewrites: the registry, the mechanism, and each rewrite's numeric equivalence with the op it removes.

Equivalence is asserted on random inputs of several shapes and batch sizes at fp32 tolerance: max abs
error ≤ 1e-4 × max|reference| (plus 1e-6 for references near 0). Gathers, slices and one-hot
convolutions are exact; the DFT matmuls and attention sums only reorder fp32 additions.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable, UnknownRewrite
from tests.conftest import REPO
from tests.helpers import rewrite_checks as families
from tests.helpers.rewrite_checks import REL, assert_equivalent, randn
from tests.helpers.rewrite_ops import Fn


def rewritten(fn: Callable[..., object], *names: str) -> nn.Module:
    return rewrites.apply(Fn(fn), names)  # type: ignore[arg-type]


def check(fn: Callable[..., torch.Tensor], names: tuple[str, ...], *args: torch.Tensor, rel: float = REL) -> None:
    """fn(*args) and the rewritten fn(*args) agree; the rewrite really ran (fn is intercepted)."""
    want = fn(*args)
    got = rewritten(fn, *names)(*args)
    assert_equivalent(got, want, rel)  # type: ignore[arg-type]



# --- registry ----------------------------------------------------------------------------------------

def test_the_registry_lists_every_rewrite_with_what_it_removes() -> None:
    assert set(rewrites.REGISTRY) == {"fft", "stft", "complex", "scatter", "embedding-bag", "recurrent", "distance",
                                      "triangular", "special", "bessel", "floating", "gamma", "scan", "order", "linalg", "sampling", "pooling", "volumetric", "resample", "diff", "roll",
                                      "unfold",
                                      "fold", "sdpa", "losses", "precise", "conv-transpose",
                                      "statistics", "view-scatter", "strided-view", "bilinear"}
    for rewrite in rewrites.REGISTRY.values():
        assert rewrite.version >= 1 and rewrite.description and rewrite.removes
        assert rewrite.as_dict()["removes"] == list(rewrite.removes)
    # families first, their members after
    assert [r.name for r in rewrites.removing("aten.embedding_bag.padding_idx")] == ["scatter", "embedding-bag"]
    assert [r.name for r in rewrites.removing("aten::_fft_r2c")] == ["fft", "stft"]
    assert rewrites.versions(["stft", "sdpa"]) == {"stft": 1, "sdpa": 1}
    # what a float check that missed its tolerance is answered by: rewrites declaring an op of the program precise
    assert [r.name for r in rewrites.precise_for(["aten.log1p.default", "aten::mul"])] == ["precise"]
    assert [r.name for r in rewrites.precise_for(["aten::soft_margin_loss"])] == ["losses"]
    assert rewrites.precise_for(["aten::mul", "aten::cross_entropy_loss"]) == []
    assert rewrites.get("precise").as_dict()["precise"][0] == "aten::log1p"


def test_a_member_replaces_a_subset_of_its_family_with_the_same_handlers() -> None:
    """So a target that names the member (rewrites: [stft]) gets what it got before the family, and a route
    carrying both the family and the member applies each handler once."""
    members = [r for r in rewrites.REGISTRY.values() if r.family]
    assert {(r.name, r.family) for r in members} == {("stft", "fft"), ("embedding-bag", "scatter")}
    for member in members:
        family = rewrites.get(member.family or "")
        assert set(member.removes) <= set(family.removes)
        table, family_table = member.handlers(), family.handlers()
        assert all(family_table[func] is handler for func, handler in table.items())
        x = randn(2, 300)
        both = rewrites.apply(Fn(lambda t: torch.stft(t, 64, return_complex=True).abs()), [member.name, family.name])
        assert both(x).shape == torch.stft(x, 64, return_complex=True).shape


def test_every_rewrite_can_be_active_with_every_other() -> None:
    """A route may carry any set of families (a decomposition route, the refusal of several ops): no two claim
    one function with different handlers, which active_rewrites refuses (volumetric and pooling both took
    max_pool3d_with_indices once)."""
    from buildsys.rewrites.mechanism import active_rewrites

    active_rewrites(list(rewrites.REGISTRY.values()))


def test_an_unknown_name_says_what_exists() -> None:
    with pytest.raises(UnknownRewrite, match=r"no rewrite is named 'embeddingbag' .* did you mean 'embedding-bag'"):
        rewrites.get("embeddingbag")
    with pytest.raises(UnknownRewrite):
        rewrites.apply(nn.Identity(), ["nope"])


def test_the_registry_and_refusal_matching_do_not_import_torch() -> None:
    code = ("import sys; from buildsys import rewrites; list(rewrites.REGISTRY.values()); "
            "rewrites.for_refusal('aten::stft', ['aten.stft.default']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_rewrite_modules_are_small_and_say_what_they_do() -> None:
    for path in sorted((REPO / "buildsys" / "rewrites").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) < 400, path.name
        assert text.startswith('"""'), path.name


# --- mechanism ---------------------------------------------------------------------------------------

def test_apply_keeps_the_state_the_signature_and_the_class() -> None:
    import inspect

    from tests.helpers.rewrite_models import Recommender

    model = Recommender().eval()
    module = rewrites.apply(model, ["embedding-bag"])
    assert isinstance(module, Recommender) and type(module) is not Recommender
    assert list(module.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(module.parameters(), model.parameters()))  # shared, not copied
    assert inspect.signature(module.forward) == inspect.signature(model.forward)
    assert rewrites.carried(module) == ("embedding-bag",) and rewrites.carried(model) == ()
    again = rewrites.apply(module, ["roll", "embedding-bag"])
    assert rewrites.carried(again) == ("embedding-bag", "roll")
    module.extra = nn.Linear(1, 1)  # the copy's containers are its own
    assert "extra" not in dict(model.named_children())


def test_apply_refuses_what_it_cannot_wrap() -> None:
    with pytest.raises(TypeError, match="eager torch.nn.Module"):
        rewrites.apply(torch.jit.script(nn.Linear(2, 2)), ["roll"])


def test_the_mode_intercepts_under_every_tracer() -> None:
    """jit.trace and torch.export (strict=False, as the project exports, and strict=True) record the rewrite."""
    module = rewritten(lambda t: torch.roll(t, 1, 1), "roll")
    x = randn(2, 5)
    traced = torch.jit.trace(module, (x,))
    assert "aten::roll" not in {n.kind() for n in traced.inlined_graph.nodes()}
    for strict in (False, True):
        program = torch.export.export(module, (x,), strict=strict)
        targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        assert "aten.roll.default" not in targets and "aten.cat.default" in targets
        assert torch.equal(program.module()(x), torch.roll(x, 1, 1))


def test_rewrites_compose_without_re_entering_themselves() -> None:
    """What one rewrite writes goes through the others in force: fold writes a conv_transpose2d (its one-hot
    kernels), which conv-transpose then writes as a convolution; alone, fold leaves the conv_transpose2d (VOLO's
    outlook attention met it: LiteRT refused the transposed convolution fold had written). A handler calling the
    function it replaces gets the plain function, and one calling another's replaced function gets that rewrite."""
    from buildsys.rewrites.base import Rewrite
    from buildsys.rewrites.mechanism import apply as apply_rewrites
    from tests.helpers.rewrite_checks import graph_ops

    x = randn(2, 4 * 9, 16)
    fn = Fn(lambda t: F.fold(t, (7, 7), 3, padding=1, stride=2))
    for names, left in ((["fold"], {"conv_transpose2d"}), (["fold", "conv-transpose"], set())):
        module = rewrites.apply(fn, names)
        assert_equivalent(module(x), fn(x), REL)
        exported = graph_ops(module, (x,))["exported"]
        assert "col2im" not in exported and (exported & {"conv_transpose2d"}) == left, exported
        if not left:
            assert "conv2d" in exported  # the transposed convolution as a stride-1 one of the zero-stuffed input

    twice = Rewrite(name="twice", version=1, removes=("aten::sin",), description="sin as sin · 2 / 2",
                    handlers=lambda: {torch.sin: lambda t: torch.sin(t) * 2 / 2})
    shifted = Rewrite(name="shifted", version=1, removes=("aten::cos",), description="cos as a shifted sin",
                      handlers=lambda: {torch.cos: lambda t: -torch.sin(t - torch.pi / 2)})
    module = apply_rewrites(Fn(lambda t: torch.cos(t) + torch.sin(t)), [twice, shifted])
    y = randn(8)
    assert_equivalent(module(y), torch.cos(y) + torch.sin(y), REL)
    traced = {n.kind() for n in torch.jit.trace(module, (y,)).inlined_graph.nodes()}
    assert "aten::cos" not in traced and "aten::div" in traced  # cos became a sin, rewritten by `twice`


def test_other_functions_pass_through_untouched() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.GELU(), nn.LayerNorm(6)).eval()
    x = randn(4, 2, 8)
    assert torch.equal(rewrites.apply(model, ["stft", "complex", "sdpa"])(x), model(x))


# --- stft ----------------------------------------------------------------------------------------------

STFT_CASES = [  # (n_fft, hop, win_length, window, center, pad_mode, normalized, onesided)
    (64, None, None, "hann", True, "reflect", False, None),
    (256, 64, None, "hann", True, "constant", False, None),
    (400, 160, None, "hann", True, "reflect", True, True),       # not a power of two, normalized
    (128, 32, 96, "hamming", True, "replicate", False, None),    # a window shorter than n_fft
    (64, 16, 48, None, False, "reflect", False, False),          # rectangular, two-sided, no centring
    (128, 40, None, "blackman", True, "circular", False, None),
    (512, 128, 400, "hann", False, "reflect", False, True),
]


@pytest.mark.parametrize("case", STFT_CASES, ids=lambda c: f"nfft{c[0]}-{c[5]}-{c[3]}")
@pytest.mark.parametrize("shape", [(1, 1000), (3, 2048), (1777,)], ids=["b1", "b3", "1d"])
def test_stft_matches_torch(case: tuple, shape: tuple[int, ...]) -> None:
    n_fft, hop, win, window_name, center, pad_mode, normalized, onesided = case
    length = win or n_fft
    window = None if window_name is None else getattr(torch, f"{window_name}_window")(length)

    def spectrum(x: torch.Tensor) -> torch.Tensor:
        z = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=window, center=center, pad_mode=pad_mode,
                       normalized=normalized, onesided=onesided, return_complex=True)
        return torch.view_as_real(z)

    check(spectrum, ("stft",), randn(*shape))


def test_stft_return_complex_false_and_align_to_window() -> None:
    x, window = randn(2, 700), torch.hann_window(48)
    check(lambda t: torch.stft(t, 64, 16, 48, window, return_complex=False), ("stft",), x)
    for align in (True, False):
        check(lambda t: torch.view_as_real(torch.stft(t, 64, 16, 48, window, center=False, align_to_window=align,
                                                      return_complex=True)), ("stft",), x)


def test_stft_power_and_log_mel_frontend() -> None:
    from tests.helpers.rewrite_models import KeywordSpotter, spotter_inputs

    model = KeywordSpotter().eval()
    for batch in (1, 4):
        (audio,) = spotter_inputs(batch, seed=batch)
        assert_equivalent(rewrites.apply(model, ["stft"])(audio), model(audio))

    def power_db(x: torch.Tensor) -> torch.Tensor:
        z = x.stft(128, 32, window=torch.hann_window(128), return_complex=True)  # Tensor.stft, window made inside
        # (no angle: at the DC and Nyquist bins the imaginary part is ±0 and atan2 flips between ±π)
        return 10 * torch.log10(z.abs().pow(2) + 1e-10) + (z * z.conj()).real + torch.abs(z) ** 0.5

    check(power_db, ("stft",), randn(3, 1600), rel=1e-4)


@pytest.mark.parametrize("name", ["hann", "hamming", "blackman", "bartlett"])
@pytest.mark.parametrize("periodic", [True, False])
def test_window_functions_are_constants_equal_to_torch(name: str, periodic: bool) -> None:
    for length in (1, 2, 7, 400):
        func = getattr(torch, f"{name}_window")
        check(lambda t: t * func(length, periodic=periodic), ("stft",), torch.ones(length))


def test_stft_refuses_what_it_does_not_implement() -> None:
    with pytest.raises(RewriteNotApplicable, match="rewrite 'stft' does not apply to torch.stft: a complex input"):
        rewritten(lambda t: torch.stft(torch.complex(t, t), 16, return_complex=True).real, "stft")(randn(64))
    with pytest.raises(RewriteNotApplicable, match="rewrite 'complex' does not apply to torch.stft"):
        rewritten(lambda t: torch.stft(torch.complex(t, t), 16, return_complex=True).real, "stft", "complex")(randn(64))


# --- complex pairs ----------------------------------------------------------------------------------

def test_rotary_embedding_through_complex_numbers() -> None:
    from tests.helpers.rewrite_ops import _rope

    for shape in [(1, 4, 8), (2, 3, 10, 16)]:
        check(_rope, ("complex",), randn(*shape))


@pytest.mark.parametrize("norm", [None, "ortho", "forward"])
@pytest.mark.parametrize("shape,dim,n", [((4, 32), -1, None), ((2, 5, 31), 1, None), ((3, 20), -1, 24),
                                         ((3, 20), 0, 2)])
def test_ffts_match_torch(shape: tuple[int, ...], dim: int, n: int | None, norm: str | None) -> None:
    x = randn(*shape)
    check(lambda t: torch.view_as_real(torch.fft.rfft(t, n=n, dim=dim, norm=norm)), ("complex",), x)
    check(lambda t: torch.view_as_real(torch.fft.fft(t, n=n, dim=dim, norm=norm)), ("complex",), x)
    check(lambda t: torch.view_as_real(torch.fft.ifft(torch.fft.fft(t, dim=dim), n=n, dim=dim, norm=norm)),
          ("complex",), x)
    check(lambda t: torch.fft.irfft(torch.fft.rfft(t, dim=dim), n=n, dim=dim, norm=norm), ("complex",), x)


def test_an_fft_domain_filter() -> None:
    from tests.helpers.rewrite_ops import SPECTRAL_FILTER

    for shape in [(1, 64), (5, 3, 100)]:
        check(SPECTRAL_FILTER, ("complex",), randn(*shape))


def test_complex_arithmetic_on_pairs() -> None:
    def algebra(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z, w = torch.complex(a, b), torch.view_as_complex(torch.stack([b, a], -1))
        parts = [z + w, z - 2.0, 3 * z, z * w, z / w, 1.0 / z, z * 1j, -z, z.conj() @ w.transpose(-2, -1),
                 z ** 2, z.pow(3), z ** 0.5, torch.exp(z), torch.log(z), z.sqrt(), torch.sum(z, dim=-1, keepdim=True),
                 z.mean(-1, keepdim=True), torch.cat([z, w], -1)[..., ::2], z.flip(-1), z.transpose(-1, -2).mT,
                 torch.polar(a.abs(), b) * z, z.reshape(z.shape)]
        real = [torch.view_as_real(p) for p in parts] + [z.abs(), z.angle(), z.real, torch.imag(z), torch.real(w)]
        return torch.cat([r.reshape(a.shape[0], -1) for r in real], dim=-1)

    for shape in [(2, 4, 4), (3, 5, 5)]:
        check(algebra, ("complex",), randn(*shape, seed=1), randn(*shape, seed=2))


def test_an_op_the_pair_does_not_implement_raises_instead_of_computing() -> None:
    with pytest.raises(RewriteNotApplicable, match=r"rewrite 'complex' does not apply to Tensor.sinh"):
        rewritten(lambda t: torch.view_as_real(torch.view_as_complex(t).sinh()), "complex")(randn(3, 2))
    with pytest.raises(RewriteNotApplicable, match=r"does not apply to torch.tanh"):
        rewritten(lambda t: torch.view_as_real(torch.tanh(torch.view_as_complex(t))), "complex")(randn(3, 2))
    with pytest.raises(RewriteNotApplicable, match="makes a complex tensor"):
        rewritten(lambda t: (t * 1j).real, "complex")(randn(3))
    with pytest.raises(RewriteNotApplicable, match="returns a complex value"):
        rewritten(lambda t: torch.view_as_complex(t), "complex")(randn(3, 2))


# --- embedding_bag ---------------------------------------------------------------------------------

def _ragged(bags: int, items: int, seed: int, empty: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0 if empty else 1, 6, (bags,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return torch.randint(0, items, (int(lengths.sum()),), generator=gen), offsets


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("bags", [1, 5, 16])
def test_embedding_bag_with_offsets(mode: str, bags: int) -> None:
    weight = randn(30, 6)
    ids, offsets = _ragged(bags, 30, seed=bags, empty=bags > 1)
    for padding_idx in (None, int(ids[0]) if len(ids) else 0):
        check(lambda i, o: F.embedding_bag(i, weight, o, mode=mode, padding_idx=padding_idx), ("embedding-bag",),
              ids, offsets)
    last = torch.cat([offsets, torch.tensor([len(ids)])])
    check(lambda i, o: F.embedding_bag(i, weight, o, mode=mode, include_last_offset=True), ("embedding-bag",), ids, last)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_fixed_bags_and_the_module(mode: str) -> None:
    bag = nn.EmbeddingBag(20, 5, mode=mode, padding_idx=3).eval()
    for shape in [(1, 4), (6, 7)]:
        ids = torch.randint(0, 20, shape, generator=torch.Generator().manual_seed(shape[0]))
        ids[0, 0] = 3
        assert_equivalent(rewrites.apply(bag, ["embedding-bag"])(ids), bag(ids))
        flat, offsets = ids.flatten(), torch.arange(0, ids.numel(), shape[1])
        assert_equivalent(rewrites.apply(bag, ["embedding-bag"])(flat, offsets), bag(flat, offsets))


def test_embedding_bag_per_sample_weights_and_the_recommender() -> None:
    from tests.helpers.rewrite_models import Recommender, recommender_inputs

    weight, (ids, offsets) = randn(30, 6), _ragged(7, 30, seed=3, empty=True)
    psw = randn(len(ids), seed=4)
    check(lambda i, o, w: F.embedding_bag(i, weight, o, mode="sum", per_sample_weights=w), ("embedding-bag",),
          ids, offsets, psw)
    for mode in ("sum", "mean", "max"):
        model = Recommender(mode=mode).eval()
        for batch in (1, 8):
            args = recommender_inputs(batch, seed=batch)
            assert_equivalent(rewrites.apply(model, ["embedding-bag"])(*args), model(*args))
    with pytest.raises(RewriteNotApplicable, match="max_norm"):
        rewrites.apply(nn.EmbeddingBag(5, 2, max_norm=1.0), ["embedding-bag"])(torch.tensor([[1, 2]]))


# --- diff, roll ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7,), (3, 9), (2, 4, 6)])
def test_diff_matches_torch(shape: tuple[int, ...]) -> None:
    x = randn(*shape)
    for n in (1, 2):
        for dim in range(-x.dim(), x.dim()):
            check(lambda t: torch.diff(t, n=n, dim=dim), ("diff",), x)
    edge = x.narrow(-1, 0, 1)
    check(lambda t: t.diff(dim=-1, prepend=edge, append=edge * 2), ("diff",), x)
    check(lambda t: torch.diff(t > 0), ("diff",), x)  # bool: xor


@pytest.mark.parametrize("shape", [(7,), (3, 9), (2, 4, 6)])
def test_roll_matches_torch(shape: tuple[int, ...]) -> None:
    x = randn(*shape)
    for shifts, dims in [(1, None), (-3, None), (2, 0), (-1, -1), (13, 0), (0, 0)]:
        check(lambda t: torch.roll(t, shifts, dims), ("roll",), x)
    if x.dim() >= 2:
        check(lambda t: t.roll((1, -2), (0, 1)), ("roll",), x)


# --- unfold, fold ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(20,), (2, 17), (2, 3, 12, 5)])
def test_tensor_unfold_matches_torch(shape: tuple[int, ...]) -> None:
    x = randn(*shape)
    for dim in range(x.dim()):
        for size, step in [(1, 1), (3, 1), (4, 2), (5, 3)]:
            if size <= x.shape[dim]:
                check(lambda t: t.unfold(dim, size, step), ("unfold",), x)
                check(lambda t: torch.unfold_copy(t, dim, size, step), ("unfold",), x)
    families.check(lambda t: torch.unfold_copy(t, -1, 1, 1), "unfold", x, graphs=True)  # unfold_copy gone


def test_tensor_unfold_of_a_0d_tensor_is_torchs_one_window() -> None:
    x = torch.tensor(3.5)
    for dim, size, step in [(0, 1, 1), (-1, 1, 2), (0, 0, 1)]:
        check(lambda t: t.unfold(dim, size, step) * 2, ("unfold",), x)
        check(lambda t: torch.unfold_copy(t, dim, size, step) + 1, ("unfold",), x)
    with pytest.raises(RuntimeError, match="maximum size for tensor at dimension 0 is 1"):
        rewritten(lambda t: t.unfold(0, 2, 1), "unfold")(x)


@pytest.mark.parametrize("shape", [(1, 1, 6, 6), (2, 3, 9, 7), (3, 8, 8)])
def test_im2col_and_col2im_match_torch(shape: tuple[int, ...]) -> None:
    x = randn(*shape)
    h, w = shape[-2:]
    for kernel, dilation, padding, stride in [(3, 1, 0, 1), ((2, 3), 1, 1, 2), (3, 2, 1, (1, 2)), (1, 1, 0, 1)]:
        check(lambda t: F.unfold(t, kernel, dilation, padding, stride), ("unfold",), x)
        cols = F.unfold(x, kernel, dilation, padding, stride)
        check(lambda c: F.fold(c, (h, w), kernel, dilation, padding, stride), ("fold",), randn(*cols.shape))


# --- sdpa ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 4, 8), (2, 4, 7, 16), (3, 5, 12)])
def test_sdpa_matches_torch(shape: tuple[int, ...]) -> None:
    q, k, v = randn(*shape, seed=1), randn(*shape, seed=2), randn(*shape, seed=3)
    length = shape[-2]
    keep = torch.rand(length, length, generator=torch.Generator().manual_seed(4)) > 0.3
    keep[0] = False  # a row with nothing to attend to: 0, as torch
    bias = randn(length, length, seed=5)
    bias[1] = float("-inf")
    for kwargs in [{}, {"attn_mask": keep}, {"attn_mask": bias}, {"is_causal": True}, {"scale": 0.3},
                   {"attn_mask": keep.expand(*shape[:-2], length, length)}]:
        check(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, **kwargs), ("sdpa",), q, k, v)
    short = randn(*shape[:-2], 3, shape[-1], seed=6)  # fewer queries than keys: causal is top-left aligned
    check(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True), ("sdpa",), short, k, v)


def test_sdpa_grouped_query_attention_and_multihead_attention() -> None:
    q, kv = randn(2, 8, 5, 4, seed=1), randn(2, 2, 5, 4, seed=2)
    check(lambda a, b: F.scaled_dot_product_attention(a, b, b * 2, enable_gqa=True), ("sdpa",), q, kv)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = randn(3, 6, 16)
    mask = torch.ones(6, 6, dtype=torch.bool).triu(1)
    want = mha(x, x, x, attn_mask=mask, need_weights=False)[0]
    assert_equivalent(rewrites.apply(mha, ["sdpa"])(x, x, x, attn_mask=mask, need_weights=False)[0], want)
    with pytest.raises(RewriteNotApplicable, match="dropout_p"):
        rewritten(lambda a: F.scaled_dot_product_attention(a, a, a, dropout_p=0.1), "sdpa")(q)
