"""Reference implementations of MIL's elementwise ops in NumPy: arithmetic, comparisons, activations, casts.

Each function computes in float32 (integers stay integers) and returns the exact result before the
interpreter rounds it to the declared output type; see `mil_registry` for the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from buildsys.formats.coreml.mil_registry import Args, op, refuse_other

if TYPE_CHECKING:
    import numpy as np

    Array = np.ndarray


#: MIL op type → the NumPy function that is the whole op (looked up when the op runs, so importing
#: this module imports no NumPy).
_BINARY = {
    "add": "add", "sub": "subtract", "mul": "multiply", "maximum": "maximum", "minimum": "minimum",
    "floor_div": "floor_divide", "mod": "mod", "pow": "power", "equal": "equal", "not_equal": "not_equal",
    "greater": "greater", "greater_equal": "greater_equal", "less": "less", "less_equal": "less_equal",
    "logical_and": "logical_and", "logical_or": "logical_or", "logical_xor": "logical_xor",
}
_UNARY = {
    "abs": "abs", "acos": "arccos", "asin": "arcsin", "atan": "arctan", "atanh": "arctanh", "ceil": "ceil",
    "cos": "cos", "cosh": "cosh", "exp": "exp", "exp2": "exp2", "floor": "floor", "logical_not": "logical_not",
    "round": "round", "sign": "sign", "sin": "sin", "sinh": "sinh", "sqrt": "sqrt", "square": "square",
    "tan": "tan", "tanh": "tanh", "identity": "asarray",
}


def _binary(name: str) -> Callable[[Args], "Array"]:
    """An elementwise binary op with NumPy broadcasting (MIL broadcasts like NumPy)."""

    def run(a: Args) -> "Array":
        import numpy as np

        with np.errstate(all="ignore"):  # inf/NaN are reported by the interpreter, by op
            return getattr(np, name)(a.tensor("x"), a.tensor("y"))

    return run


def _unary(name: str) -> Callable[[Args], "Array"]:
    def run(a: Args) -> "Array":
        import numpy as np

        with np.errstate(all="ignore"):
            return getattr(np, name)(a.tensor("x"))

    return run


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn))
for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


@op("relu")
def relu(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    return np.maximum(x, np.zeros((), x.dtype))


@op("sigmoid")
def sigmoid(a: Args) -> "Array":
    return sigmoid_of(a.tensor("x"))


@op("softsign")
def softsign(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    return x / (1 + np.abs(x))


@op("silu")
def silu(a: Args) -> "Array":
    x = a.tensor("x")
    return x * sigmoid_of(x)


@op("erf")
def erf(a: Args) -> "Array":
    return _erf(a.tensor("x"))


def sigmoid_of(x: "Array") -> "Array":
    import numpy as np

    # exp of a large negative argument overflows; this form never does.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _erf(x: "Array") -> "Array":
    """erf in float64 (scipy when present, else the standard library's, element by element)."""
    import numpy as np

    try:
        from scipy.special import erf

        return np.asarray(erf(x.astype(np.float64)), dtype=np.float32)
    except ImportError:
        import math

        return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64)).astype(np.float32)



@op("real_div")
def real_div(a: Args) -> "Array":
    """True division; an integer result (shape arithmetic) truncates toward zero, as coremltools
    infers it (float64 quotient cast to int32)."""
    import numpy as np

    x, y = a.tensor("x"), a.tensor("y")
    if x.dtype.kind in "iub" and y.dtype.kind in "iub":
        return np.true_divide(x.astype(np.float64), y.astype(np.float64))
    return np.true_divide(x, y)


@op("inverse")
def inverse(a: Args) -> "Array":
    x = a.tensor("x")
    return 1 / (x + a.number("epsilon", 1e-4))


@op("log")
def log(a: Args) -> "Array":
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(a.tensor("x") + a.number("epsilon", 1e-45))


@op("rsqrt")
def rsqrt(a: Args) -> "Array":
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 / np.sqrt(a.tensor("x") + a.number("epsilon", 1e-12))


@op("clip")
def clip(a: Args) -> "Array":
    import numpy as np

    return np.minimum(np.maximum(a.tensor("x"), a.number("alpha")), a.number("beta"))


@op("threshold")
def threshold(a: Args) -> "Array":
    import numpy as np

    return np.maximum(a.tensor("x"), a.number("alpha"))


@op("relu6")
def relu6(a: Args) -> "Array":
    import numpy as np

    return np.minimum(np.maximum(a.tensor("x"), 0), 6).astype(np.float32)


@op("leaky_relu")
def leaky_relu(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    return np.where(x >= 0, x, a.number("alpha", 0.01) * x)


@op("elu")
def elu(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    return np.where(x > 0, x, a.number("alpha", 1.0) * np.expm1(np.minimum(x, 0)))


@op("prelu")
def prelu(a: Args) -> "Array":
    """Per-channel slope on axis 1 (the channel axis of [N, C, …])."""
    import numpy as np

    x, alpha = a.tensor("x"), a.tensor("alpha")
    slope = alpha.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, x * slope)


@op("sigmoid_hard")
def sigmoid_hard(a: Args) -> "Array":
    import numpy as np

    return np.clip(a.number("alpha", 0.2) * a.tensor("x") + a.number("beta", 0.5), 0, 1).astype(np.float32)


@op("softplus")
def softplus(a: Args) -> "Array":
    import numpy as np

    return np.logaddexp(0, a.tensor("x")).astype(np.float32)


@op("softplus_parametric")
def softplus_parametric(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    alpha, beta = a.tensor("alpha").reshape(shape), a.tensor("beta").reshape(shape)
    return (alpha * np.logaddexp(0, beta * x)).astype(np.float32)


@op("linear_activation")
def linear_activation(a: Args) -> "Array":
    return a.number("alpha") * a.tensor("x") + a.number("beta", 0.0)


@op("scaled_tanh")
def scaled_tanh(a: Args) -> "Array":
    import numpy as np

    return a.number("alpha", 1.0) * np.tanh(a.number("beta", 1.0) * a.tensor("x"))


@op("thresholded_relu")
def thresholded_relu(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    return np.where(x > a.number("alpha", 1.0), x, 0).astype(x.dtype)


@op("clamped_relu")
def clamped_relu(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    return np.minimum(np.where(x >= 0, x, a.number("alpha") * x), a.number("beta"))


@op("gelu", refuse=refuse_other("mode", "EXACT", ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION")))
def gelu(a: Args) -> "Array":
    import numpy as np

    x = a.tensor("x")
    mode = a.text("mode", "EXACT")
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * sigmoid_of(np.float32(1.702) * x)
    return (0.5 * x.astype(np.float64) * (1 + _erf(x / np.float32(np.sqrt(2))).astype(np.float64))).astype(np.float32)


@op("select")
def select(a: Args) -> "Array":
    import numpy as np

    return np.where(a.tensor("cond").astype(bool), a.tensor("a"), a.tensor("b"))


@op("cast")
def cast(a: Args) -> "Array":
    """Computes nothing: the interpreter's rounding to the declared output type is the cast. Float to
    integer truncates toward zero (NumPy's astype, coremltools' value inference)."""
    x = a.tensor("x")
    target = a.out_dtype()
    return x if target.kind == "f" else x.astype(target)


@op("fill")
def fill(a: Args) -> "Array":
    import numpy as np

    return np.full(a.integers("shape"), a.number("value", 0.0), dtype=np.float32)


@op("fill_like")
def fill_like(a: Args) -> "Array":
    import numpy as np

    return np.full(a.tensor("ref_tensor").shape, a.number("value", 0.0), dtype=np.float32)
