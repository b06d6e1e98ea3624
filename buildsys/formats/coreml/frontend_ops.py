"""Translations of PyTorch ops that coremltools' torch frontends lack or refuse for a whole class of calls, each
written once in MIL ops Core ML has (swapped in by `frontend.frontend_patches`, for both frontends).

- `prod` (torch.prod over every element or one dim, with keepdim): MIL's `reduce_prod`. coremltools has no
  translation at all, so every product reduction was refused, and with it whatever a rewrite writes as one
  (the scatter family's `prod` reductions: index_reduce, scatter_reduce).
- `bitwise_or` / `bitwise_xor` (and the `|` / `^` operators) of bools: MIL's `logical_or` / `logical_xor`, as
  coremltools already does `bitwise_and`. A comparison combined with `|` is how PyTorch's own decompositions
  write predicates (isclose: `eq | (finite & close)`).
- `isclose` (which TorchScript keeps whole): PyTorch's own definition, `a == b`, or both NaN with `equal_nan`, or
  a finite |a − b| within atol + |rtol · b|.
- `isinf`, `isfinite`, `isposinf`, `isneginf`: comparisons with ±inf (|x| < inf is false for inf and NaN alike).
  coremltools has `isnan` only, so every NaN-and-infinity guard (nan_to_num by hand, a masked log) was refused.
- `acosh`, `asinh`: coremltools registers them but calls MIL builders that do not exist ("type object 'Builder' has
  no attribute 'acosh'"): log(x + √((x − 1)(x + 1))) and sign(x)·log(|x| + √(x² + 1)), as log(2|x|) past 1e8
  (x² would overflow float32) and asinh by its odd series below 0.05 (log(1 + x) would lose x's digits).
- `argmax` / `argmin` without a dim (the index into the flattened tensor): `reduce_argmax` over the flattened
  input. coremltools passes `axis=None` on, which MIL rejects ("pop from empty list").
- `native_group_norm` with its mean and rstd ([N, groups], biased variance, as torch's kernel): coremltools binds
  them as None, so a graph that reads them ("Cannot add const (…, None, None)") was refused; a weight or bias
  given as None is left out.
- `group_norm` / `native_group_norm` of a dynamic batch: the grouped shape read from the tensor at run time.
  coremltools writes the batch's symbol into a constant shape ("Cannot add const [is0, 32, 1, 799]": a wav2vec2
  or HuBERT feature extractor, any GroupNorm model exported with a dynamic batch); with every size known its own
  translation stays.
- `layer_norm` / `native_layer_norm` whose weight or bias is computed at run time (an input, or from one): MIL's
  layer_norm takes only constant gamma and beta ("Input gamma must be const at compile time"), so the
  normalisation without them, then a multiply and an add; constant ones keep coremltools' own translation.
- `floor_divide` / `floordiv` (`//`) of integers: an integer, as in torch. coremltools casts every quotient to
  float32, so a size a dynamic shape computes with `//` (torch.export writes `(batch * 9216) // 144` for a
  reshape's inferred size) became a float, and the `expand` or `view` given it was refused ("Tensors in 'values'
  of the concat op should share the same data type"); float quotients keep coremltools' translation.
- `alias` (torch.export's view of a whole tensor): `alias_copy`'s translation, which coremltools has under that
  name only ("Unsupported fx node alias": Swin-type attention through `.pt2`).
"""

from __future__ import annotations

from typing import Any


def op_patches(table: dict[str, Any]) -> dict[str, Any]:
    """The translations below, by the names the frontends look them up by (`table`: coremltools' registry)."""
    return {**_prod(table), **_boolean_bitwise(table), **_isclose(table), **_infinities(table),
            **_inverse_hyperbolic(table), **_flat_arg_reduce(table), **_runtime_layer_norm(table),
            **_group_norm_statistics(table), **_integer_floor_divide(table), **_alias(table),
            **_float_of_integers(table)}


def _value(v: Any) -> Any:
    return v.val if hasattr(v, "val") else v


def _prod(table: dict[str, Any]) -> dict[str, Any]:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    if "prod" in table:
        return {}

    def prod(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=1)
        x = inputs[0]
        # aten::prod(self, dtype) holds no dim; prod.dim_int(self, dim, keepdim, dtype) does
        with_dim = len(inputs) >= 3 or "dim" in str(getattr(node, "kind", ""))
        dim = _value(inputs[1]) if with_dim and len(inputs) > 1 else None
        keepdim = bool(_value(inputs[2])) if with_dim and len(inputs) > 2 and _value(inputs[2]) is not None else False
        if dim is None:
            context.add(mb.reduce_prod(x=x, keep_dims=False, name=node.name))
        else:
            context.add(mb.reduce_prod(x=x, axes=[int(dim)], keep_dims=keepdim, name=node.name))

    return {"prod": prod, "prod.dim_int": prod}  # the export frontend looks overloads up by name


def _boolean_bitwise(table: dict[str, Any]) -> dict[str, Any]:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.mil import types

    def translation(logical: Any, name: str) -> Any:
        original = table.get(name)

        def bitwise(context: Any, node: Any) -> None:
            x, y = _get_inputs(context, node, expected=2)
            if not (types.is_bool(x.dtype) and types.is_bool(y.dtype)):
                if original is not None:
                    return original(context, node)
                raise NotImplementedError(f"`{name}` of {x.dtype} and {y.dtype}: Core ML has it for booleans only")
            context.add(logical(x=x, y=y, name=node.name))

        return bitwise

    out = {}
    for names, logical in ((("bitwise_or", "or"), mb.logical_or), (("bitwise_xor", "xor"), mb.logical_xor)):
        if all(n in table for n in names):
            continue
        patched = translation(logical, names[0])
        out.update({n: patched for n in names})
    return out


def _isclose(table: dict[str, Any]) -> dict[str, Any]:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    if "isclose" in table:
        return {}

    def isclose(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=2)
        a, b = inputs[0], inputs[1]
        rtol, atol, equal_nan = ([_value(v) for v in inputs[2:5]] + [1e-5, 1e-8, False][len(inputs) - 2:])[:3]
        error = mb.abs(x=mb.sub(x=a, y=b))
        allowed = mb.add(x=mb.abs(x=mb.mul(x=b, y=float(rtol))), y=float(atol))
        # error < inf is false for inf and NaN: the finite errors within the allowed one
        within = mb.logical_and(x=mb.less_equal(x=error, y=allowed), y=mb.less(x=error, y=float("inf")))
        close = mb.logical_or(x=mb.equal(x=a, y=b), y=within)
        if equal_nan:
            both_nan = mb.logical_and(x=mb.not_equal(x=a, y=a), y=mb.not_equal(x=b, y=b))
            close = mb.logical_or(x=close, y=both_nan)
        context.add(mb.identity(x=close, name=node.name))

    return {"isclose": isclose}


def _infinities(table: dict[str, Any]) -> dict[str, Any]:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.mil import types

    def predicate(test: Any) -> Any:
        def translate(context: Any, node: Any) -> None:
            x = _get_inputs(context, node, expected=1)[0]
            if not types.is_float(x.dtype):  # an integer is finite
                x = mb.cast(x=x, dtype="fp32")
            context.add(mb.identity(x=test(x), name=node.name))

        return translate

    tests = {"isinf": lambda x: mb.equal(x=mb.abs(x=x), y=float("inf")),
             "isfinite": lambda x: mb.less(x=mb.abs(x=x), y=float("inf")),
             "isposinf": lambda x: mb.equal(x=x, y=float("inf")),
             "isneginf": lambda x: mb.equal(x=x, y=float("-inf"))}
    return {name: predicate(test) for name, test in tests.items() if name not in table}


def _inverse_hyperbolic(table: dict[str, Any]) -> dict[str, Any]:
    import math

    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    if hasattr(mb, "acosh") and hasattr(mb, "asinh"):
        return {}
    large, ln2 = 1e8, math.log(2.0)

    def acosh(context: Any, node: Any) -> None:
        x = mb.cast(x=_get_inputs(context, node, expected=1)[0], dtype="fp32")
        near = mb.log(x=mb.add(x=x, y=mb.sqrt(x=mb.mul(x=mb.sub(x=x, y=1.0), y=mb.add(x=x, y=1.0)))))
        far = mb.add(x=mb.log(x=mb.minimum(x=x, y=3.0e38)), y=ln2)
        context.add(mb.select(cond=mb.greater(x=x, y=large), a=far, b=near, name=node.name))

    def asinh(context: Any, node: Any) -> None:
        x = mb.cast(x=_get_inputs(context, node, expected=1)[0], dtype="fp32")
        a = mb.abs(x=x)
        square = mb.mul(x=x, y=x)
        series = mb.mul(x=x, y=mb.add(x=1.0, y=mb.mul(x=square, y=mb.add(
            x=-1.0 / 6, y=mb.mul(x=square, y=mb.add(x=3.0 / 40, y=mb.mul(x=square, y=-15.0 / 336)))))))
        bounded = mb.minimum(x=a, y=large)  # no overflow in the branch where() leaves unused
        near = mb.log(x=mb.add(x=bounded, y=mb.sqrt(x=mb.add(x=mb.mul(x=bounded, y=bounded), y=1.0))))
        magnitude = mb.select(cond=mb.greater(x=a, y=large), a=mb.add(x=mb.log(x=a), y=ln2), b=near)
        signed = mb.mul(x=mb.sign(x=x), y=magnitude)
        context.add(mb.select(cond=mb.less(x=a, y=0.05), a=series, b=signed, name=node.name))

    return {"acosh": acosh, "asinh": asinh}


def _flat_arg_reduce(table: dict[str, Any]) -> dict[str, Any]:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs

    if "argmax" not in table:
        return {}
    original = table["argmax"]

    def argmax(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=1)
        dim = _value(inputs[1]) if len(inputs) > 1 else None
        dim = _value(_get_kwinputs(context, node, "dim", default=[dim])[0])
        if dim is not None:
            return original(context, node)
        keepdim = _value(inputs[2]) if len(inputs) > 2 else False
        keepdim = bool(_value(_get_kwinputs(context, node, "keepdim", default=[keepdim])[0]))
        x = inputs[0]
        reduce = mb.reduce_argmin if "argmin" in str(node.kind) else mb.reduce_argmax
        flat = mb.reshape(x=x, shape=[-1])
        if not keepdim:
            context.add(reduce(x=flat, axis=0, keep_dims=False, name=node.name))
            return
        index = reduce(x=flat, axis=0, keep_dims=True)
        context.add(mb.reshape(x=index, shape=[1] * max(x.rank, 1), name=node.name))

    return {name: argmax for name, func in table.items() if func is original}


def _runtime_layer_norm(table: dict[str, Any]) -> dict[str, Any]:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    if "layer_norm" not in table:
        return {}
    original = table["layer_norm"]

    def layer_norm(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=2)
        weight, bias = (inputs[i] if len(inputs) > i else None for i in (2, 3))
        if all(v is None or _value(v) is not None for v in (weight, bias)):  # absent or constant
            return original(context, node)
        x, shape = inputs[0], _value(inputs[1])
        eps = _value(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else 1e-5
        out = mb.layer_norm(x=x, axes=list(range(-len(shape), 0)), epsilon=float(eps))
        if weight is not None:
            out = mb.mul(x=out, y=weight)
        if bias is not None:
            out = mb.add(x=out, y=bias)
        out = mb.identity(x=out, name=node.name)
        if "native_layer_norm" in str(node.kind):  # (out, mean, rstd), as coremltools binds it: the stats unused
            context.add((out, None, None), torch_name=node.name)
        else:
            context.add(out)

    return {name: layer_norm for name, func in table.items() if func is original}


def _group_norm_statistics(table: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs, _group_norm_impl
    from coremltools.converters.mil.mil.types.symbolic import any_symbolic, is_symbolic

    if "native_group_norm" not in table:
        return {}
    original: Any = table.get("group_norm")  # absent from an older coremltools: native_group_norm only

    def statistics(x: Any, groups: int, eps: float) -> tuple[Any, Any, Any]:
        """(x as [N, groups, rest], its mean and rstd per group); N may be a symbol (a dynamic batch), read from
        the tensor's shape at run time rather than written into a constant shape."""
        if is_symbolic(x.shape[0]):
            batch = mb.slice_by_size(x=mb.shape(x=x), begin=[0], size=[1])
            shape = mb.concat(values=[batch, np.array([groups, -1], dtype=np.int32)], axis=0)
        else:
            shape = [int(x.shape[0]), groups, -1]
        grouped = mb.reshape(x=x, shape=shape)
        mean = mb.reduce_mean(x=grouped, axes=[2], keep_dims=False)
        centered = mb.sub(x=grouped, y=mb.expand_dims(x=mean, axes=[2]))
        variance = mb.reduce_mean(x=mb.mul(x=centered, y=centered), axes=[2], keep_dims=False)
        return centered, mean, mb.rsqrt(x=variance, epsilon=eps)

    def normalised(x: Any, groups: int, weight: Any, bias: Any, eps: float, name: str | None = None,
                   stats: tuple[Any, Any, Any] | None = None) -> Any:
        """The group norm of `x`: coremltools' own where every size is known, else from `statistics` (`stats`:
        theirs for `x`, if made already)."""
        if not any_symbolic(x.shape):
            out = _group_norm_impl(x, groups, weight, bias, eps)
            return out if name is None else mb.identity(x=out, name=name)
        centered, _, rstd = stats or statistics(x, groups, eps)
        out = mb.reshape(x=mb.mul(x=centered, y=mb.expand_dims(x=rstd, axes=[2])), shape=mb.shape(x=x))
        per_channel = [1, int(x.shape[1])] + [1] * (x.rank - 2)
        for value, combine in ((weight, mb.mul), (bias, mb.add)):
            if value is not None:
                out = combine(x=out, y=mb.reshape(x=value, shape=per_channel))
        return out if name is None else mb.identity(x=out, name=name)

    def present(v: Any) -> Any:
        return v if v is not None and not (hasattr(v, "val") and v.val is None and v.op is None) else None

    def native_group_norm(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, expected=8)
        x = inputs[0]
        weight, bias = (present(v) for v in inputs[1:3])
        groups, eps = int(_value(inputs[6])), float(_value(inputs[7]))
        stats = statistics(x, groups, eps)
        _, mean, rstd = stats
        out = normalised(x, groups, weight, bias, eps, stats=stats)
        outputs = list(getattr(node, "outputs", []) or [])
        if len(outputs) == 3:  # the TorchScript frontend: one name per output
            for value, name in zip((out, mean, rstd), outputs):
                context.add(value, torch_name=name)
        else:  # the torch.export frontend: the tuple, which its getitem nodes index
            context.add((out, mean, rstd), torch_name=node.name)

    def group_norm(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=2)
        x = inputs[0]
        if not is_symbolic(x.shape[0]):
            return original(context, node)
        weight, bias = (_get_kwinputs(context, node, key, default=[inputs[i] if len(inputs) > i else None])[0]
                        for i, key in ((2, "weight"), (3, "bias")))
        weight, bias = present(weight), present(bias)
        eps = float(_value(inputs[4])) if len(inputs) > 4 and _value(inputs[4]) is not None else 1e-5
        context.add(normalised(x, int(_value(inputs[1])), weight, bias, eps, name=node.name))

    patches = {"native_group_norm": native_group_norm}
    if original is not None:
        patches.update({name: group_norm for name, func in table.items() if func is original})
    return patches


def _integer_floor_divide(table: dict[str, Any]) -> dict[str, Any]:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, promote_input_dtypes
    from coremltools.converters.mil.mil import types

    if "floor_divide" not in table:
        return {}
    original = table["floor_divide"]

    def floor_divide(context: Any, node: Any) -> None:
        x, y = promote_input_dtypes(_get_inputs(context, node, expected=2))
        if not types.is_int(x.dtype):
            return original(context, node)
        context.add(mb.floor_div(x=x, y=y, name=node.name))  # MIL's floor_div rounds toward -inf, as torch

    return {name: floor_divide for name, func in table.items() if func is original}


def _alias(table: dict[str, Any]) -> dict[str, Any]:
    """`aten.alias` (a view of the whole tensor: torch.export writes it where a model returns or slices a tensor
    unchanged, as video Swin's attention does) translated as `alias_copy`, which coremltools has: the same values."""
    if "alias" in table or "alias_copy" not in table:
        return {}
    return {"alias": table["alias_copy"]}


#: torch's unary ops whose result is floating for an integer or boolean input (`torch.sqrt(torch.tensor([8]))` is
#: 2.83): coremltools hands the integer to the MIL op, which takes fp16 / fp32 only ("expects tensor or scalar of dtype
#: from type domain ['fp16', 'fp32'] but got tensor[1,int32]": RAFT's correlation scale).
#: (`reciprocal` has its own exact translation, frontend.py.)
FLOAT_VALUED = ("sqrt", "rsqrt", "exp", "exp2", "log", "log2", "log10", "log1p", "expm1", "sin", "cos", "tan", "asin",
                "acos", "atan", "sinh", "cosh", "tanh", "sigmoid", "erf")


def _float_of_integers(table: dict[str, Any]) -> dict[str, Any]:
    """Each FLOAT_VALUED translation given an integer or boolean input casts it to float32 first, as torch computes it."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    def promoted(original: Any) -> Any:
        def translate(context: Any, node: Any) -> None:
            try:
                x = context[node.inputs[0]]
            except (KeyError, IndexError, TypeError, ValueError):  # not a node's output: the translation's own case
                return original(context, node)
            if getattr(x, "dtype", None) is not None and (types.is_int(x.dtype) or types.is_bool(x.dtype)):
                cast = mb.cast(x=x, dtype="fp32", name=f"{node.name}_float_input")
                context.add(cast)
                node.inputs = [cast.name, *list(node.inputs)[1:]]
            return original(context, node)

        return translate

    originals = {table[name] for name in FLOAT_VALUED if name in table}
    return {name: promoted(func) for name, func in table.items() if func in originals}
