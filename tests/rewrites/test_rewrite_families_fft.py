"""The FFT family (buildsys/rewrites/fft.py): every torch.fft transform with n / s / dim / norm, stft and istft,
compared with torch on random inputs of several shapes in float32 and float64, and gone from every graph."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import check, randn

DTYPES = [torch.float32, torch.float64]
NORMS = [None, "ortho", "forward"]
ONE_D = ["fft", "ifft", "rfft", "ihfft"]           # real input → complex output
ONE_D_INVERSE = ["irfft", "hfft"]                  # half spectrum → real output
N_D = ["fft2", "ifft2", "rfft2", "ihfft2", "fftn", "ifftn", "rfftn", "ihfftn"]
N_D_INVERSE = ["irfft2", "hfft2", "irfftn", "hfftn"]


def _real(z: Any) -> torch.Tensor:
    """A complex result as its real view (what a model returns), a real one as itself."""
    return torch.view_as_real(z.resolve_conj()) if z.is_complex() else z


@pytest.mark.parametrize("name", ONE_D + ONE_D_INVERSE)
@pytest.mark.parametrize(("shape", "dim", "n"), [((4, 32), -1, None), ((2, 5, 31), 1, None), ((3, 20), -1, 24),
                                                 ((3, 20), 0, 2), ((6, 17), 1, 9)])
def test_one_dimensional_transforms_match_torch(name: str, shape: tuple[int, ...], dim: int, n: int | None) -> None:
    transform = getattr(torch.fft, name)
    for dtype in DTYPES:
        x = randn(*shape, dtype=dtype)
        for norm in NORMS:
            if name in ONE_D_INVERSE:  # from a (complex) half spectrum, as a model has it
                check(lambda t: transform(torch.fft.rfft(t, dim=dim) * 1.5, n=n, dim=dim, norm=norm), "fft", x)
                continue
            check(lambda t: _real(transform(t, n=n, dim=dim, norm=norm)), "fft", x)
            if name in ("fft", "ifft"):  # on a complex input too
                check(lambda t: _real(transform(torch.fft.fft(t, dim=dim), n=n, dim=dim, norm=norm)), "fft", x)


#: (shape, s, dim): what the 2-D transforms take, then what only the n-D ones do
TWO_D_CASES = [((3, 8, 10), None, None), ((2, 6, 9), (5, 12), None), ((2, 6, 9), None, (0, 2)),
               ((4, 5, 6), (3, -1), (2, 0))]
N_D_CASES = TWO_D_CASES + [((2, 3, 4, 5), (4, 4, 4), (1, 2, 3)), ((2, 3, 4, 5), None, (3, 1, 0))]


@pytest.mark.parametrize(("name", "shape", "s", "dim"), [
    (name, *case) for name in N_D + N_D_INVERSE for case in (TWO_D_CASES if name.endswith("2") else N_D_CASES)])
def test_two_and_n_dimensional_transforms_match_torch(name: str, shape: tuple[int, ...], s: tuple[int, ...] | None,
                                                      dim: tuple[int, ...] | None) -> None:
    transform = getattr(torch.fft, name)
    for dtype in DTYPES:
        x = randn(*shape, dtype=dtype)
        for norm in NORMS:
            kwargs: dict[str, Any] = {"norm": norm, **({"s": s} if s is not None else {}),
                                      **({"dim": dim} if dim else {})}
            if name in N_D_INVERSE:
                check(lambda t: transform(torch.fft.rfftn(t) * 0.5, **kwargs), "fft", x)
            else:
                check(lambda t: _real(transform(t, **kwargs)), "fft", x)


@pytest.mark.parametrize("name", ONE_D + ONE_D_INVERSE + N_D + N_D_INVERSE)
def test_no_fft_op_or_complex_value_is_left_in_any_graph(name: str) -> None:
    transform = getattr(torch.fft, name)
    if name in ONE_D_INVERSE + N_D_INVERSE:
        check(lambda t: transform(torch.fft.rfftn(t, dim=(-2, -1)) * 2.0), "fft", randn(2, 6, 8), graphs=True)
    else:
        check(lambda t: _real(transform(t)) * 2.0, "fft", randn(2, 6, 8), graphs=True)


def test_fftshift_and_frequency_domain_filters() -> None:
    def lowpass(t: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fftshift(torch.fft.fft2(t), dim=(-2, -1))
        keep = torch.zeros(t.shape[-2:])
        keep[2:-2, 2:-2] = 1.0
        return torch.fft.ifft2(torch.fft.ifftshift(spectrum * keep, dim=(-2, -1))).real

    for shape in [(1, 8, 8), (3, 9, 12)]:
        check(lowpass, "fft", randn(*shape), graphs=shape[0] == 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n_fft", "hop", "win", "center", "length"), [
    (64, 16, None, True, None), (64, 16, 48, True, 900), (128, 32, None, False, None), (100, 25, None, True, 1200),
    (64, 32, None, True, None)])
def test_istft_inverts_stft_as_torch_does(dtype: torch.dtype, n_fft: int, hop: int, win: int | None, center: bool,
                                          length: int | None) -> None:
    window = torch.hamming_window(win or n_fft, dtype=dtype)  # non-zero at its ends: center=False works too

    def roundtrip(t: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(t, n_fft, hop, win, window, center=center, return_complex=True)
        return torch.istft(spec * 0.5, n_fft, hop, win, window, center=center, length=length)

    for shape in [(1000,), (2, 1000)]:
        check(roundtrip, "fft", randn(*shape, dtype=dtype))


def test_istft_of_a_two_sided_or_normalized_spectrum() -> None:
    window = torch.hann_window(64)
    x = randn(2, 700)
    two_sided = torch.stft(x, 64, 16, window=window, onesided=False, return_complex=True)
    check(lambda t: torch.istft(torch.stft(t, 64, 16, window=window, onesided=False, return_complex=True), 64, 16,
                                window=window, onesided=False), "fft", x)
    check(lambda t: _real(torch.istft(torch.stft(t, 64, 16, window=window, onesided=False, return_complex=True), 64,
                                      16, window=window, onesided=False, return_complex=True)), "fft", x)
    check(lambda t: torch.istft(torch.stft(t, 64, 16, window=window, normalized=True, return_complex=True), 64, 16,
                                window=window, normalized=True), "fft", x, graphs=True)
    assert two_sided.shape[-2] == 64


def test_what_the_family_does_not_implement_is_refused_not_computed() -> None:
    from buildsys import rewrites
    from tests.helpers.rewrite_ops import Fn

    with pytest.raises(RewriteNotApplicable, match="rewrite 'fft' does not apply to torch.fft.rfft: the out= argument"):
        rewrites.apply(Fn(lambda t: torch.fft.rfft(t, out=torch.empty(0, dtype=torch.cfloat))), ["fft"])(randn(8))
    with pytest.raises(RuntimeError, match="rfft expects a real input tensor"):
        rewrites.apply(Fn(lambda t: torch.fft.rfft(torch.fft.fft(t)).real), ["fft"])(randn(8))
    dynamic = torch.export.Dim("length", min=4, max=64)
    with pytest.raises(RewriteNotApplicable, match=r"torch.fft.rfft: dimension -1 is dynamic"):
        torch.export.export(rewrites.apply(Fn(lambda t: torch.fft.rfft(t).abs()), ["fft"]), (randn(2, 16),),
                            dynamic_shapes=(({1: dynamic},),), strict=False)


@pytest.mark.parametrize("dim", [None, 1, -1, (0, 2), [1, 2]])
def test_fftshift_and_ifftshift_of_real_tensors_are_rolls(dim: object) -> None:
    """On a real tensor (a spectrum already taken as magnitudes, a centred kernel): odd and even sizes."""
    x = randn(3, 5, 4)
    check(lambda t: torch.fft.fftshift(t, dim=dim), "fft", x)
    check(lambda t: torch.fft.ifftshift(t, dim=dim), "fft", x)
    check(lambda t: torch.fft.ifftshift(torch.fft.fftshift(t, dim=dim), dim=dim) * 2, "fft", x, graphs=dim is None)
