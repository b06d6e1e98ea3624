"""The complex family: complex tensors as real pairs, from every place a model makes them.

torch.view_as_complex, torch.complex, torch.polar, complex factories (torch.zeros / ones / full / empty
and their *_like forms with a complex dtype) and casts of real tensors to a complex dtype (Tensor.to)
return a `ComplexPair` (buildsys.rewrites.pair) instead of a complex tensor; the pair's own ops keep it
real to the end: elementwise arithmetic, matmul and einsum, abs / angle / real / imag / view_as_real /
polar, exp / log / sqrt / pow / sin / cos / sgn, where and masked_fill, slicing and slice assignment,
reshapes, reductions, cat / stack. This is the RoPE of LLaMA-style models (view_as_complex · polar ·
view_as_real), complex-weighted filters and spectral mixing. While it is in force, any function that
still returns a complex tensor raises RewriteNotApplicable: the rewritten graph has no complex dtype, or
the rewrite does not apply. For targets that set `rewrites: [complex]` before the FFT family existed it
still replaces torch.fft's four 1-D transforms (with the `fft` family's handlers).

Why a rewrite and not a decomposition: PyTorch has no decomposition that takes a complex dtype out of a
program (complex ops decompose into complex ops), and converters without complex dtypes refuse them.
Equivalence: tests/rewrites/test_rewrites.py, tests/rewrites/test_rewrite_families_complex.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from buildsys.rewrites.base import Handler, HandlerTable, Rewrite, RewriteNotApplicable

if TYPE_CHECKING:
    import torch

    from buildsys.rewrites.pair import ComplexPair


def view_as_complex(input: torch.Tensor) -> ComplexPair:
    from buildsys.rewrites.pair import ComplexPair

    if input.shape[-1] != 2:
        raise RuntimeError("Tensor must have a last dimension of size 2")
    return ComplexPair(input[..., 0], input[..., 1])


def complex_(real: torch.Tensor, imag: torch.Tensor, *, out: object = None) -> ComplexPair:
    import torch

    from buildsys.rewrites.pair import ComplexPair

    if out is not None:
        raise RewriteNotApplicable("complex", "torch.complex", "the out= argument")
    real, imag = torch.broadcast_tensors(real, imag)
    return ComplexPair(real, imag)


def polar(abs: torch.Tensor, angle: torch.Tensor, *, out: object = None) -> ComplexPair:
    from buildsys.rewrites.pair import polar as make

    if out is not None:
        raise RewriteNotApplicable("complex", "torch.polar", "the out= argument")
    return make(abs, angle)


def _real_of(dtype: object) -> torch.dtype | None:
    """The real dtype of the parts for a complex `dtype`, else None."""
    import torch

    return {torch.complex32: torch.float16, torch.complex64: torch.float32,
            torch.complex128: torch.float64}.get(dtype)  # type: ignore[call-overload]


def _factory(func: Any, name: str) -> Any:
    """torch.<name> (zeros, ones, full, empty and their *_like) making a pair where its dtype is complex (a
    complex fill_value without a dtype too) and itself otherwise; empty is zeros, as a graph constant is."""
    is_full, is_like, is_ones = name.startswith("full"), name.endswith("_like"), name.startswith("ones")

    def make(*args: Any, **kwargs: Any) -> object:  # (no str methods inside: TorchDynamo cannot trace them)
        import torch

        from buildsys.rewrites.pair import ComplexPair

        value = (args[1] if len(args) > 1 else kwargs.get("fill_value")) if is_full else None
        dtype = kwargs.get("dtype")
        if dtype is None and isinstance(value, complex):
            dtype = _complex_of(torch.get_default_dtype())
        real_dtype = _real_of(dtype)
        if real_dtype is None:
            return func(*args, **kwargs)
        kwargs = {**kwargs, "dtype": real_dtype}
        zeros = torch.zeros_like if is_like else torch.zeros
        if is_full:
            kwargs.pop("fill_value", None)
            number = complex(value)  # type: ignore[arg-type]
            return ComplexPair(func(args[0], number.real, **kwargs), func(args[0], number.imag, **kwargs))
        real = (torch.ones_like if is_like else torch.ones)(*args, **kwargs) if is_ones else zeros(*args, **kwargs)
        return ComplexPair(real, zeros(*args, **kwargs))
    return make


def _complex_of(dtype: object) -> object:
    import torch

    return {torch.float16: torch.complex32, torch.float64: torch.complex128}.get(dtype, torch.complex64)  # type: ignore[call-overload]


def to(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> object:
    """Tensor.to: a cast of a real tensor to a complex dtype makes a pair (imaginary part 0)."""
    import torch

    from buildsys.rewrites.pair import ComplexPair

    dtype = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), None))
    real_dtype = _real_of(dtype)
    if real_dtype is None or tensor.is_complex():
        return tensor.to(*args, **kwargs)
    real = tensor.to(real_dtype)
    return ComplexPair(real, torch.zeros_like(real))


#: The factories that make a pair when asked for a complex dtype.
_FACTORIES = ("zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like", "empty_like")


def _handlers() -> HandlerTable:
    import torch

    from buildsys.rewrites import dft

    table: dict[Callable[..., object], Handler] = {
        torch.view_as_complex: view_as_complex, torch.complex: complex_, torch.polar: polar, torch.Tensor.to: to}
    table.update({getattr(torch, name): _factory(getattr(torch, name), name) for name in _FACTORIES})
    table.update({getattr(torch.fft, name): dft.TRANSFORMS[name] for name in ("fft", "ifft", "rfft", "irfft")})
    return table


REWRITES = (
    Rewrite(
        name="complex",
        version=3,  # 3: zeros_like / empty_like of a pair (a spectral layer's output spectrum)
        removes=("aten::view_as_complex", "aten::complex", "aten::polar", "aten::view_as_real"),
        description="complex tensors (view_as_complex, complex, polar, complex factories and casts) as pairs "
                    "of real tensors through elementwise ops, matmul/einsum, slicing and slice assignment: no "
                    "complex dtype in the graph",
        handlers=_handlers,
        signs=(r"complex<f\d+>", r"\bcomplex(32|64|128)\b", r"Complex(Float|Double|Half)", r"complex types?\b",
               r"complex dtype", r"\b_conj(_copy|_physical)?\b"),  # a conjugate is of a complex value
    ),
)
