"""Which ATen ops of an op case PyTorch itself can decompose into other ATen ops (not into prims).

`torch._decomp.decomposition_table` holds a decomposition for many ops, but for an elementwise op such as
`asin` it leads to a primitive (`prims.asin`), which no converter takes either. An op counts as decomposable
here when exporting the case and running only that op's decomposition removes it and leaves ATen ops alone:
what a decomposition route could hand a converter instead.
"""

from __future__ import annotations

from typing import Any


def _graph_ops(program: Any) -> set[str]:
    return {str(node.target.overloadpacket) if hasattr(node.target, "overloadpacket") else str(node.target)
            for node in program.graph.nodes if node.op == "call_function"}


def decompositions(module: Any, args: tuple[Any, ...]) -> dict[str, list[str]]:
    """{aten op of the exported module: the ATen ops its own decomposition leaves} for every op that has one
    leading to ATen ops alone; {} when the module does not export."""
    import torch
    from torch._decomp import decomposition_table

    try:
        program = torch.export.export(module, args, strict=False)
    except Exception:  # noqa: BLE001 - an op case torch.export refuses has nothing to decompose here
        return {}
    found: dict[str, list[str]] = {}
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or target not in decomposition_table:
            continue
        name = str(target.overloadpacket)
        if name in found:
            continue
        try:
            after = _graph_ops(program.run_decompositions({target: decomposition_table[target]}))
        except Exception:  # noqa: BLE001 - a decomposition that fails on this sample does not count
            continue
        before = _graph_ops(program)
        if name not in after and not any(op.startswith("prims.") for op in after):
            found[name] = sorted(after - before)
    return found
