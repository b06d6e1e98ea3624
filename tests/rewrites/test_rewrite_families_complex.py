"""The complex family (buildsys/rewrites/complex.py, pair.py, pair_ops.py): complex tensors as real pairs through
elementwise ops, matmul / einsum, abs / angle / real / imag / view_as_real / polar, slicing and slice assignment,
complex factories and casts; compared with torch in complex64 and complex128, and no complex value in any graph."""

from __future__ import annotations

import pytest
import torch

from buildsys import rewrites
from buildsys.rewrites import RewriteNotApplicable
from tests.helpers.rewrite_checks import check, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
SHAPES = [(2, 4, 4), (3, 5, 5), (1, 6, 6)]


def _z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.complex(a, b)


def _out(*values: torch.Tensor) -> torch.Tensor:
    """Every value as real numbers in one tensor (complex ones through view_as_real)."""
    flat = [(torch.view_as_real(v.resolve_conj()) if v.is_complex() else v).flatten() for v in values]
    return torch.cat([f.to(flat[0].dtype) for f in flat])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_elementwise_ops(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    def elementwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z, w = _z(a, b), torch.polar(b.abs() + 0.1, a)
        return _out(z + w, z - 1.5, 2 * z, z * w, z / w, 1 / z, z * 1j, -z, z.conj(), z ** 2, z ** 0.5, torch.exp(z),
                    torch.log(w), torch.sqrt(z), torch.sin(z), z.cos(), torch.sgn(z), z.abs(), torch.angle(w),
                    z.real, torch.imag(w), torch.where(a > 0, z, w), z.masked_fill(b > 0.5, 2 - 1j))

    check(elementwise, "complex", randn(*shape, seed=1, dtype=dtype), randn(*shape, seed=2, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_and_einsum(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    def products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z, w = _z(a, b), _z(b, -a)
        return _out(z @ w, torch.matmul(z, w.mT), torch.bmm(z, w), torch.einsum("bij,bjk->bik", z, w),
                    torch.einsum("bij,bkj,bk->bi", z, w, z[:, :, 0]), torch.einsum("bij,bij->b", z, a.to(z.dtype)),
                    z @ a.to(z.dtype))

    check(products, "complex", randn(*shape, seed=3, dtype=dtype), randn(*shape, seed=4, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_slicing_and_slice_assignment(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128

    def sliced(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z = _z(a, b)
        out = torch.zeros(shape, dtype=complex_dtype)
        out[..., :2] = z[..., 1:3]
        out[:, 0] = 3.0 - 2j
        out[0, 1:, 2:] = z[0, :-1, :-2] * 2
        full = torch.full(shape[-1:], 0.5 + 1j, dtype=complex_dtype)
        return _out(out, z[:, ::2], z[..., -1], z.flip(-1), z.transpose(-1, -2), z.reshape(-1), full * z,
                    torch.ones_like(z) + z, a.to(complex_dtype) * z)

    check(sliced, "complex", randn(*shape, seed=5, dtype=dtype), randn(*shape, seed=6, dtype=dtype))


def test_rope_through_complex_numbers_leaves_no_complex_value_in_any_graph() -> None:
    from tests.helpers.rewrite_ops import _complex_mixing, _rope

    for shape in [(1, 4, 8), (2, 3, 10, 16)]:
        check(_rope, "complex", randn(*shape), graphs=len(shape) == 3)
    check(_complex_mixing, "complex", randn(2, 8, 16), graphs=True)

    def assign(a: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(a.shape, dtype=torch.complex64)
        out[..., 1:] = torch.view_as_complex(torch.stack([a, -a], -1))[..., :-1]
        return torch.view_as_real(out * out.conj() + out.abs().to(torch.complex64))

    check(assign, "complex", randn(3, 6), graphs=True)


def test_what_the_pair_does_not_implement_is_refused_not_computed() -> None:
    with pytest.raises(RewriteNotApplicable, match=r"rewrite 'complex' does not apply to torch.tanh"):
        rewrites.apply(Fn(lambda t: torch.view_as_real(torch.tanh(torch.view_as_complex(t)))), ["complex"])(randn(3, 2))
    with pytest.raises(RewriteNotApplicable, match="makes a complex tensor"):
        rewrites.apply(Fn(lambda t: torch.randn(3, dtype=torch.cfloat).real + t), ["complex"])(randn(3))
    with pytest.raises(RewriteNotApplicable, match="an operand that is a Python number"):
        rewrites.apply(Fn(lambda t: torch.view_as_real(torch.einsum("i,i->i", torch.complex(t, t), 2.0))),
                       ["complex"])(randn(3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,modes", [((2, 3, 8, 8), 3), ((1, 2, 6, 10), 2), ((3, 1, 5, 7), 2)])
def test_spectral_convolution_with_like_factories(shape: tuple[int, ...], modes: int, dtype: torch.dtype) -> None:
    """A Fourier-operator layer as people write it: rfft2, an output spectrum from zeros_like / empty_like of the
    complex one, its low modes assigned from an einsum with view_as_complex weights, irfft2 back at the input's
    size; the like-factories of a pair are pairs (a real dtype asked for gives a real tensor)."""
    channels = shape[1]
    weight = randn(channels, channels, modes, modes, 2, seed=9, dtype=dtype)

    def spectral(x: torch.Tensor) -> torch.Tensor:
        f = torch.fft.rfft2(x, norm="ortho")
        out = torch.zeros_like(f)
        out[:, :, :modes, :modes] = torch.einsum("bixy,ioxy->boxy", f[:, :, :modes, :modes],
                                                 torch.view_as_complex(weight))
        spare = torch.empty_like(f)
        spare[...] = 0
        mask = torch.ones_like(f, dtype=x.dtype)
        return torch.fft.irfft2(out + spare, s=x.shape[-2:], norm="ortho") * mask[..., :1].sum()

    check(spectral, ("fft", "complex"), randn(*shape, seed=8, dtype=dtype), graphs=shape[0] == 2)
