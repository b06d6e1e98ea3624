"""Constants that are a broadcast of a smaller one stored at the smaller size: the op reading them broadcasts it back.

coremltools folds every constant subgraph, broadcasts included. A program from torch.export writes a batched matmul
against a weight as `expand(weight, [n, k, m])` and `bmm`; folded, the weight is stored n times. A window-attention
block (2 k parameters, 8 KB) stored its 16 × 48 projection 16 times, 48 KB of a 54 KB weight file; the Longformer
encoder converted at fixed shapes was 10× its fp32 size for the same reason. Where an axis of a large constant holds
one value along it, and the op that reads it (an elementwise binary op or a matmul's batch axes) gets that axis's size
from its other operand anyway, the op is given the constant with that axis at size 1: its output, and every value of
it, is the same (NumPy's broadcasting, which MIL follows).
"""

from __future__ import annotations

from typing import Any

#: The pass's name in coremltools' registry, as a PassPipeline takes it.
PASS_NAME = "modelbuild::broadcast_constants_stored_once"
#: The fewest elements a constant must have to be looked at.
MIN_ELEMENTS = 256
#: MIL's elementwise binary ops, whose operands broadcast against each other.
ELEMENTWISE = frozenset({"add", "sub", "mul", "real_div", "maximum", "minimum", "pow", "floor_div", "mod"})


def repeated_axes(value: Any) -> list[int]:
    """The axes of `value` (size > 1) along which it holds one value: each slice equals the first."""
    import numpy as np

    return [a for a in range(value.ndim) if value.shape[a] > 1
            and np.array_equal(value, np.broadcast_to(value.take([0], axis=a), value.shape))]


def _sizes(var: Any) -> list[Any]:
    return list(var.shape) if var.shape is not None else []


def broadcast_back(op: Any, var: Any, axes: list[int]) -> list[int]:
    """Which of `axes` of `var` (an input of `op`) `op` would broadcast back from size 1 to the same output: axes that
    its other operand holds at the same size, and for a matmul only its batch axes."""
    inputs = {name: v for name, v in op.inputs.items() if not isinstance(v, (list, tuple))}
    if op.op_type in ELEMENTWISE:
        names, batch_only = ("x", "y"), False
    elif op.op_type == "matmul":
        names, batch_only = ("x", "y"), True
    else:
        return []
    if any(name not in inputs for name in names) or (inputs["x"] is var) == (inputs["y"] is var):
        return []  # not a binary op reading `var` once
    other = inputs["y"] if inputs["x"] is var else inputs["x"]
    sizes, others, out = _sizes(var), _sizes(other), _sizes(op.outputs[0])
    rank = len(out)
    allowed = []
    for a in axes:
        at = a + rank - len(sizes)  # the output axis it aligns with (NumPy aligns trailing axes)
        there = at - (rank - len(others))  # the other operand's axis aligned with it
        if batch_only and (a >= len(sizes) - 2 or there < 0 or there >= len(others) - 2):
            continue
        if 0 <= there < len(others) and others[there] == sizes[a] and out[at] == sizes[a]:
            allowed.append(a)
    return allowed


def store_once_block(block: Any) -> int:
    """Give each op reading a large broadcast constant in `block` (and the blocks nested in its ops) the constant at
    the size it broadcasts back from; how many ops."""
    from coremltools.converters.mil import Builder as mb

    from buildsys.formats.coreml.weights import numeric_constants

    done = 0
    for block, var, value in numeric_constants(block, MIN_ELEMENTS):
        axes = repeated_axes(value)
        if not axes:
            continue
        for consumer in list(var.child_ops):
            allowed = broadcast_back(consumer, var, axes)
            if not allowed:
                continue
            small = value[tuple(slice(0, 1) if a in allowed else slice(None) for a in range(value.ndim))]
            with block:
                stored = mb.const(val=small, before_op=consumer, name=f"{var.name}_once_{done}")
            # the consumer's output keeps its type: broadcast_back allowed only axes its other operand restores
            block.replace_uses_of_var_after_op(anchor_op=stored.op, old_var=var, new_var=stored, end_op=consumer,
                                               no_check_var_types=True)
            done += 1
    return done
