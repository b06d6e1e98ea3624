"""The one decision loop: plan, execute, turn the results into the next plan, until nothing changes.

Ninja and pydoit decide in planning and keep the executor dumb; so does modelbuild. `settle` plans the
targets (ordered by op coverage once the models' ops are known: buildsys.planning.coverage), hands each plan to
`execute` (the executor: it runs the plan's nodes and decides nothing), and turns what failed into the
next plan: a failed route is recorded in deploy.lock (`reroute.route_failures`; `Lock.write` writes it)
and its targets take their next candidate (another route, the same route with a rewrite, a repair
recipe), while a node that already failed under the same key fails again at once, unrun. The Python
API and the CLI call `settle`; neither decides anything.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable

from buildsys.running.results import FAILED, SKIPPED, Event, NodeResult

if TYPE_CHECKING:
    from buildsys.storage.lock import Lock
    from buildsys.planning.plan import Plan, Planner

#: Runs a plan's work and returns what happened to each node it ran (the executor; it decides nothing).
Execute = Callable[["Plan"], dict[str, NodeResult]]


def settle(planner: "Planner", targets: list[str] | None, execute: Execute, *, force: bool = False,
           force_kinds: tuple[str, ...] = (), bench: bool = False, on_event: Callable[[Event], None] | None = None,
           watch: Any = None) -> tuple["Plan", dict[str, NodeResult]]:
    """Plan `targets` (None: all), execute, and plan again after every failed route until no route
    changes; the last plan and every node's latest result. `watch` (the CLI's no-op snapshot) wraps the
    first plan, which is the one a no-op repeats."""
    from buildsys.planning.coverage import enabled
    from buildsys.planning.plan import make_plan
    from buildsys.planning.history import route_failures

    options: dict[str, Any] = {"force_kinds": force_kinds, "bench": bench}
    with watch(planner) if watch else nullcontext():
        # Analysed even with op coverage off: only the graph can say that a model lacking calibration data needs none
        plan = knowing_qat(planner, targets, analyse=True, on_event=on_event, force=force, **options)
    if plan.work and enabled():  # what a route's converter lacks orders the routes before any runs
        plan = analysed(planner, plan, targets, force=force, on_event=on_event, **options)
    results: dict[str, NodeResult] = {}
    failed: dict[str, tuple[str, NodeResult]] = {}  # node → (its key, the failure) in this build
    dropped_now: dict[str, list[list[str]]] = {}  # target → the routes that failed in this build
    while plan.work:
        results.update(execute(plan))
        for n, r in results.items():  # the first failure under a key is the one to repeat
            key = plan.nodes[n].key if n in plan.nodes else None
            if r.outcome == FAILED and key and failed.get(n, ("",))[0] != key:
                failed[n] = (key, r)
        dropped = route_failures(plan, results, planner.lock)
        if not dropped:
            break
        remember(planner.lock, dropped, on_event)  # then plan again: those targets take their next route
        for target, record in dropped.items():
            dropped_now.setdefault(target, []).append(record["route"])
        plan = make_plan(planner, targets, force=False, dropped_now=dropped_now, **options)
        fail_again(plan, failed)
        # What failed or was skipped on the dropped route is judged again on the next one.
        results = {n: r for n, r in results.items() if n in plan.nodes and r.outcome not in (FAILED, SKIPPED)}
    return plan, results


def knowing_qat(planner: "Planner", targets: list[str] | None, *, analyse: bool,
                on_event: Callable[[Event], None] | None = None, **options: Any) -> "Plan":
    """`make_plan`; where it cannot tell whether a model missing calibration data is quantization-aware trained
    (buildsys.formats.torch.qat.QatUnknown: its graph not analysed yet) and `analyse` allows it, that model's ops are analysed
    first (buildsys.planning.coverage, which records what its graph says) and it plans again. Each model once: one whose
    analysis did not answer gets the calibration error."""
    from buildsys.planning.coverage import analyse as analyse_ops
    from buildsys.planning.plan import make_plan
    from buildsys.formats.torch.qat import QatUnknown

    done: set[str] = set()
    while True:
        try:
            return make_plan(planner, targets, **options)
        except QatUnknown as exc:
            if not analyse or exc.model in done:
                raise
            done.add(exc.model)
            analyse_ops(planner, [exc.model], [], on_event=on_event)


def analysed(planner: "Planner", plan: "Plan", targets: list[str] | None, stale_only: bool = True,
             on_event: Callable[[Event], None] | None = None, **options: Any) -> "Plan":
    """`plan`, planned again once the ops of its models (those of targets with work, with `stale_only`)
    and the converter tables its routes need are in the cache (buildsys.planning.coverage); itself when nothing was
    missing. `on_event` hears each analysis start and end (kind "analysis"), so a build does not sit silent."""
    from buildsys.planning.coverage import analyse, missing
    from buildsys.planning.plan import make_plan

    models, tables = missing(plan, stale_only=stale_only)
    if not models and not tables:
        return plan
    analyse(planner, models, tables, on_event=on_event)
    return make_plan(planner, targets or None, **options)


def fail_again(plan: Any, failed: dict[str, tuple[str, NodeResult]]) -> None:
    """A node that already failed in this build under the same key fails again at once, unrun
    (another target's reroute must not repeat a conversion that cannot succeed)."""
    from buildsys.planning.plan import BLOCKED, RUN
    from buildsys.planning.history import FAILED_EARLIER

    for name, (key, result) in failed.items():
        nplan = plan.nodes.get(name)
        if nplan is not None and nplan.action == RUN and nplan.key == key:
            why = "; ".join(str(f).removeprefix(FAILED_EARLIER) for f in result.metrics.get("failures") or [result.error or "failed"])
            nplan.action, nplan.failed, nplan.reasons = BLOCKED, True, [FAILED_EARLIER + why]


def remember(lock: "Lock", dropped: dict[str, dict[str, Any]], on_event: Callable[[Event], None] | None) -> None:
    """Record each failed route in deploy.lock (replacing an older failure of the same route)."""
    from buildsys.planning.kinds import CheckKind

    for target, record in dropped.items():
        entry = lock.routes.setdefault(target, {"dropped": []})
        entry["dropped"] = [r for r in entry["dropped"] if r["route"] != record["route"]] + [record]
        if on_event is not None:
            on_event(Event("rerouted", CheckKind.node_name(target), "check", target,
                           error=f"route {' → '.join(record['route'])} dropped at {record['node']}: {record['reason']}"))
    lock.write()


def host_blocked(plan: "Plan") -> dict[str, tuple[bool, str]]:
    """What `build` must not start on this host: node → (fails, message), in dependency order.

    Blocked nodes whose own step cannot run here fail with its reason; blocked nodes downstream of
    them are skipped, and so is stale work that only blocked nodes need (an ONNX export made just
    for a TensorRT engine), so a target that cannot be built here fails at once without running
    anything. Work that another target needs still runs."""
    from buildsys.planning.plan import BLOCKED, NOTHING

    out: dict[str, tuple[bool, str]] = {}
    for p in plan.order():
        if p.action == BLOCKED:
            out[p.node.name] = (not p.reasons[0].startswith("upstream "), p.reasons[0])
    for node in reversed(plan.dag.order()):
        planned = plan.nodes.get(node.name)
        consumers = [c for c in plan.dag.consumers.get(node.name, []) if c in plan.nodes]
        if planned is not None and planned.action != NOTHING and node.name not in out and consumers \
                and all(c in out for c in consumers):
            out[node.name] = (False, f"only needed by {', '.join(sorted(consumers))}, which this host cannot build")
    return {n.name: out[n.name] for n in plan.dag.order() if n.name in out}
