"""Recurrent layers' weights stored in float16 in a float16 package that targets iOS 16 (macOS 13, tvOS 16, watchOS 9).

MIL's `lstm`, `gru` and `rnn` take float16 only from iOS 17 on: before it, coremltools' float16 pass leaves them
computing in float32 with float32 weights, and a float16 package of a recurrent model stored most of its
weights at twice the size asked (a Conv1d + LSTM sensor model [1, 90, 9]: 74.8 KB for 17.5 k parameters, 2.1×
its float16 size). iOS 16's `constexpr_cast` decodes a float16 constant to float32 when the program loads, so
each such weight is stored as float16 behind one: the layer computes in float32 as before, from the weights a
float16 package would hold, at half the bytes (44.6 KB). From iOS 17 coremltools casts the layers themselves and
this pass is not run; iOS 15 has no constexpr ops. A weight float16 cannot hold (a value past its range) stays
float32. (coremltools' TorchScript frontend writes a GRU as a while loop whose body its float16 pass does cast.)
"""

from __future__ import annotations

from typing import Any

#: The recurrent ops whose weights are constant inputs, and those inputs' names (forward and backward).
RECURRENT_OPS = ("lstm", "gru", "rnn")
WEIGHT_INPUTS = ("weight_ih", "weight_hh", "bias", "peephole", "weight_ih_back", "weight_hh_back", "bias_back",
                 "peephole_back")
#: The pass's name in coremltools' registry, as a PassPipeline takes it.
PASS_NAME = "modelbuild::recurrent_weights_fp16"
#: The specification version with constexpr_cast and recurrent ops still float32 only (iOS 16, macOS 13, tvOS 16,
#: watchOS 9): before it the package cannot decode weights at load, after it the ops take float16.
STORED_FP16_SPEC = 7


def needs_pass(target: str) -> bool:
    """Whether a float16 package for `target` (a ct.target name: iOS16, macOS13, …) stores its recurrent layers'
    weights through this pass."""
    from buildsys.formats.coreml.options import SPEC_VERSION

    return SPEC_VERSION.get(target) == STORED_FP16_SPEC


def store_block(block: Any) -> int:
    """Put a constexpr_cast from float16 before every float32 constant weight of a recurrent op in `block` (and
    the blocks nested in its ops); how many."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    done = 0
    for op in list(block.operations):
        for inner in op.blocks:
            done += store_block(inner)
        if op.op_type not in RECURRENT_OPS:
            continue
        for name in WEIGHT_INPUTS:
            var = op.inputs.get(name)
            if var is None or var.op is None or var.op.op_type != "const" or var.dtype != types.fp32:
                continue
            half = np.asarray(var.val).astype(np.float16)
            if not np.isfinite(half).all():
                continue  # past float16's range: stored as it is
            with block:
                stored = mb.constexpr_cast(source_val=half, output_dtype="fp32", before_op=op,
                                           name=f"{var.name}_stored_fp16")
            block.replace_uses_of_var_after_op(anchor_op=stored.op, old_var=var, new_var=stored)
            done += 1
    return done
