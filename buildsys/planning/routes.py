"""The format graph (formats as vertices, registered steps as edges) and a target's routes through it.

"TFLite needs SavedModel needs ONNX needs the traced model" falls out of this graph: a route is a
path (edges weighted by each step's `route_cost`) from the model's source format to the target's
format, through each `via:` stop. A route is a list of stops; a stop is a format name, or a format
name with the label of one of its step's `alternatives` (`tflite-int8 (dynamic)`: made with that
alternative's options instead of the defaults) or of the op rewrites it applies (`onnx (rewrite stft)`,
see rewrite_routes.py), or of the accuracy-repair recipe it quantizes with (`onnx-int8 (repair keep-float)`,
see repair.py).
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from buildsys.config.load import LoadedConfig
from buildsys.errors import ConfigError, PlanError, did_you_mean
from buildsys.formats import formats, steps
from buildsys.formats.precision import format_name

if TYPE_CHECKING:
    import networkx as nx


@lru_cache(maxsize=1)
def format_graph() -> "nx.DiGraph":
    """Formats as vertices; an edge a→b for every step that consumes a and produces b."""
    import networkx as nx

    g: nx.DiGraph[str] = nx.DiGraph()
    for name, fmt in formats().items():
        g.add_node(name, source=fmt.source)
    for step in steps().values():
        for consumed in step.consumes:
            if g.has_edge(consumed, step.produces):
                other = g.edges[consumed, step.produces]["step"]
                raise PlanError(f"steps {other} and {step.name} both turn {consumed} into {step.produces}")
            g.add_edge(consumed, step.produces, step=step.name, cost=step.route_cost)
    return g


#: At most this many paths of the format graph are tried for one target (the graph may hold more),
#: and at most MAX_ROUTES routes in all, alternatives included.
MAX_PATHS, MAX_ROUTES = 4, 6


def hop(stop: str) -> tuple[str, str]:
    """One stop of a route as (format, alternative label): `tflite-int8 (dynamic)` →
    ("tflite-int8", "dynamic"); a stop made with its step's default options has the label ""."""
    fmt, _, label = stop.partition(" (")
    return fmt, label.removesuffix(")")


#: How a stop's label names the rewrites its step applies: "rewrite " + names joined by "+".
LABEL = "rewrite "
#: How a stop's label names the accuracy-repair recipe its step applies (repair.py): "repair keep-float".
REPAIR = "repair "


def label_parts(label: str) -> tuple[str, tuple[str, ...]]:
    """A stop's label as (alternative label, rewrites): "dynamic" → ("dynamic", ()), "rewrite stft+complex"
    → ("", ("stft", "complex")); parts are separated by "; "."""
    alternative, names = "", tuple[str, ...]()
    for part in (p.strip() for p in label.split(";")):
        if part.startswith(LABEL):
            names = tuple(n for n in part[len(LABEL):].split("+") if n)
        elif part:
            alternative = part
    return alternative, names


def stop_options(step: Any, label: str) -> dict[str, Any]:
    """The options a stop's label sets on its step: its alternative's values and its rewrites."""
    alternative, names = label_parts(label)
    if alternative.startswith(REPAIR):
        out = dict(step.repairs[alternative[len(REPAIR):]])
    else:
        out = dict(step.alternatives[alternative]) if alternative else {}
    if names:
        out["rewrites"] = list(names)
    return out


def route_formats(route: list[str]) -> list[str]:
    """The formats a route passes, without alternative labels."""
    return [hop(stop)[0] for stop in route]


def candidate_routes(source: str, family: str, precision: str, via: list[str], routes: list[list[str]],
                     target: str, cfg: LoadedConfig, options: dict[str, Any] | None = None) -> list[list[str]]:
    """The routes a target tries, in order, until one's artifact passes its check.

    `via` pins one route, with default options. `routes` lists the paths to try as their `via`
    stops. Otherwise every path of the format graph is a candidate, cheapest first (the sum of its
    steps' `route_cost`, then fewest steps, then format names), the cheapest path `find_route` picks
    leading, so a target whose first route works builds exactly what it did before routes could fall
    back. After every path with default options come the same paths with each step's
    `alternatives` (a dynamic-range quantizer after the full-int8 ones), except where the target's
    `options` (format → its options) set a field the alternative would change, or contradict it.
    """
    import networkx as nx

    if via:
        return [find_route(source, family, precision, via, target, cfg)]
    if routes:
        tried = [find_route(source, family, precision, stops, target, cfg) for stops in routes]
        paths = [r for i, r in enumerate(tried) if r not in tried[:i]]
    else:
        first = find_route(source, family, precision, [], target, cfg)
        others = nx.all_simple_paths(format_graph(), source, first[-1], cutoff=len(first) + 2)
        ordered = sorted((p for p in others if p != first), key=lambda p: (route_cost(p), len(p), p))
        paths = [first, *ordered][:MAX_PATHS]
    found = [*paths, *_alternatives(paths, options or {})][:MAX_ROUTES]
    # A route that cannot honour an option the target sets is no candidate: a fallback must never
    # deliver something other than what was asked (another opset, another exporter). With none left,
    # the first route stays, so that expansion names the option it rejects (file:line, field).
    return [r for r in found if honours(r, options or {})] or found[:1]


def honours(route: list[str], options: dict[str, Any]) -> bool:
    """Whether every option the target sets (format → options) applies on `route`: each format it
    names is made on the route, by a step whose options model accepts them."""
    from pydantic import ValidationError

    g = format_graph()
    stops = [hop(stop) for stop in route]
    made = {fmt: (stops[i - 1][0], label) for i, (fmt, label) in enumerate(stops) if i}
    for fmt, given in options.items():
        if fmt not in made:
            return False
        if not isinstance(given, dict):
            continue  # not a mapping: expansion reports it, naming the field
        before, label = made[fmt]
        step = steps()[g.edges[before, fmt]["step"]]
        try:
            step.Options.model_validate({**given, **stop_options(step, label)} if label else given)
        except ValidationError:
            return False
    return True


def _alternatives(paths: list[list[str]], options: dict[str, Any]) -> list[list[str]]:
    """Each path again with one step's alternative in place of its default options."""
    from pydantic import ValidationError

    g = format_graph()
    out = []
    for path in paths:
        for i, (a, b) in enumerate(pairwise(path), start=1):
            step = steps()[g.edges[a, b]["step"]]
            chosen = options.get(b)
            given: dict[str, Any] = chosen if isinstance(chosen, dict) else {}
            for label, values in step.alternatives.items():
                if set(values) & set(given):
                    continue  # the target chose that option itself
                try:
                    step.Options.model_validate({**given, **values})
                except ValidationError:
                    continue  # the target's other options contradict it (io: int8 with dynamic range)
                out.append([*path[:i], f"{b} ({label})", *path[i + 1:]])
    return out


def route_cost(route: list[str]) -> float:
    """The total cost of a route: the `route_cost` of each step along it."""
    g = format_graph()
    return sum(g.edges[a, b]["cost"] for a, b in pairwise(route_formats(route)))


def find_route(source: str, family: str, precision: str, via: list[str], target: str,
               cfg: LoadedConfig) -> list[str]:
    """Formats from `source` to the `family` format at `precision` through each of `via` in order
    (cheapest by `route_cost` between stops)."""
    import networkx as nx

    g = format_graph()
    buildable = sorted(n for n in g.nodes if not g.nodes[n]["source"])
    goal = format_name(family, precision)
    if goal not in g and any(f.family == family for f in formats().values()):
        others = sorted({f.family for f in formats().values() if f.precision == precision})
        raise ConfigError(f"format '{family}' has no {precision} variant", where=cfg.where("targets", target, "precision"),
                          field=f"targets.{target}.precision",
                          hint=f"{precision} exists for: {', '.join(others) or 'no format'}")
    for i, stop in enumerate([*via, goal]):
        if stop not in g:
            key = ("targets", target, "via", i) if i < len(via) else ("targets", target, "format")
            raise ConfigError(f"unknown format '{stop}'", where=cfg.where(*key), field=".".join(map(str, key[:3])),
                              hint=did_you_mean(stop, buildable) or f"known formats: {', '.join(buildable)}")
    route = [source]
    for stop in [*via, goal]:
        try:
            leg = nx.shortest_path(g, route[-1], stop, weight="cost")
        except nx.NetworkXNoPath:
            reachable = sorted(nx.descendants(g, route[-1]))
            raise PlanError(f"target '{target}': no route from {route[-1]} to {stop}",
                            where=cfg.where("targets", target, "format"), field=f"targets.{target}",
                            hint=f"from {route[-1]} modelbuild can make: {', '.join(reachable) or 'nothing'}") from None
        route += leg[1:] if len(leg) > 1 else leg  # a stop equal to where we are revisits it
    seen = set()
    for fmt in route:
        if fmt in seen:
            raise PlanError(f"target '{target}': route {' → '.join(route)} visits {fmt} twice (a cycle)",
                            where=cfg.where("targets", target, "via"), field=f"targets.{target}.via",
                            hint="remove the repeated format from 'via'")
        seen.add(fmt)
    return route
