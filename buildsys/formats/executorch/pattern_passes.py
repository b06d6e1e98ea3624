"""XNNPACK's pattern passes run only where a pattern can match: `pattern_passes_where_they_can_match()`.

Two of the passes XNNPACK's preprocessing runs on every lowered program rebuild a fused op from the graph a
decomposition left: ConvertToSDPAPass (scaled dot-product attention) and ConvertToUpsampleBilinear2d. Each
builds its pattern graphs by exporting and lowering small models the first time it runs in a process: 5-15 s
of every ExecuTorch worker's first lowering (measured on this project's 2-core host: SDPA's two patterns 15 s,
the bilinear ones 5 s, beside a test run), for a tiny MLP nine tenths of its lowering.

A subgraph match needs every op of the pattern in the graph, and every pattern of a pass holds one op in common
(`required_ops()`: SDPA's the softmax, the bilinear ones the upsample op itself; tests/formats/executorch holds the
patterns of the installed ExecuTorch to it). Where the graph has none of it, the pass is cut to what it does
after matching nothing (recompile, then ExportPass's retrace), so the program is the same, without building
a pattern.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def required_ops() -> dict[Any, Any]:
    """Each pattern pass → the edge op every one of its patterns holds."""
    from executorch.backends.xnnpack._passes.convert_to_sdpa import ConvertToSDPAPass
    from executorch.backends.xnnpack._passes.convert_to_upsample_bilinear2d import ConvertToUpsampleBilinear2d
    from executorch.exir.dialects._ops import ops as exir_ops

    return {ConvertToSDPAPass: exir_ops.edge.aten._softmax.default,
            ConvertToUpsampleBilinear2d: exir_ops.edge.aten.upsample_bilinear2d.vec}


def holds(graph_module: Any, op: Any) -> bool:
    """Whether `graph_module` calls `op` (compared as SubgraphMatcher compares targets)."""
    return any(node.op == "call_function" and node.target == op for node in graph_module.graph.nodes)


@contextmanager
def pattern_passes_where_they_can_match() -> Iterator[None]:
    """Inside: the pattern passes of `required_ops()` build and match their patterns only in a graph that
    calls their required op."""
    from torch.fx.passes.infra.pass_base import PassResult

    originals: dict[Any, Any] = {}
    for cls, op in required_ops().items():
        original = originals[cls] = cls.call

        def call(self: Any, graph_module: Any, _cls: Any = cls, _op: Any = op, _original: Any = original) -> Any:
            if holds(graph_module, _op):
                return _original(self, graph_module)
            graph_module.recompile()  # what the pass does after matching nothing
            return PassResult(super(_cls, self).call(graph_module).graph_module, True)

        cls.call = call
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.call = original
