"""Rank-6+ reshape → transpose → reshape chains kept at rank ≤ 5 when a size is dynamic: Core ML holds no tensor of
rank 6 or more, and window-partition attention (Swin's windows, MaxViT's blocks and grids) writes exactly this chain:
`x.view(B, H/w, w, W/w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w·w, C)`.

coremltools' own pass (`expand_high_rank_reshape_and_transpose`) folds the chain only when every size is known, so a
dynamic batch left it at rank 6 and the conversion failed: the model converted only at fixed shapes. This pass does
the same fold with the dynamic sizes kept: the axes that the transpose keeps together and in order are one axis
(their sizes multiplied), which often brings the chain to rank ≤ 5 (Swin's: [B·H/w, w, W/w, w·C], rank 4); where it
does not, the transpose is written as one rank-4 reshape and swap per axis, as coremltools' pass does. Every
reshape of the fold holds the dynamic sizes in one entry, written -1, so only a chain whose dynamic sizes all fall
in one group of axes is folded (a batch, or a batch and the windows it carries); any other chain is left for the
rank check to refuse as before. The element order is the chain's, so the closing reshape is unchanged. The plan is
lowering/ranks.steps, which also folds torch.export programs for ExecuTorch and litert-torch.
"""

from __future__ import annotations

from typing import Any

#: The pass's name in coremltools' registry, as a PassPipeline takes it.
PASS_NAME = "modelbuild::fold_high_rank_transposes"
#: Core ML's highest tensor rank.
MAX_RANK = 5


def _chain(op: Any) -> tuple[Any, Any, Any] | None:
    """(reshape, transpose, reshape) where `op` is a reshape to rank > MAX_RANK with a dynamic size, read only by a
    transpose with a constant perm that only a reshape to rank ≤ MAX_RANK reads; else None."""
    from coremltools.converters.mil.mil.types.symbolic import any_symbolic

    if op.op_type != "reshape" or op.outputs[0].rank <= MAX_RANK or not any_symbolic(op.outputs[0].shape):
        return None
    children = op.outputs[0].child_ops
    if len(children) != 1 or children[0].op_type != "transpose" or children[0].perm.val is None:
        return None
    transpose = children[0]
    after = transpose.outputs[0].child_ops
    if len(after) != 1 or after[0].op_type != "reshape" or after[0].outputs[0].rank > MAX_RANK:
        return None
    block_outputs = op.enclosing_block.outputs
    if op.outputs[0] in block_outputs or transpose.outputs[0] in block_outputs:
        return None
    return op, transpose, after[0]


def fold_block(block: Any) -> int:
    """Fold every rank > MAX_RANK reshape → transpose → reshape chain with a dynamic size in `block` (and the blocks
    nested in its ops) to ops of rank ≤ MAX_RANK; how many."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    from buildsys.lowering.ranks import steps

    done = 0
    for op in list(block.operations):
        for inner in op.blocks:
            done += fold_block(inner)
        chain = _chain(op)
        if chain is None:
            continue
        reshape, transpose, closing = chain
        plan = steps(list(reshape.outputs[0].shape), [int(a) for a in transpose.perm.val], MAX_RANK, is_symbolic)
        if plan is None:
            continue
        with block:
            x = reshape.x
            for i, (shape, order) in enumerate(plan):
                x = mb.reshape(x=x, shape=np.array(shape, np.int32), before_op=closing,
                               name=f"{transpose.outputs[0].name}_folded_{i}")
                x = mb.transpose(x=x, perm=np.array(order, np.int32), before_op=closing,
                                 name=f"{transpose.outputs[0].name}_folded_{i}_t")
        # the closing reshape reads the same elements in the same order, at another rank: its type is unchanged
        block.replace_uses_of_var_after_op(anchor_op=x.op, old_var=transpose.outputs[0], new_var=x,
                                           no_check_var_types=True)
        done += 1
    return done
