"""Routes ordered by op coverage: a route whose converters lack one of the model's ops goes after the routes
that can work, or gives its place to the same route with the rewrites that remove what it lacks (the route
pipeline's `order` stage; planning.coverage knows what each converter lacks). A route whose converter writes out
an op of the model that another route keeps in a fused kernel (`Step.unrolls`: litert-torch's LSTM) goes after
the routes that keep it: native kernels before rewrites. Where torch.export refuses the model's dynamic axes, a
route's static export goes just before it where the formats after its loading stop have fixed shapes anyway.

A step declares what it accepts (`Step.accepts_ops`: a table and which inventory it reads, the graph as
exported or after the core ATen decompositions; `Step.accepts(options)` where an option picks the converter).
A table that could not be read leaves its routes as they were: coverage unknown is never coverage refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from buildsys.planning.answers import with_rewrites
from buildsys.rewrites import REGISTRY, removing
from buildsys.rewrites.base import op_base

if TYPE_CHECKING:
    from buildsys.formats.base import Step
    from buildsys.planning.routes import Route


def order_routes(routes: list["Route"], gaps: Mapping[str, list[str]], options: Mapping[str, Any],
                 auto_rewrites: bool) -> list["Route"]:
    """`routes` with those whose converters lack an op (`gaps`: the model's "table:reads" → ops lacking) moved
    after the ones that can work; where rewrites remove every op a route lacks (and `auto_rewrites`), that
    route with them first, in its place. Where PyTorch's tables decompose every op a route lacks (`gaps`'
    "decomposable": the model's ops they lower), the route with those ops decomposed where the module is
    loaded comes after the routes that can work and before those that lack an op: it may work, they cannot."""

    if gaps.get("dynamic-refused"):
        routes = _static_first(routes, options)
    decomposable = set(gaps.get("decomposable", []))
    unrolled = set(gaps.get("unrolled", []))
    good: list["Route"] = []
    unrolling: list["Route"] = []  # they work, but write out an op another route keeps in a fused kernel
    lowered: list["Route"] = []
    bad: list["Route"] = []
    for route in routes:
        lacking = route_gaps(route, gaps, options)
        if not lacking:
            (unrolling if unrolled & {op for step in route.steps() for op in step.unrolls} else good).append(route)
            continue
        names = _rewrites_for(lacking)
        rewritten = with_rewrites(route, names, options) if auto_rewrites and names is not None else None
        if rewritten is not None and route_gaps(rewritten, gaps, options) == []:
            good.append(rewritten)
        elif set(lacking) <= decomposable:
            decomposed = with_decompose(route, lacking, options)
            lowered += [decomposed] if decomposed is not None else []
        bad.append(route)
    out = [r for i, r in enumerate(good) if r not in good[:i]]
    out += [r for i, r in enumerate(unrolling) if r not in out and r not in unrolling[:i]]
    out += [r for i, r in enumerate(lowered) if r not in out and r not in lowered[:i]]
    return out + [r for r in bad if r not in out]


def _static_first(routes: list["Route"], options: Mapping[str, Any]) -> list["Route"]:
    """`routes` where torch.export refuses the model's dynamic axes (the probe's `dynamic_refused`): each route whose
    loading stop can export at static shapes, because the formats after it have fixed shapes anyway, with that
    static export (the answer its refusal would get: lowering/answers.STATIC_EXPORT) just before it, instead of a
    conversion that fails first. A route that must keep its dynamic axes (a .pt2 delivered) keeps its place."""
    from buildsys.lowering.answers import STATIC_EXPORT
    from buildsys.planning.answers import answer_route

    out: list["Route"] = []
    for route in routes:
        i = route.loading_stop()
        static = answer_route(route, i, STATIC_EXPORT.answer, options, [], pinned=False) if i is not None else None
        out += [r for r in (static, route) if r is not None and r not in out]
    return out


def with_decompose(route: "Route", ops: Sequence[str], options: Mapping[str, Any]) -> "Route | None":
    """`route` with `ops` decomposed at its loading stop: the decomposition a refusal naming them would get
    (answers.answer_route, merged with the stop's own list); None when it loads no module, decomposes
    everything already, or the target sets `decompose` for that format itself."""
    from buildsys.lowering import LOADING, Answer
    from buildsys.planning.answers import answer_route

    i = route.loading_stop()
    if i is None:
        return None
    found = Answer.of(f"decompose {'+'.join(ops)}", {"decompose": list(ops)}, at=LOADING)
    return answer_route(route, i, found, options, [], pinned=False)


def route_gaps(route: "Route", gaps: Mapping[str, list[str]], options: Mapping[str, Any] | None = None) -> list[str]:
    """The ops the route's converters lack (per the tables, under the target's `options` by format), less
    those the route's rewrites remove."""

    removed = {op_base(op) for stop in route.stops for n in stop.rewrites if n in REGISTRY for op in REGISTRY[n].removes}
    out: list[str] = []
    for i, step in enumerate(route.steps(), start=1):
        accepts = step_accepts(step, route.stops[i].format, options)
        if accepts:
            out += [op for op in gaps.get(f"{accepts[0]}:{accepts[1]}", []) if op not in removed and op not in out]
    return out


def _rewrites_for(ops: Sequence[str]) -> list[str] | None:
    """One rewrite per op (the first that removes it), or None when an op has none."""

    names: list[str] = []
    for op in ops:
        found = removing(op)
        if not found:
            return None
        names += [found[0].name] if found[0].name not in names else []
    return names


def route_tables(routes: Sequence["Route"], options: Mapping[str, Any] | None = None) -> set[str]:
    """The tables the steps of `routes` read, given the target's options by format."""
    out: set[str] = set()
    for route in routes:
        for i, step in enumerate(route.steps(), start=1):
            accepts = step_accepts(step, route.stops[i].format, options)
            out |= ({accepts[0]} if accepts else set()) | ({step.delegates_ops[0]} if step.delegates_ops else set())
    return out


def step_accepts(step: type["Step"], fmt: str, options: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """What `step` (making `fmt`) reads under the target's options for that format."""
    given = (options or {}).get(fmt)
    return step.accepts(given if isinstance(given, Mapping) else None)
