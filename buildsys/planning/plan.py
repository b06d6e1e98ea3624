"""The plan: every node of the requested targets with its state, what a build does about it, and why.

`plan` is the one way to plan: `modelbuild plan`, `build`, `build --dry-run`, `bundle` and the Python API all
call it with a `PlanRequest`, so they take the same routes. It plans (`make_plan`), and where the plan says
a model's op analysis would settle something — a QAT model lacking calibration data it does not need, the
order of routes whose converters may lack an op — it analyses what the request allows and plans again.

`make_plan` is pure (it reads the config, the lock, the store, the op-analysis cache and file stats, and
writes nothing but the stat cache):

    route pipeline (pipeline.py) → expansion (expand.py) → keys and statuses (planner.py) → exclude

A target takes its first candidate route that has not failed under the key it would have now: deploy.lock
remembers each failed route with the key of the node that failed, and the modelbuild version that failed
it, so a route is tried again only when something it depends on changed. Keys depend on the nodes the
chosen routes share, so `exclude` keys the first choices, drops those whose failure reappears, and plans
again, once per recorded failure at most. A target whose every route failed fails at once, naming each
route and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from buildsys import __version__
from buildsys.config.load import LoadedConfig
from buildsys.planning import coverage
from buildsys.planning import history as route_history
from buildsys.planning.expand import Dag, Unsettled, expand
from buildsys.localise.sites import blocked_line
from buildsys.planning.history import FAILED_EARLIER, History
from buildsys.planning.kinds import CheckKind, kind_of
from buildsys.planning.planner import NodePlan, Planner
from buildsys.planning.repair import tried as tried_repairs
from buildsys.records import DroppedRoute
from buildsys.status import Action, Analysis, State

if TYPE_CHECKING:
    from buildsys.planning.coverage import Coverage
    from buildsys.planning.routes import Route
    from buildsys.records import Event

__all__ = ["Plan", "PlanRequest", "NodePlan", "Planner", "plan", "make_plan"]


@dataclass(frozen=True)
class PlanRequest:
    """What a caller asks the planner for: the targets (None: all), forcing, benchmarks, and which op analysis
    may run before the plan is final (`Analysis`: none for a read-only `plan`, the stale targets' models for
    `build` and `build --dry-run`, every model for `plan --ops`), and how many of its probes run at once (`jobs`:
    a build's `-j`)."""

    targets: tuple[str, ...] | None = None
    force: bool = False
    force_kinds: tuple[str, ...] = ()
    bench: bool = False
    analysis: Analysis = Analysis.NONE
    jobs: int = 1


@dataclass
class Plan:
    """Nodes in dependency order with what each needs; `targets` are the requested ones."""

    config: LoadedConfig
    dag: Dag
    nodes: dict[str, NodePlan]
    targets: list[str]
    #: target → the routes it no longer tries: each failed under the key it would have again (deploy.lock's
    #: `routes`), in the order dropped
    dropped: dict[str, list[DroppedRoute]] = field(default_factory=dict)
    #: the models' ops against each converter's table, as far as the cache knows (planning.coverage)
    coverage: "Coverage | None" = None
    #: targets left out until their model's op analysis settles a plan-time problem (then `nodes` is empty)
    unsettled: list[Unsettled] = field(default_factory=list)

    def order(self) -> list[NodePlan]:
        return [self.nodes[n.name] for n in self.dag.order() if n.name in self.nodes]

    @property
    def work(self) -> list[NodePlan]:
        """The nodes a build acts on (runs, restores, fails or skips)."""
        return [p for p in self.order() if p.action is not Action.NONE]


def plan(planner: Planner, request: PlanRequest, on_event: "Callable[[Event], None] | None" = None) -> Plan:
    """The plan for `request`, after the op analysis it allows (see the module doc). A plan-time problem only
    the analysis could settle is raised as the ConfigError it is when the request allows none."""

    the_plan = make_plan(planner, request)
    analysed: set[str] = set()
    while the_plan.unsettled:  # QAT or not: analysed even with op coverage off, only the graph can say
        models = sorted({u.model for u in the_plan.unsettled} - analysed)
        if request.analysis is Analysis.NONE or not models:
            raise the_plan.unsettled[0].error()
        coverage.analyse(planner, models, [], on_event=on_event, jobs=request.jobs)
        analysed |= set(models)
        the_plan = make_plan(planner, request)
    # `plan --ops` (ALL) asks for the analysis outright; a build's (STALE) is on unless turned off
    if request.analysis is Analysis.ALL or (request.analysis is Analysis.STALE and coverage.enabled()
                                            and the_plan.work):
        every = request.analysis is Analysis.ALL  # else only the targets a build has work for
        wanted = [(the_plan.dag.contexts[t].config.model, the_plan.dag.candidates.get(t, []), the_plan.dag.contexts[t].options)
                  for t in the_plan.targets if every or not _fresh(the_plan, CheckKind.node_name(t))]
        models_, tables = coverage.missing(the_plan.coverage or coverage.Coverage(), wanted, every_model=every)
        if models_ or tables:  # what a route's converter lacks orders the routes before any runs
            coverage.analyse(planner, models_, tables, on_event=on_event, jobs=request.jobs)
            the_plan = make_plan(planner, request)
    return the_plan


def _fresh(the_plan: Plan, name: str) -> bool:
    return name in the_plan.nodes and the_plan.nodes[name].fresh


def make_plan(planner: Planner, request: PlanRequest, *, dropped_now: dict[str, list[list[str]]] | None = None,
              failed_now: dict[str, tuple[str, str]] | None = None,
              excluded_now: dict[str, list["Route"]] | None = None) -> Plan:
    """Expand the requested targets and give every node its state, action and reasons (no analysis).

    `dropped_now` (target → route words) are the routes that failed earlier in the same build: they stay
    dropped whatever key their failing node would have now (within a build nothing a key depends on changes,
    but a key is only known once the node's inputs are: a failing node behind one that is not fresh at plan
    time has no key to match its record, and the build would take that route again, and again).
    `failed_now` (node → (key, why)) are nodes that failed earlier in the same build: under the same key they
    fail again at once, unrun (another target's reroute must not repeat a conversion that cannot succeed).
    `excluded_now` (target → routes) are left out outright: a `prefer:` comparison pins a route so."""

    history = route_history.read(planner.lock.routes)
    known = coverage.read(planner)
    targets = list(request.targets) if request.targets else None
    chosen = {t: e["chosen"] for t, e in planner.lock.routes.items() if "chosen" in e}
    excluded: dict[str, list["Route"]] = {t: list(rs) for t, rs in (excluded_now or {}).items()}
    dropped: dict[str, list[DroppedRoute]] = {}
    while True:
        dag = expand(planner.config, targets, cache=planner.store.dir / "expansion.pickle", bench=request.bench,
                     history=history, gaps=known.gaps(), qat=known.qat(), excluded=excluded, chosen=chosen)
        selected = list(dag.target_nodes) if not targets else targets
        if dag.unsettled:
            return Plan(planner.config, dag, {}, selected, dropped, known, dag.unsettled)
        nodes = _statuses(planner, dag, request.force, request.force_kinds)
        again = _failed_again(dag, nodes, history, dropped_now or {}, request.force)
        if not again:
            break
        for target, record in again.items():  # exclude: those targets take their next route
            excluded.setdefault(target, []).append(dag.routes[target])
            dropped.setdefault(target, []).append(record)
    _fail_exhausted(dag, nodes, dropped, known)
    _fail_again(nodes, failed_now or {})
    _skip_needless(dag, nodes)
    return Plan(planner.config, dag, nodes, selected, dropped, known)


def _statuses(planner: Planner, dag: Dag, force: bool, force_kinds: tuple[str, ...]) -> dict[str, NodePlan]:
    """Every node's status, in dependency order (keys need upstream outputs)."""
    plans: dict[str, NodePlan] = {}
    digests: dict[str, str | None] = {}
    for node in dag.order():
        upstream = {d: digests[d] for d in node.deps}
        nplan = planner.status(node, upstream, force=force or node.kind in force_kinds)
        plans[node.name] = nplan
        # A fresh node's output is the lock's; a node that runs has an output not known yet, unless
        # the remote holds it (then its entry names the tree, and downstream can be keyed too).
        if nplan.action is Action.REMOTE:
            digests[node.name] = planner.remote.lookup(nplan.key)["tree"]
        else:
            digests[node.name] = None if nplan.runs else planner.output_digest(node.name)
    # An intermediate that is fresh but absent from the cache must be remade only if something
    # that consumes it runs (ninja's rule): walk dependents-first.
    for node in reversed(dag.order()):
        nplan = plans[node.name]
        if nplan.fresh and not kind_of(node).judges:
            entry = planner.lock.entry(node.name)
            needing = [c for c in dag.consumers[node.name] if plans[c].runs]
            if needing and not planner.store.has_files(entry.get("files", [])):
                nplan.state, nplan.action = State.STALE, Action.RUN
                nplan.reasons = [f"output missing from the cache (needed by {', '.join(needing)})"]
                planner._on_remote(node, nplan)
    return plans


def _failed_again(dag: Dag, nodes: dict[str, NodePlan], history: History, now: dict[str, list[list[str]]],
                  force: bool) -> dict[str, DroppedRoute]:
    """Targets whose chosen route failed before under a key that one of its nodes has again (by this version of
    modelbuild; `force` retries), or that failed earlier in this build: target → that failure's record."""
    node_keys = {p.key for p in nodes.values() if p.key}
    out: dict[str, DroppedRoute] = {}
    for target, route in dag.routes.items():
        record = route_history.record_of(history.get(target, []), route)
        if record is None or target in dag.exhausted:
            continue
        if record["route"] in now.get(target, []) or \
                (record["key"] in node_keys and record.get("modelbuild") == __version__ and not force):
            out[target] = record
    return out


def _fail_exhausted(dag: Dag, nodes: dict[str, NodePlan], dropped: dict[str, list[DroppedRoute]],
                    known: "Coverage") -> None:
    """A target whose every route failed: its check fails at once, naming each route and why, where the model
    calls the ops that were refused, and what to do."""

    for target in dag.exhausted:
        check = nodes[CheckKind.node_name(target)]
        tried = "; ".join(f"{' → '.join(r['route'])}: {r['reason']}" for r in dropped.get(target, []))
        reason = f"no route passes its check ({tried})"
        hint = tried_repairs(dag.candidates.get(target, []))
        reason = f"{reason}; {hint}" if hint else reason
        reason += blocked_line(dropped.get(target, []), known.tables)  # where the refused ops are called, what to do
        check.state, check.action, check.reasons = State.FAILED, Action.FAIL, [reason]


def _fail_again(nodes: dict[str, NodePlan], failed: dict[str, tuple[str, str]]) -> None:
    """A node that already failed in this build under the same key fails again at once, unrun."""
    for name, (key, why) in failed.items():
        nplan = nodes.get(name)
        if nplan is not None and nplan.runs and nplan.key == key:
            nplan.state, nplan.action, nplan.reasons = State.FAILED, Action.FAIL, [FAILED_EARLIER + why]


def _skip_needless(dag: Dag, nodes: dict[str, NodePlan]) -> None:
    """Stale work that only nodes which will not run need (an ONNX export made just for a TensorRT engine this
    host cannot build, an artifact of a target whose every route failed) is skipped, so such a target fails at
    once without running anything. Work that another target needs still runs."""
    for node in reversed(dag.order()):
        nplan = nodes[node.name]
        consumers = [nodes[c] for c in dag.consumers.get(node.name, []) if c in nodes]
        if nplan.action in (Action.RUN, Action.CACHED, Action.REMOTE, Action.RESTORE) and consumers \
                and all(c.action in (Action.FAIL, Action.SKIP) for c in consumers):
            names = ", ".join(sorted(c.node.name for c in consumers))
            host = all(c.state is State.BLOCKED for c in consumers)  # else: they already failed under their keys
            nplan.state = State.BLOCKED if host else nplan.state
            nplan.action = Action.SKIP
            nplan.reasons = [f"only needed by {names}, which {'this host cannot build' if host else 'will not run'}"]
