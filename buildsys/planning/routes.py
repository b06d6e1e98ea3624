"""The format graph (formats as vertices, registered steps as edges) and routes through it, as types.

"TFLite needs SavedModel needs ONNX needs the traced model" falls out of this graph: a route is a
path (edges weighted by each step's `route_cost`) from the model's source format to the target's
format, through each `via:` stop. A `Route` is a tuple of `Stop`s; a stop is a format made with its
step's default options, or with what its label says: one of the step's `alternatives`
(`tflite-int8 (dynamic)`), an accuracy-repair recipe (`onnx-int8 (repair keep-float)`, repair.py), op
rewrites applied where the module is loaded (`onnx (rewrite stft)`, answers.py), decompositions
(`pt2 (decompose grid_sampler_2d)`) or converter switches (`saved_model (switch no-broadcast)`).
deploy.lock, `--json` and the report spell a route as its stops' words (`Route.words`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from buildsys.config.load import LoadedConfig
from buildsys.errors import ConfigError, PlanError, did_you_mean
from buildsys.formats import formats, steps
from buildsys.formats.precision import format_name

if TYPE_CHECKING:
    import networkx as nx

    from buildsys.formats.base import Step

#: At most this many paths of the format graph are tried for one target (the graph may hold more),
#: and at most MAX_ROUTES routes in all, alternatives included.
MAX_PATHS, MAX_ROUTES = 4, 6

#: How a stop's label names what its step does beyond its defaults, one part each, joined by "; ".
REPAIR, REWRITE, DECOMPOSE, SWITCH = "repair ", "rewrite ", "decompose ", "switch "


@dataclass(frozen=True)
class Stop:
    """One format of a route and how its step makes it: with its default options, or with an
    `alternative` (a label of `Step.alternatives`), a `repair` recipe (`Step.repairs`), `rewrites` and
    `decompose` ops applied where the PyTorch module is loaded, converter `switches` (`Step.switches`)."""

    format: str
    alternative: str = ""
    repair: str = ""
    rewrites: tuple[str, ...] = ()
    decompose: tuple[str, ...] = ()
    switches: tuple[str, ...] = ()

    @classmethod
    def parse(cls, word: str) -> "Stop":
        """`onnx-int8 (repair keep-float; rewrite stft+complex)` → Stop("onnx-int8", repair="keep-float", …)."""
        fmt, _, label = word.partition(" (")
        fields: dict[str, Any] = {}
        for part in (p.strip() for p in label.removesuffix(")").split(";")):
            if part.startswith(REPAIR):
                fields["repair"] = part[len(REPAIR):]
            elif part.startswith(REWRITE):
                fields["rewrites"] = tuple(n for n in part[len(REWRITE):].split("+") if n)
            elif part.startswith(DECOMPOSE):
                fields["decompose"] = tuple(n for n in part[len(DECOMPOSE):].split("+") if n)
            elif part.startswith(SWITCH):
                fields["switches"] = tuple(n for n in part[len(SWITCH):].split("+") if n)
            elif part:
                fields["alternative"] = part
        return cls(fmt, **fields)

    @property
    def label(self) -> str:
        """What the step does beyond its defaults, in words ("" for none)."""
        parts = [self.alternative] if self.alternative else []
        parts += [REPAIR + self.repair] if self.repair else []
        parts += [SWITCH + "+".join(self.switches)] if self.switches else []
        parts += [REWRITE + "+".join(self.rewrites)] if self.rewrites else []
        parts += [DECOMPOSE + "+".join(self.decompose)] if self.decompose else []
        return "; ".join(parts)

    def __str__(self) -> str:
        return f"{self.format} ({self.label})" if self.label else self.format

    @property
    def tuned(self) -> bool:
        """Whether the step runs with other option values than its defaults for the quantizer or converter
        (an alternative, a repair recipe or a switch): a repair is not opened on top of one."""
        return bool(self.alternative or self.repair or self.switches)

    def options(self, step: type["Step"]) -> dict[str, Any]:
        """The option values this stop sets on `step` (merged over the target's own options)."""
        out: dict[str, Any] = dict(step.alternatives[self.alternative]) if self.alternative else {}
        if self.repair:
            out.update(step.repairs[self.repair])
        for name in self.switches:
            out.update(switch_values(step, name))
        if self.rewrites:
            out["rewrites"] = list(self.rewrites)
        if self.decompose:
            out["decompose"] = "core" if self.decompose == ("core",) else list(self.decompose)
        return out


@dataclass(frozen=True)
class Route:
    """A path of the format graph with how each stop is made: a target's candidate. Compared and hashed by
    its stops; `origin` says which stage of the route pipeline made it (for `explain`)."""

    stops: tuple[Stop, ...]
    origin: str = field(default="path", compare=False)

    @classmethod
    def parse(cls, words: Iterable[str], origin: str = "path") -> "Route":
        return cls(tuple(Stop.parse(w) for w in words), origin)

    @classmethod
    def of_formats(cls, fmts: Iterable[str], origin: str = "path") -> "Route":
        return cls(tuple(Stop(f) for f in fmts), origin)

    def words(self) -> list[str]:
        """The route as deploy.lock, `--json` and the report write it."""
        return [str(s) for s in self.stops]

    def __str__(self) -> str:
        return " → ".join(self.words())

    @property
    def formats(self) -> list[str]:
        return [s.format for s in self.stops]

    def steps(self) -> list[type["Step"]]:
        """The step classes along the route, one per hop."""
        g = format_graph()
        return [steps()[g.edges[a, b]["step"]] for a, b in pairwise(self.formats)]

    def step_at(self, i: int) -> type["Step"]:
        """The step that makes stop `i` (i ≥ 1)."""
        return steps()[format_graph().edges[self.stops[i - 1].format, self.stops[i].format]["step"]]

    def with_stop(self, i: int, stop: Stop, origin: str) -> "Route":
        return Route((*self.stops[:i], stop, *self.stops[i + 1:]), origin)

    def loading_stop(self) -> int | None:
        """The index of the stop whose step loads the PyTorch module (rewrites and decompositions apply
        there); None when the route loads none (it starts from an ONNX or TorchScript file)."""
        return next((i for i in range(1, len(self.stops)) if loads_module(self.step_at(i))), None)

    def cost(self) -> float:
        """The sum of the `route_cost` of each step along it."""
        g = format_graph()
        return sum(g.edges[a, b]["cost"] for a, b in pairwise(self.formats))

    @property
    def repaired(self) -> bool:
        return any(s.repair for s in self.stops)


def switch_values(step: type["Step"], name: str) -> dict[str, Any]:
    """The option values a stop's switch `name` sets on `step`: one of the step's own `switches`, else the
    answer of that label some step's `symptoms` declare (a refusal of the TFLite converter answered by an
    onnx2tf option of the SavedModel stop before it: buildsys.lowering). An unknown name is a PlanError
    (a lock written by another version of modelbuild)."""
    if name in step.switches:
        return dict(step.switches[name])
    found = _symptom_switches().get(name)
    if found is None:
        raise PlanError(f"unknown converter switch '{name}' on step {step.name}",
                        hint=did_you_mean(name, sorted(step.switches) + sorted(_symptom_switches())))
    return found


@lru_cache(maxsize=1)
def _symptom_switches() -> dict[str, dict[str, Any]]:
    """Every option-setting answer the steps' symptoms declare, by label (decompositions and route answers
    are not switches: they are a stop's `decompose` and another route)."""
    out: dict[str, dict[str, Any]] = {}
    for step in steps().values():
        for symptom in step.symptoms:
            answer = symptom.answer
            if answer.options and not answer.via and "decompose" not in answer.values:
                out.setdefault(answer.label, answer.values)
    return out


def loads_module(step: type["Step"]) -> bool:
    """Whether a step loads the PyTorch module (and so applies rewrites): declared by its options' type."""
    from buildsys.formats.torch.rewritten import RewritableOptions

    return issubclass(step.Options, RewritableOptions)


@lru_cache(maxsize=1)
def format_graph() -> "nx.DiGraph[str]":
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


def paths(source: str, family: str, precision: str, via: Sequence[str], listed: Sequence[Sequence[str]],
          target: str, cfg: LoadedConfig) -> list[Route]:
    """The paths a target may take, in order, with default options: `via` pins one; `listed` (the target's
    `routes:`) names them by their stops; otherwise every path of the format graph, cheapest first (the sum
    of its steps' `route_cost`, then fewest steps, then format names), the cheapest (`find_route`) leading,
    so a target whose first route works builds exactly what it did before routes could fall back."""
    import networkx as nx

    if via:
        return [find_route(source, family, precision, via, target, cfg)]
    if listed:
        tried = [find_route(source, family, precision, stops, target, cfg) for stops in listed]
        return [r for i, r in enumerate(tried) if r not in tried[:i]]
    first = find_route(source, family, precision, [], target, cfg)
    others = (Route.of_formats(p) for p in nx.all_simple_paths(format_graph(), source, first.formats[-1],
                                                                cutoff=len(first.stops) + 2))
    ordered = sorted((p for p in others if p != first), key=lambda r: (r.cost(), len(r.stops), r.formats))
    return [first, *ordered][:MAX_PATHS]


def through(stops: Sequence[str]) -> list[str] | None:
    """The cheapest formats (by `route_cost`) from the first of `stops` through each in order; None where the
    format graph has no such path."""
    import networkx as nx

    g = format_graph()
    out = [stops[0]]
    try:
        for a, b in pairwise(stops):
            out += nx.shortest_path(g, a, b, weight="cost")[1:]
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return None
    return out if len(set(out)) == len(out) else None


def alternatives(routes: Sequence[Route], options: Mapping[str, Any]) -> list[Route]:
    """Each route again with one step's alternative in place of its default options, except where the
    target's `options` (format → its options) set a field the alternative would change, or contradict it."""
    from pydantic import ValidationError

    out = []
    for route in routes:
        for i in range(1, len(route.stops)):
            step = route.step_at(i)
            chosen = options.get(route.stops[i].format)
            given: dict[str, Any] = chosen if isinstance(chosen, dict) else {}
            for label, values in step.alternatives.items():
                if set(values) & set(given):
                    continue  # the target chose that option itself
                try:
                    step.Options.model_validate({**given, **values})
                except ValidationError:
                    continue  # the target's other options contradict it (io: int8 with dynamic range)
                out.append(route.with_stop(i, replace(route.stops[i], alternative=label), "alternative"))
    return out


def honours(route: Route, options: Mapping[str, Any]) -> bool:
    """Whether every option the target sets (format → options) applies on `route`: each format it
    names is made on the route, by a step whose options model accepts them."""
    from pydantic import ValidationError

    made = {stop.format: i for i, stop in enumerate(route.stops) if i}
    for fmt, given in options.items():
        if fmt not in made:
            return False
        if not isinstance(given, dict):
            continue  # not a mapping: expansion reports it, naming the field
        i = made[fmt]
        step = route.step_at(i)
        try:
            step.Options.model_validate({**given, **route.stops[i].options(step)})
        except ValidationError:
            return False
    return True


def knows(route: Route, options: Mapping[str, Any]) -> bool:
    """Whether every option name the target sets is a field of the step that makes its format on `route` (its
    values may still be wrong): the route whose step can say what is wrong with a value."""
    made = {stop.format: i for i, stop in enumerate(route.stops) if i}
    for fmt, given in options.items():
        if fmt not in made or not isinstance(given, dict):
            return False
        if set(given) - set(route.step_at(made[fmt]).Options.model_fields):
            return False
    return True


def find_route(source: str, family: str, precision: str, via: Sequence[str], target: str,
               cfg: LoadedConfig) -> Route:
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
    return Route.of_formats(route)
