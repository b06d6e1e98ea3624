"""Large constants of one repeated value written as `fill` ops instead of stored: the ML Program's weight file holds
weights, not zeros.

coremltools folds every constant subgraph into a `const` whose values go to weight.bin. Some of those are a buffer of
one value: the TorchScript frontend writes a GRU as a while loop whose output accumulator starts as zeros of
[frames + 1, batch, hidden], folded to a constant. A Conv1d + GRU sensor model over 90 frames (13 k parameters,
26.5 KB of float16 weights) stored 17.5 KB of such zeros beside them: a 45.9 KB weight file. A `fill` (iOS 15) of the
same shape and value computes it when the program runs, from a shape of a few integers. Only a constant that no
consumer needs as a constant (MIL's input types say which: a `linear`'s weight, a `conv`'s, a reshape's shape) is
replaced, so every op still gets what its schema requires.
"""

from __future__ import annotations

from typing import Any

#: The pass's name in coremltools' registry, as a PassPipeline takes it.
PASS_NAME = "modelbuild::uniform_constants_as_fill"
#: The fewest elements a constant must have to be replaced: below it the fill's shape costs about as much.
MIN_ELEMENTS = 256


def _needs_const(var: Any) -> bool:
    """Whether an op reading `var` requires it to be a constant (its input type says so)."""
    for op in var.child_ops:
        for name, value in op.inputs.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            spec = op.input_spec.input_types.get(name) if op.input_spec is not None else None
            if any(v is var for v in values) and (spec is None or getattr(spec, "const", False)):
                return True
    return bool(var.consuming_blocks)  # a function's or block's output: left as it is


def fill_block(block: Any) -> int:
    """Replace each uniform constant of at least MIN_ELEMENTS in `block` (and the blocks nested in its ops) that no
    consumer needs as a constant by a `fill`; how many."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb

    from buildsys.formats.coreml.weights import numeric_constants

    done = 0
    for block, var, value in numeric_constants(block, MIN_ELEMENTS):
        if _needs_const(var):
            continue
        first = value.flat[0]
        if not (value == first).all():
            continue
        with block:
            filled = mb.fill(shape=np.array(value.shape, np.int32), value=value.dtype.type(first), before_op=var.op,
                             name=f"{var.name}_filled")
        # coremltools infers its value, and its backend's const_elimination would store it again: the value is
        # forgotten (the shape and dtype stay), as for any op computed at run time
        filled._sym_val = None
        block.replace_uses_of_var_after_op(anchor_op=filled.op, old_var=var, new_var=filled)
        done += 1
    return done
