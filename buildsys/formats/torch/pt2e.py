"""What every PT2E quantizer in modelbuild shares: integer values are never quantized.

A quantizer annotates by op pattern (an `add`, a `mul`, a `clamp`), whatever the values' dtype. A model
computes integers with the same ops: T5's and WavLM's relative-position buckets (`abs`, `*`, `+`, `min` on
int64 positions), index arithmetic before a gather. An observer on an int64 tensor fails at the first
calibration call ("histogram_cpu" not implemented for 'Long'), and quantizing an index to int8 would change
it. `float_values_only` drops, after a quantizer annotated the graph, every annotation of a value whose
dtype is not floating point: inputs read from such nodes and outputs of such nodes.

Torch and torchao are imported inside the function: the registry imports every module when modelbuild starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _is_float(model: "torch.fx.GraphModule", node: object) -> bool:
    """Whether a node's value is floating point: its traced value, or for a constant the quantizer made (an
    operand scalar turned into a tensor attribute, which has no traced value) the tensor itself."""
    val = getattr(node, "meta", {}).get("val")
    if val is None and getattr(node, "op", None) == "get_attr":
        val = getattr(model, str(getattr(node, "target", "")), None)
    dtype = getattr(val, "dtype", None)
    return dtype is None or dtype.is_floating_point  # unknown: left as the quantizer annotated it


def float_values_only(model: "torch.fx.GraphModule") -> list[str]:
    """Drop the annotations of integer (and boolean) values in an annotated graph, in place; returns the names of
    the nodes whose annotation changed."""
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    changed = []
    for node in model.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is None:
            continue
        integer_inputs = [arg for arg in annotation.input_qspec_map if not _is_float(model, arg)]
        integer_output = annotation.output_qspec is not None and not _is_float(model, node)
        if not integer_inputs and not integer_output:
            continue
        for arg in integer_inputs:
            del annotation.input_qspec_map[arg]
        if integer_output:
            annotation.output_qspec = None
        changed.append(node.name)
    return changed
