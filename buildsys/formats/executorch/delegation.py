"""What XNNPACK's partitioner left outside its delegate calls in an int8 program, and which layers that means.

PT2E quantizes every layer its annotators match; XNNPACK's partitioner then takes only the int8 patterns it has
kernels for. A quantize/dequantize op left outside every delegate call (a linear whose weight the model's own code
transposes first, as `multi_head_attention_forward` does with separate projection weights: WavLM, any
`nn.MultiheadAttention` with `kdim != embed_dim`) needs quantized kernels the ExecuTorch runtime does not link
("Missing out variants: quantized_decomposed::dequantize_per_channel"). The int8 step (program.py) then keeps the
layers those ops feed in float and quantizes again.
"""

from __future__ import annotations

from typing import Any


class QuantizedOutsideDelegate(Exception):
    """XNNPACK's partitioner left quantize/dequantize ops of the program outside its delegate calls: their
    consumer is an op it does not run in int8 (a linear whose weight arrives transposed by the model's own
    code, a grouped 1-D convolution...). The runtime has no kernels for them (to_executorch: "Missing out
    variants"), so the int8 step keeps those consumers in float and quantizes again (`consumers`)."""

    def __init__(self, nodes: list[str]):
        shown = [n for n in nodes if n.startswith("quantized_decomposed")] or nodes
        super().__init__(f"XNNPACK left {len(shown)} quantize/dequantize op(s) outside its delegate: "
                         f"{', '.join(shown[:4])}{' ...' if len(shown) > 4 else ''}")
        self.nodes = nodes  # the q/dq ops' names in the edge program and before it

    def consumers(self, converted: Any) -> list[str]:
        """The compute nodes of the converted (PT2E) graph those q/dq ops feed or come from: the nodes to keep
        in float. Graph names survive convert_pt2e from the float export, so keep_float's filter finds them."""
        wanted, out = set(self.nodes), []
        for node in converted.graph.nodes:
            if node.name not in wanted:
                continue
            neighbours = [*node.users] + [a for a in node.all_input_nodes if not _is_quantize_op(a)]
            out += [n.name for n in neighbours if n.op == "call_function" and not _is_quantize_op(n)
                    and n.name not in out]
        return out


def _is_quantize_op(node: Any) -> bool:
    return "quantize" in str(getattr(node, "target", ""))


def quantized_outside_delegates(graph_module: Any) -> list[str]:
    """The names of the quantize/dequantize ops an edge program still runs outside its delegate calls, with every
    name each had before lowering (its `from_node` provenance): `consumers` finds them in the converted graph."""
    out = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or "quantized_decomposed" not in str(node.target):
            continue
        out.append(node.name)
        origin = (node.meta.get("from_node") or [None])[-1]
        while origin is not None:  # its names back to the observer PT2E converted (the chain may rename it)
            out.append(origin.name)
            origin = origin.from_node[-1] if origin.from_node else None
    return list(dict.fromkeys(out))
