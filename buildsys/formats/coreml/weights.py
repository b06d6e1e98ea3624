"""The weight layers of a Core ML ML Program and the element type each is stored in
(buildsys.formats.quantized_weights), read from the MIL program's constants and compressed weights.

A weight layer is an op that reads a constant as its weight: `linear` and `conv` / `conv_transpose`
(`weight`), `matmul` (`x` or `y`), `gather` (`x`: an embedding table), and the recurrent `lstm` / `gru` / `rnn`
(every input-to-gates and recurrent matrix, as linear weights). The weight is a `const` (its dtype,
float16 or float32) or the output of MIL's compressed-weight ops, which say how it is stored:
`constexpr_affine_dequantize` and `constexpr_blockwise_shift_scale` (int8 / int4 data),
`constexpr_lut_to_dense` (a palette of 2^n entries: `lut<n>`), `constexpr_sparse_to_dense` (pruned; its
non-zero values as stored), `constexpr_cast` (float16 widened).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from buildsys.formats.quantized_weights import WeightTensor, record

if TYPE_CHECKING:
    from coremltools.converters.mil.mil import Var

#: op type → (kind, the inputs that may hold its weight)
WEIGHT_INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "linear": ("linear", ("weight",)), "matmul": ("linear", ("y", "x")), "conv": ("conv", ("weight",)),
    "conv_transpose": ("conv", ("weight",)), "gather": ("embedding", ("x",)),
    "lstm": ("linear", ("weight_ih", "weight_hh", "weight_ih_back", "weight_hh_back")),
    "gru": ("linear", ("weight_ih", "weight_hh")), "rnn": ("linear", ("weight_ih", "weight_hh")),
}
#: Recurrent ops read several weights each (input-to-gates and recurrent, each direction): all are counted.
EVERY_INPUT = ("lstm", "gru", "rnn")
#: compressed-weight op → the input whose dtype is the stored one ("lut": a palette, its size gives the bits)
STORED = {"constexpr_affine_dequantize": "quantized_data", "constexpr_blockwise_shift_scale": "data",
          "constexpr_lut_to_dense": "lut", "constexpr_sparse_to_dense": "nonzero_data", "constexpr_cast": "source_val"}
MEASURED_ON = "the ML Program's weights (each weight's const or compressed-weight op)"
#: coremltools' own weight_threshold: weights with fewer elements stay uncompressed
DEFAULT_THRESHOLD = 2048
#: ... lowered to this where the layers under it hold more than SMALL_SHARE of the weights: an int8 tensor of 256
#: elements still saves 256 bytes against float16, more than its per-channel scales cost
SMALL_MODEL_THRESHOLD, SMALL_SHARE = 256, 0.1


def _dtype(var: "Var") -> str:
    from coremltools.converters.mil.mil import types

    name = types.builtin_to_string(var.dtype)
    return {"fp16": "float16", "fp32": "float32", "fp64": "float64"}.get(name, name)


def _stored(var: "Var") -> str | None:
    """How the constant behind `var` is stored ('float16', 'int8', 'lut4'), or None if it is not a constant."""
    for _ in range(4):  # compressed ops nest (iOS18: a palette of a sparse tensor)
        producer = var.op
        if producer is None:
            return None
        if producer.op_type == "const":
            return _dtype(var)
        source = STORED.get(producer.op_type)
        if source is None or source not in producer.inputs:
            return None
        inner = producer.inputs[source]
        if producer.op_type == "constexpr_lut_to_dense":
            shape = inner.shape
            entries = shape[0] if len(shape) == 1 else shape[-2]  # iOS16 [2^n]; iOS18 [..., 2^n, vector size]
            return f"lut{max(1, int(math.log2(int(entries))))}"
        if inner.op is None or inner.op.op_type == "const":
            return _dtype(inner)
        var = inner
    return None


def weight_layers(program: Any) -> list[WeightTensor]:
    """Every weight layer of every function of the MIL `program` (see the module doc)."""
    from buildsys.formats.coreml.mil import _walk

    found: list[WeightTensor] = []
    for function in program.functions.values():
        for operation in _walk(function):
            spec = WEIGHT_INPUTS.get(operation.op_type)
            if spec is None:
                continue
            kind, candidates = spec
            for name in candidates:
                var = operation.inputs.get(name)
                stored = _stored(var) if var is not None and not isinstance(var, (list, tuple)) else None
                if stored is None:
                    continue
                elements = math.prod(int(d) for d in var.shape)
                if elements > 1:
                    found.append(WeightTensor(var.name, kind, elements, stored, (operation.name,)))
                if operation.op_type not in EVERY_INPUT:
                    break
    return found


def threshold_for(program: Any, asked: int | None) -> int:
    """The weight_threshold a compression of `program` uses: `asked` where set, else DEFAULT_THRESHOLD unless the
    weight layers under it hold more than SMALL_SHARE of the weight elements (then SMALL_MODEL_THRESHOLD)."""
    if asked is not None:
        return asked
    sizes = [w.elements for w in weight_layers(program)] if program is not None else []
    small = sum(n for n in sizes if n < DEFAULT_THRESHOLD)
    return SMALL_MODEL_THRESHOLD if sizes and small > SMALL_SHARE * sum(sizes) else DEFAULT_THRESHOLD


def measure(path: Path, asked: str, threshold: int = 0, kept: Iterable[str] = ()) -> dict[str, Any]:
    """The `quantized_weights` fact of the .mlpackage at `path` at precision `asked`; float weights under the
    compression's `threshold` (weight_threshold: coremltools leaves them uncompressed) and the ops in `kept`
    (an fp16 package's keep_float: MIL op names) are named as such."""
    from buildsys.formats.coreml.mil import load_program

    return measure_program(load_program(path)[0], asked, threshold, kept)


def measure_program(program: Any, asked: str, threshold: int = 0, kept: Iterable[str] = ()) -> dict[str, Any]:
    """`measure` of a MIL program in memory."""
    return record(weight_layers(program), asked, MEASURED_ON, kept=kept, small=threshold)


def numeric_constants(block: Any, min_elements: int) -> Iterator[tuple[Any, Any, Any]]:
    """(block, var, values) of each read `const` of at least `min_elements` numbers in `block` and the blocks nested
    in its ops, in order, the block being the one that holds it (what the constant passes rewrite)."""
    import numpy as np

    for op in list(block.operations):
        for inner in op.blocks:
            yield from numeric_constants(inner, min_elements)
        if op.op_type != "const" or not op.outputs[0].child_ops or op.outputs[0].val is None:
            continue
        value = np.asarray(op.outputs[0].val)
        if value.size >= min_elements and value.dtype.kind in "fiu":
            yield block, op.outputs[0], value
