"""`Tensor.zero_()` for coremltools' TorchScript frontend, which has no translation for it.

Two cases, as the trace records them. A whole tensor zeroed (`buf.zero_()`) is read afterwards through `zero_`'s own
output, so the op is `zeros_like` of its input. A slice zeroed (`bias[n:2 * n].zero_()`, Swin v2's key bias) writes into
the tensor it views, which the trace goes on reading by its old name: coremltools answers that for `fill_` and `copy_`
only, by fusing the slice chain and the write into one tensor assignment before conversion
(`generate_tensor_assignment_ops`). So a `zero_` of a slice or select becomes a `fill_` with 0 just before that pass
runs, and is converted as coremltools converts any `x[a:b] = 0`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

#: the TorchScript ops whose output views their input: a write into it writes into that input
VIEWS = ("select", "slice")


def zero_translation(table: dict[str, Any]) -> dict[str, Any]:
    """`zero_` of a whole tensor as zeros of its shape and dtype, under the name coremltools looks an in-place op up
    by (`zero`: its registry drops the trailing underscore), unless it has one."""
    if "zero" in table:
        return {}

    def zero_(context: Any, node: Any) -> None:
        from coremltools.converters.mil import Builder as mb
        from coremltools.converters.mil.mil import types

        x = context[node.inputs[0]]
        zeros = mb.fill(shape=mb.shape(x=x), value=0.0)
        context.add(mb.cast(x=zeros, dtype=types.builtin_to_string(x.dtype), name=node.name))

    return {"zero": zero_}


@contextmanager
def zeroed_slices() -> Iterator[None]:
    """coremltools' tensor-assignment pass (TorchScript frontend) with each `zero_` of a slice or select turned into
    a `fill_` of 0 first."""
    from coremltools.converters.mil.frontend.torch import converter

    original = converter.generate_tensor_assignment_ops

    def patched(graph: Any) -> None:
        _zero_to_fill(graph)
        original(graph)

    converter.generate_tensor_assignment_ops = patched
    try:
        yield
    finally:
        converter.generate_tensor_assignment_ops = original


def _zero_to_fill(graph: Any) -> int:
    """Rewrite `zero_(view)` into `fill_(view, 0)` in `graph`'s top level (where the assignment pass looks); how many."""
    from coremltools.converters.mil.frontend.torch.internal_graph import InternalTorchIRNode

    views = {node.outputs[0] for node in graph.nodes if node.kind in VIEWS}
    done = 0
    for i, node in enumerate(list(graph.nodes)):
        if node.kind != "zero_" or not node.inputs or node.inputs[0] not in views:
            continue
        zero = f"{node.name}_zero_value"
        graph.nodes.insert(i + done, InternalTorchIRNode(kind="constant", inputs=[], outputs=[zero], name=zero,
                                                          attr={"value": 0}, parent=graph,
                                                          model_hierarchy=node.model_hierarchy))
        node.kind, node.inputs = "fill_", [node.inputs[0], zero]
        done += 1
    return done
