"""Values a torch.export program reads from its data (`.item()`, `int(tensor)`): what its runtime assertions say of
them, and the program with the values those assertions pin written in, for converters that need fixed programs.

A program exported with the example's values (lowering/export.export_module) asserts each decision it took on such
a value (`aten._assert_scalar` of `Eq(u0, 16)`, or of `u0 >= 0`, `u0 <= 1` and `Ne(u0, 1)` for a flag): it raises
on any input where the value differs. Where the assertions leave a value exactly one possibility, writing that
value in changes nothing the program computes on any input it accepts; it only removes the symbol that converters
which export the program again at fixed shapes (ExecuTorch, litert-torch) or translate it op by op (coremltools'
`sym_ite`) cannot take. Worker side: torch and sympy are imported inside the functions.
"""

from __future__ import annotations

import operator
import re
from typing import Any

#: How torch.export words a runtime assertion: "Runtime assertion failed for expression Eq(u0, 16) on node 'eq'".
_ASSERTED = re.compile(r"for expression (.+?) on node")
#: An unbacked symbol (a value read from the data): u0, u12.
_UNBACKED = re.compile(r"\bu\d+\b")
#: The widest range of integers searched for the one value a set of bounds and exclusions leaves.
_WIDEST = 64


def assumptions(graph_module: Any) -> list[str]:
    """The expressions on values read from the data that `graph_module`'s runtime assertions check (Eq(u0, 16)),
    in graph order, each once; the bounds of a value an equality pins are left out."""
    found: list[str] = []
    for node in _data_assertions(graph_module):
        match = _ASSERTED.search(str(node.args[1]) if len(node.args) > 1 else "")
        if match and match.group(1) not in found:
            found.append(match.group(1))
    pinned = {m.group(1) for e in found if (m := re.fullmatch(r"Eq\((u\d+), [^,()]+\)", e))}
    # a value pinned by an equality needs no bounds beside it ("u0 >= 16; u0 <= 16; Eq(u0, 16)" says Eq(u0, 16))
    return [e for e in found if not re.fullmatch(r"(u\d+) [<>]=? [^ ]+", e) or e.split()[0] not in pinned]


def with_asserted_values(graph_module: Any) -> int:
    """`graph_module` (in place) with every read whose value its assertions pin replaced by that value, what then
    computes a constant folded, and the runtime assertions on values read from the data removed (a converter that
    exports the module again meets the `.item()` behind them as a symbol no output depends on and stops). A read the
    assertions do not pin is left as it is, for the converter to take or refuse. How many reads were written in."""
    import torch

    graph = graph_module.graph
    if not _data_assertions(graph_module) and not any(n.op == "call_function" and n.target in _reads()
                                                       for n in graph.nodes):
        return 0  # nothing read from the data: the graph is left exactly as it is
    pinned = _pinned(graph_module)
    written = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in _reads() and node.users:
            value = _constant(node.meta.get("val"), pinned)
            if value is not None:
                _replace_uses(node, value)
                written += 1
    _fold_constants(graph)
    doomed = dict.fromkeys(_data_assertions(graph_module) + [
        n for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.aten._assert_scalar.default
        and not isinstance(n.args[0], torch.fx.Node)])  # an assertion on a value now written in: it holds
    for node in doomed:
        graph.erase_node(node)
    if written or doomed:
        graph.eliminate_dead_code()
        graph_module.recompile()
    return written


def without_dead_reads(graph_module: Any) -> None:
    """Remove the reads that nothing uses and that have no symbol: with real tensors propagated, a read of a constant
    (Longformer's `torch.div(32, 8).item()`) is answered by its value and left in the graph without one, and
    torch.export.save writes such a node in a form its own load refuses ("'bool' object has no attribute 'as_name'")."""
    import torch

    dead = [node for node in graph_module.graph.nodes if node.op == "call_function" and node.target in _reads()
            and not node.users and not isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool))]
    for node in dead:
        graph_module.graph.erase_node(node)
    if dead:
        graph_module.recompile()


def _reads() -> tuple[Any, ...]:
    import torch

    return torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default


def _data_assertions(graph_module: Any) -> list[Any]:
    """The `aten._assert_scalar` nodes of `graph_module` whose expression names an unbacked symbol."""
    import torch

    return [node for node in graph_module.graph.nodes
            if node.op == "call_function" and node.target is torch.ops.aten._assert_scalar.default
            and len(node.args) > 1 and _UNBACKED.search(str(node.args[1]))]


def _pinned(graph_module: Any) -> dict[str, int]:
    """Unbacked symbol's name → the one integer the graph's runtime assertions allow it, for the symbols they pin.
    Read from the assertions' own words ("u0 <= 1", "Ne(u0, 1)"): the conditions' values in the graph are written
    over the read's value (Piecewise forms of a flag), their messages over the symbol."""
    import sympy

    facts: dict[str, list[Any]] = {}
    for node in _data_assertions(graph_module):
        match = _ASSERTED.search(str(node.args[1]))
        names = set(_UNBACKED.findall(match.group(1))) if match else set()
        if len(names) != 1:
            continue
        name = names.pop()
        try:
            expr = sympy.sympify(match.group(1), locals={name: sympy.Symbol(name, integer=True)})  # type: ignore[union-attr]
        except (sympy.SympifyError, SyntaxError, TypeError):
            continue
        if isinstance(expr, sympy.Basic):
            facts.setdefault(name, []).append(expr)
    pinned: dict[str, int] = {}
    for name, relations in facts.items():
        value = _only_value(sympy.Symbol(name, integer=True), relations)
        if value is not None:
            pinned[name] = value
    return pinned


def _only_value(symbol: Any, relations: list[Any]) -> int | None:
    """The one integer satisfying every relation on `symbol` (an equality, or bounds and exclusions at most _WIDEST
    apart), or None."""
    import sympy

    for rel in relations:
        if isinstance(rel, sympy.Eq) and rel.lhs == symbol and rel.rhs.is_Integer:
            return int(rel.rhs)
    low, high = None, None
    for rel in relations:
        if isinstance(rel, (sympy.Ge, sympy.Gt)) and rel.lhs == symbol and rel.rhs.is_Integer:
            bound = int(rel.rhs) + (1 if isinstance(rel, sympy.Gt) else 0)
            low = bound if low is None else max(low, bound)
        if isinstance(rel, (sympy.Le, sympy.Lt)) and rel.lhs == symbol and rel.rhs.is_Integer:
            bound = int(rel.rhs) - (1 if isinstance(rel, sympy.Lt) else 0)
            high = bound if high is None else min(high, bound)
    if low is None or high is None or high - low > _WIDEST:
        return None
    left = [v for v in range(low, high + 1) if all(bool(rel.subs(symbol, v)) for rel in relations)]
    return left[0] if len(left) == 1 else None


def _constant(value: Any, pinned: dict[str, int]) -> bool | int | float | None:
    """A read's symbolic value (SymInt / SymBool / SymFloat) with the pinned symbols written in, if that is a
    constant; None otherwise."""
    import sympy

    expr = getattr(getattr(value, "node", None), "expr", None)
    if not isinstance(expr, sympy.Basic) or not {s.name for s in expr.free_symbols} <= set(pinned):
        return None
    done = expr.subs({s: pinned[s.name] for s in expr.free_symbols})
    if done in (sympy.true, sympy.false):
        return bool(done)
    if done.is_Integer:
        return int(done)
    return float(done) if done.is_number else None


def _replace_uses(node: Any, value: Any) -> None:
    """Every use of `node` replaced by the constant `value`."""
    import torch

    for user in list(node.users):
        user.args = torch.fx.node.map_aggregate(user.args, lambda a: value if a is node else a)
        user.kwargs = torch.fx.node.map_aggregate(user.kwargs, lambda a: value if a is node else a)


def _foldable() -> set[Any]:
    """Python-level functions on symbolic scalars that a graph may hold (`operator.eq`, `torch.sym_ite`): computed
    once their arguments are constants."""
    import math

    import torch

    return {*(getattr(operator, n) for n in ("add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "eq", "ne",
                                             "lt", "le", "gt", "ge", "and_", "or_", "not_")),
            torch.sym_ite, torch.sym_not, torch.sym_max, torch.sym_min, torch.sym_int, torch.sym_float,
            math.ceil, math.floor, math.trunc}


def _fold_constants(graph: Any) -> None:
    """Compute, in graph order, each foldable call whose arguments are all constants, writing its value into its
    users (a `sym_ite` of a constant condition becomes the branch it picks, a node or a constant)."""
    import torch

    foldable = _foldable()
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in foldable or node.kwargs:
            continue
        if node.target is torch.sym_ite and not isinstance(node.args[0], torch.fx.Node):
            picked = node.args[1] if node.args[0] else node.args[2]
            if isinstance(picked, torch.fx.Node):
                node.replace_all_uses_with(picked)
            else:
                _replace_uses(node, picked)
            continue
        if any(isinstance(a, torch.fx.Node) for a in node.args):
            continue
        _replace_uses(node, node.target(*node.args))
