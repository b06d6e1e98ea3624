"""coremltools' converter as modelbuild drives it: a frontend patch, its failures in words, a package made reproducible
(shared by the Core ML steps and the decoder LM's Core ML step)."""

from __future__ import annotations

import json
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from buildsys.formats.coreml.frontend_inplace import zero_translation, zeroed_slices
from buildsys.formats.coreml.frontend_ops import op_patches


@contextmanager
def frontend_patches() -> Iterator[None]:
    """coremltools' torch frontends (the TorchScript and the torch.export one share the op table) with the op
    translations below swapped in, for one conversion."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    patches = {**_per_channel_prelu(table), **_scalar_casts(table), **_scalar_where(table),
               **_clamp_bounds(table), **_exact_reciprocal(table),
               **_diagonal(table),
               **_new_ones(table), **_full_like_dtype(table), **op_patches(table), **zero_translation(table)}
    # the same translation registered under other names ('where.self' for torch.export's aten.where.self)
    patches.update({alias: patches[name] for name in list(patches) for alias, func in table.items()
                    if func is table.get(name) and alias not in patches})
    originals = {name: table.get(name) for name in patches}
    table.update(patches)
    try:
        with _computed_bias(), zeroed_slices():
            yield
    finally:
        for name, original in originals.items():
            if original is None:
                table.pop(name, None)
            else:
                table[name] = original


@contextmanager
def _computed_bias() -> Iterator[None]:
    """MIL's conv and conv_transpose with a bias computed in the graph (a functional conv given its bias as an
    input, a hypernetwork's), built as the op without it plus the bias broadcast over the spatial axes.

    MIL requires a constant bias ("Input bias must be const at compile time") although it takes computed weights;
    the sum is the same. The builder's ops, not a translation, are swapped: every frontend path that makes a conv
    goes through them, and a constant bias goes to the original op unchanged.
    """
    from coremltools.converters.mil import Builder as mb

    originals = {name: mb.__dict__[name] for name in ("conv", "conv_transpose")}

    def patched(original: Any) -> Any:
        def add_op(cls: Any, **kwargs: Any) -> Any:
            bias = kwargs.get("bias")
            if bias is None or not hasattr(bias, "rank") or bias.val is not None:  # absent, a NumPy array, a const
                return original.__func__(cls, **kwargs)
            del kwargs["bias"]
            name = kwargs.pop("name", None)
            unbiased = original.__func__(cls, **kwargs)
            shaped = mb.reshape(x=bias, shape=[1, -1] + [1] * (kwargs["x"].rank - 2))
            return mb.add(x=unbiased, y=shaped, **({"name": name} if name else {}))

        return classmethod(add_op)

    for name, original in originals.items():
        setattr(mb, name, patched(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(mb, name, original)


def _per_channel_prelu(table: dict[str, Any]) -> dict[str, Any]:
    """Convert PReLU after Linear / Conv1d ([N, C] / [N, C, L]) with one alpha per channel.

    coremltools 9 lifts such inputs to rank 3, where MIL's prelu accepts only a single shared
    alpha, and fails ("rank 3 or rank 5 input is only supported when all the values of alpha are
    same") on exactly what MTCNN's ONet/RNet do. Lifting to rank 4 ([N, C, L, 1]) is the same
    computation with per-channel alpha supported.
    """
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    if "prelu" not in table:
        return {}
    original = table["prelu"]

    def prelu(context: Any, node: Any) -> None:
        x, alpha = _get_inputs(context, node, expected=2)
        channels = x.shape[1] if x.rank >= 2 else None
        if x.rank not in (2, 3) or alpha.val is None or not isinstance(channels, int):
            return original(context, node)
        axes = [2, 3] if x.rank == 2 else [3]
        slopes = (np.ones((channels,)) * np.asarray(alpha.val).reshape(-1)).astype(np.float32)
        lifted = mb.prelu(x=mb.expand_dims(x=x, axes=axes), alpha=slopes)
        context.add(mb.squeeze(x=lifted, axes=axes, name=node.name))

    return {"prelu": prelu}


def _scalar_casts(table: dict[str, Any]) -> dict[str, Any]:
    """`int(t)` / `bool(t)` of a constant one-element tensor (a size computed from shapes: MobileViT's patch
    counts, YOLO's grid sizes) folded to a constant.

    coremltools' `_cast` calls `int(x.val)` on the constant, a (1,)-shaped array where the size went through
    a tensor op; NumPy 2 refuses that ("only 0-dimensional arrays can be converted to Python scalars"). Its
    single value, taken with `.item()`, is what was meant; anything else goes to the original translation.
    """
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    def patched(name: str, kind: type) -> Any:
        original = table[name]

        def cast(context: Any, node: Any) -> None:
            (x,) = _get_inputs(context, node, expected=1)
            value = x.val if x.can_be_folded_to_const() else None
            if isinstance(value, np.ndarray) and value.ndim > 0 and value.size == 1:
                context.add(mb.const(val=kind(value.reshape(()).item()), name=node.name))
                return
            original(context, node)

        return cast

    return {name: patched(name, kind) for name, kind in (("int", int), ("_int", int), ("bool", bool), ("_bool", bool))
            if name in table}


def _scalar_where(table: dict[str, Any]) -> dict[str, Any]:
    """`where` of three 0-d tensors as a select.

    coremltools broadcasts where's operands to a shape it concatenates from their dims, and three 0-d operands
    have none ("Concat concat_0 got 0 values"): what the core ATen decomposition of `lerp` with a Python weight
    computes (its coefficient, `where(|w| < 0.5, w, w - 1)`). Operands of any other rank go to the original.
    """
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, promote_input_dtypes
    from coremltools.converters.mil.mil import types

    if "where" not in table:
        return {}
    original = table["where"]

    def where(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node)
        if len(inputs) != 3 or any(getattr(x, "rank", None) != 0 for x in inputs):
            return original(context, node)
        cond, a, b = inputs
        a, b = promote_input_dtypes([a, b])
        if not types.is_bool(cond.dtype):
            cond = mb.cast(x=cond, dtype="bool")
        context.add(mb.select(cond=cond, a=a, b=b, name=node.name))

    return {"where": where}


def _clamp_bounds(table: dict[str, Any]) -> dict[str, Any]:
    """`clamp` with a bound that is not a constant scalar as PyTorch defines it, `min(max(x, lo), hi)`.

    coremltools computes `max(min(x, hi), lo)` there, which differs wherever `lo > hi` (PyTorch gives `hi`):
    a clamp between two tensors (OpInfo's clamp sample: max_rel 1.9). Scalar bounds go to the original, which
    folds or uses MIL's clip.
    """
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, promote_input_dtypes

    if "clamp" not in table:
        return {}
    original = table["clamp"]

    def scalar(var: Any) -> bool:
        return var is None or (var.val is not None and np.ndim(var.val) == 0)

    def clamp(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, expected=[1, 2, 3])
        lo = inputs[1] if len(inputs) > 1 else None
        hi = inputs[2] if len(inputs) > 2 else None
        if scalar(lo) and scalar(hi):
            return original(context, node)
        present = [v for v in (inputs[0], lo, hi) if v is not None]
        promoted = iter(promote_input_dtypes(present))
        x = next(promoted)
        lo, hi = (next(promoted) if v is not None else None for v in (lo, hi))
        if lo is not None:
            x = mb.maximum(x=x, y=lo, name=node.name if hi is None else node.name + "_lo")
        if hi is not None:
            x = mb.minimum(x=x, y=hi, name=node.name)
        context.add(x, node.name)

    return {"clamp": clamp}


def _exact_reciprocal(table: dict[str, Any]) -> dict[str, Any]:
    """`reciprocal` (what `1 / x` traces to) as 1 / x. coremltools writes MIL's `inverse` with its default epsilon,
    1 / (x + 1e-4), on every Core ML runtime: 1 % off at x = 0.01, and finite at 0 where PyTorch gives inf (the
    Jacobi rotations of the linalg rewrite: every eigenvalue 0.8 % low). With epsilon 0 it is the reciprocal."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.mil import types

    if "reciprocal" not in table:
        return {}
    original = table["reciprocal"]

    def reciprocal(context: Any, node: Any) -> None:
        x = _get_inputs(context, node, expected=1)[0]
        if not types.is_float(x.dtype):
            return original(context, node)
        context.add(mb.inverse(x=x, epsilon=types.nptype_from_builtin(x.dtype)(0), name=node.name))

    return {"reciprocal": reciprocal}


def _diagonal(table: dict[str, Any]) -> dict[str, Any]:
    """`torch.diagonal(x, offset, dim1, dim2)` for any offset and pair of dims, as a strided slice.

    coremltools translates only offset 0 over dims 0 and 1, and as MIL's band_part, which keeps the [n, m] matrix
    with zeros off the diagonal instead of returning its [min(n, m)] diagonal (a wrong shape, not a refusal); any
    other call it refuses. The two dims moved last, flattened to n·m, the diagonal is every (m + 1)-th element
    from `offset` (from −offset·m below the main diagonal), appended as the last dim as torch does. Symbolic sizes
    in the two dims (or more than one among the others) go to the original.
    """
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs

    if "diagonal" not in table:
        return {}
    original = table["diagonal"]

    def value(v: Any) -> Any:
        return v.val if hasattr(v, "val") else v

    def diagonal(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=1)
        x = inputs[0]
        positional = [value(v) for v in inputs[1:4]] + [0, 0, 1][len(inputs) - 1:]
        offset, dim1, dim2 = (value(_get_kwinputs(context, node, key, default=[default])[0])
                              for key, default in zip(("offset", "dim1", "dim2"), positional))
        if not all(isinstance(v, (int,)) or getattr(v, "ndim", None) == 0 for v in (offset, dim1, dim2)):
            return original(context, node)
        offset, rank = int(offset), x.rank
        dim1, dim2 = int(dim1) % rank, int(dim2) % rank
        rest = [d for d in range(rank) if d not in (dim1, dim2)]
        n, m = x.shape[dim1], x.shape[dim2]
        leading = [x.shape[d] for d in rest]
        if not (isinstance(n, int) and isinstance(m, int)) or sum(not isinstance(d, int) for d in leading) > 1:
            return original(context, node)
        length = max(0, min(n, m - offset) if offset >= 0 else min(n + offset, m))
        if length == 0:
            return original(context, node)
        moved = mb.transpose(x=x, perm=rest + [dim1, dim2]) if rest + [dim1, dim2] != list(range(rank)) else x
        flat = mb.reshape(x=moved, shape=[d if isinstance(d, int) else -1 for d in leading] + [n * m])
        start = offset if offset >= 0 else -offset * m
        end = start + (length - 1) * (m + 1) + 1
        count = len(leading) + 1
        context.add(mb.slice_by_index(x=flat, begin=[0] * (count - 1) + [start], end=[0] * (count - 1) + [end],
                                      stride=[1] * (count - 1) + [m + 1], begin_mask=[True] * (count - 1) + [False],
                                      end_mask=[True] * (count - 1) + [False], name=node.name))

    return {"diagonal": diagonal}


def _new_ones(table: dict[str, Any]) -> dict[str, Any]:
    """`Tensor.new_ones(size, dtype=...)` as a fill of ones (cast to an integer or bool dtype when one is given), as
    coremltools does new_zeros. coremltools has new_zeros, new_full and new_empty but no new_ones, which Hugging Face
    encoders call on their attention masks (DETR, MiniLM: the TorchScript route refused "new_ones")."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    import numpy as np
    from coremltools.converters.mil.frontend.torch.utils import NUM_TO_DTYPE_STRING
    from coremltools.converters.mil.mil import types

    if "new_ones" in table:
        return {}

    def new_ones(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node)
        shape = inputs[1]
        if isinstance(shape, list) and shape:  # a dynamic size: its scalars concatenated
            shape = mb.concat(values=shape, axis=0)
        dtype = inputs[2].val if len(inputs) > 2 and inputs[2] is not None else None
        target = NUM_TO_DTYPE_STRING.get(int(dtype)) if dtype is not None else None
        if isinstance(shape, list) or (shape.val is not None and np.size(shape.val) == 0):  # new_ones(()): a 0-d one
            ones = mb.const(val=np.float32(1.0))
        else:
            ones = mb.fill(shape=shape if types.is_int(shape.dtype) else mb.cast(x=shape, dtype="int32"), value=1.0)
        context.add(mb.identity(x=ones, name=node.name) if target is None or target.startswith("fp")
                    else mb.cast(x=ones, dtype=target, name=node.name))

    return {"new_ones": new_ones}


def _full_like_dtype(table: dict[str, Any]) -> dict[str, Any]:
    """`full_like(x, value, dtype=None)` (torch.export's zeros_like / ones_like / full_like) in x's dtype, or the one
    given, as PyTorch does. coremltools' fill_like takes its dtype from the Python value, so zeros_like of a float
    tensor became int32 and the matmul it fed failed ("y has dtype fp32 whereas x has dtype int32": DETR's decoder,
    which starts from zeros_like of its query embeddings)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.utils import NUM_TO_DTYPE_STRING
    from coremltools.converters.mil.mil import types

    if "full_like" not in table:
        return {}

    def full_like(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=2)
        x, value = inputs[0], inputs[1].val
        dtype = inputs[2].val if len(inputs) > 2 and inputs[2] is not None else None
        wanted = NUM_TO_DTYPE_STRING.get(int(dtype)) if dtype is not None else types.builtin_to_string(x.dtype)
        if value is None or wanted is None:
            return original(context, node)
        kind = float if wanted.startswith("fp") else bool if wanted == "bool" else int
        filled = mb.fill(shape=mb.shape(x=x), value=kind(value))  # fill_like is iOS16+
        context.add(mb.cast(x=filled, dtype=wanted, name=node.name) if wanted not in ("fp32", "int32") else
                    mb.identity(x=filled, name=node.name))

    original = table["full_like"]
    return {"full_like": full_like}


def conversion_failure(exc: BaseException) -> str:
    """One line naming the PyTorch op coremltools could not convert, when it says which."""
    text = str(exc)
    op = re.search(r"convert function for op '([^']+)' not implemented", text) \
        or re.search(r"lowering for Torch `([^`]+)` op is not supported", text)
    if op:
        return (f"Core ML cannot convert the PyTorch op '{op.group(1)}' (coremltools has no conversion for it"
                f"{'' if 'not implemented' in text else ' with these inputs'}); rewrite that part of the model "
                "or register a custom conversion")
    mil = re.match(r"\s*(\w+) op: (.+)", first_line(exc))
    if mil:
        return f"Core ML cannot convert the op '{mil.group(1)}': {mil.group(2)[:300]}"
    return f"coremltools.convert failed: {type(exc).__name__}: {first_line(exc)[:300]}"


def make_reproducible(package: Path) -> None:
    """Make two identical conversions byte-identical, so a rebuild can stop early (same digest).

    coremltools writes fresh UUIDs into Manifest.json on every save (Core ML only needs them unique
    and consistent with rootModelIdentifier: derive them from the item paths), and serializes the
    spec's protobuf maps in hash order (re-serialize deterministically). An item that is an empty
    directory (the `weights` of a model without weights) is dropped from the manifest: the store keeps
    files only, and a manifest naming a directory that is not there cannot be opened. The debug map coremltools
    writes beside a program from torch.export (op names by ExecuTorch debug handle, for ExecuTorch's Core ML
    delegate) is not in the manifest and no Core ML runtime reads it: it is removed (19 KB of a 44 KB package).
    """
    from coremltools.proto import Model_pb2

    (package / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)

    manifest = package / "Manifest.json"
    data = json.loads(manifest.read_text())
    for name, item in list(data.get("itemInfoEntries", {}).items()):
        where = package / "Data" / item.get("path", "")
        if where.is_dir() and not any(where.iterdir()) and name != data.get("rootModelIdentifier"):
            del data["itemInfoEntries"][name]
            where.rmdir()
    root = data.get("itemInfoEntries", {}).get(data.get("rootModelIdentifier", ""), {})
    spec_path = package / "Data" / root.get("path", "com.apple.CoreML/model.mlmodel")
    if spec_path.is_file():
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_path.read_bytes())
        spec_path.write_bytes(spec.SerializeToString(deterministic=True))
    renamed = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"modelbuild:{item.get('path', old)}")).upper()
               for old, item in data.get("itemInfoEntries", {}).items()}
    data["itemInfoEntries"] = {renamed[k]: v for k, v in data["itemInfoEntries"].items()}
    if data.get("rootModelIdentifier") in renamed:
        data["rootModelIdentifier"] = renamed[data["rootModelIdentifier"]]
    manifest.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
