"""Op rewrites as routes: after a converter refuses an op that a rewrite removes, the same route with that
rewrite applied where the module is loaded is the next route tried (docs/rewrites.md).

A route's stop names the rewrites its step applies in its label, beside an alternative's label if it has
one: `onnx (rewrite stft)`, `torchscript (rewrite stft+complex)`. Only the stop made by a step that loads
the PyTorch module (options derived from `RewritableOptions`: the trace, torch.export, the ONNX export
from the factory) carries rewrites, since a rewrite changes the module, not a converted file.

Refusals are data for the planner: `reroute.route_failures` matches a failed route's error against the
registry (`refusal_rewrites`) and keeps the rewrites in the route's record in deploy.lock; expansion
then places, after each route with such a record, the route with those rewrites (`add_rewrite_routes`).
So the rewrite route costs nothing on a no-op, and is found again from the lock alone. A target that
sets `rewrites:` (or its loading format's `rewrites` option) gets exactly those, and none added.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from buildsys.planning.routes import LABEL, hop, label_parts


def loads_module(step: Any) -> bool:
    """Whether a step loads the PyTorch module (and so applies rewrites): declared by its options' type."""
    from buildsys.formats.torch.rewritten import RewritableOptions

    return issubclass(step.Options, RewritableOptions)


def loading_stop(route: Sequence[str]) -> int | None:
    """The index of the stop made by the step that loads the module (None: the route loads none, e.g. it
    starts from an ONNX file)."""
    from buildsys.formats import steps
    from buildsys.planning.routes import format_graph

    g = format_graph()
    formats = [hop(stop)[0] for stop in route]
    for i in range(1, len(formats)):
        if loads_module(steps()[g.edges[formats[i - 1], formats[i]]["step"]]):
            return i
    return None


def with_rewrites(route: list[str], names: Sequence[str], options: Mapping[str, Any]) -> list[str] | None:
    """`route` with `names` added to the rewrites of its loading stop; None when that adds nothing, the
    route loads no module, or the target's options for that format set `rewrites` themselves."""
    i = loading_stop(route)
    if i is None:
        return None
    fmt, label = hop(route[i])
    if isinstance(options.get(fmt), dict) and "rewrites" in options[fmt]:
        return None  # the target chose this stop's rewrites
    alternative, have = label_parts(label)
    new = [n for n in names if n not in have]
    if not new:
        return None
    parts = [p for p in (alternative, LABEL + "+".join([*have, *new])) if p]
    return [*route[:i], f"{fmt} ({'; '.join(parts)})", *route[i + 1:]]


Refusals = dict[str, list[tuple[list[str], list[str]]]]


def refusals(routes: Mapping[str, Any]) -> Refusals:
    """From deploy.lock's `routes`: target → (failed route, the rewrites its refusal points at)."""
    out: Refusals = {}
    for target, entry in sorted(routes.items()):
        for record in entry.get("dropped", []):
            if record.get("rewrites"):
                out.setdefault(target, []).append((list(record["route"]), list(record["rewrites"])))
    return out


def add_rewrite_routes(candidates: list[list[str]], found: Sequence[tuple[list[str], list[str]]],
                       options: Mapping[str, Any]) -> list[list[str]]:
    """The candidates with, right after each route whose refusal points at rewrites, that route with them
    (and after that one, if it was refused too, the route with the next rewrites)."""
    out = [list(r) for r in candidates]
    i = 0
    while i < len(out):
        for route, names in found:
            rewritten = with_rewrites(route, names, options) if route == out[i] else None
            if rewritten is not None and rewritten not in out:
                out.insert(i + 1, rewritten)
        i += 1
    return out


def refusal_rewrites(error: str, ops: Sequence[str] = ()) -> list[str]:
    """The rewrites a converter's refusal points at, of its best tier only (buildsys.rewrites.explain_refusal):
    a refusal naming STFT gets `stft`, not also `complex` for the complex dtype it mentions."""
    from buildsys.rewrites import explain_refusal

    matches = explain_refusal(error, ops)
    return [m.rewrite.name for m in matches if m.tier == matches[0].tier] if matches else []
