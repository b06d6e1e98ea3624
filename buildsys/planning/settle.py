"""The one decision loop: plan, execute, turn the results into the next plan, until no route changes.

Ninja and pydoit decide in planning and keep the executor dumb; so does modelbuild. `settle` plans the
targets (`plan.plan`, the one entry point), hands each plan to `execute` (the executor: it runs the plan's
nodes, reports what happened and decides nothing), and turns what failed into the next plan: a failed
route is recorded in deploy.lock (`failures.failures` says what to record, `record.LockWriter` writes it)
and its targets take their next candidate (another route, the same route with a rewrite, a repair recipe),
while a node that already failed under the same key fails again at once, unrun. The Python API and the
CLI call `settle`; neither decides anything.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from buildsys.planning.failures import failures
from buildsys.planning.history import FAILED_EARLIER
from buildsys.planning.kinds import CheckKind
from buildsys.planning.plan import Plan, PlanRequest, make_plan, plan
from buildsys.planning.prefer import choose
from buildsys.records import Event, NodeResult
from buildsys.status import Analysis, Outcome

if TYPE_CHECKING:
    from buildsys.planning.planner import Planner
    from buildsys.planning.record import LockWriter

#: Runs a plan's work, recording each finished node through the lock writer, and returns what happened to
#: each node it ran (the executor: it decides nothing).
Execute = Callable[[Plan], dict[str, NodeResult]]


def settle(planner: "Planner", request: PlanRequest, execute: Execute, writer: "LockWriter", *,
           on_event: Callable[[Event], None] | None = None, watch: Any = None) -> tuple[Plan, dict[str, NodeResult]]:
    """Plan `request` (analysing what a build may: `Analysis.STALE`), execute, and plan again after every failed
    route until no route changes; the last plan and every node's latest result. `watch` (the CLI's no-op
    snapshot) wraps the first plan, which is the one a no-op repeats."""
    request = replace(request, analysis=Analysis.STALE)
    with watch(planner) if watch else nullcontext():
        the_plan = plan(planner, request, on_event)
    results: dict[str, NodeResult] = {}
    failed: dict[str, tuple[str, str]] = {}  # node → (its key, why it failed) in this build
    first_metrics: dict[str, dict[str, Any]] = {}  # node → what its first failure in this build measured
    dropped_now: dict[str, list[list[str]]] = {}  # target → the routes that failed in this build
    while the_plan.work:
        results.update(execute(the_plan))
        for name, result in results.items():  # the first failure under a key is the one to repeat
            key = the_plan.nodes[name].key if name in the_plan.nodes else None
            if result.outcome is Outcome.FAILED and key and failed.get(name, ("",))[0] != key:
                failed[name] = (key, _why(result))
                first_metrics[name] = dict(result.metrics)
            elif result.outcome is Outcome.FAILED and not result.metrics and name in first_metrics:
                # failed again unrun: it carries what its first failure found (where a budget stopped it, where
                # the model calls the op a converter refused), so each route it ends records the same
                result.metrics = dict(first_metrics[name])
        records = failures(the_plan, results, planner.lock)
        if not records:
            break
        writer.dropped(records)  # then plan again: those targets take their next route
        for target, record in records.items():
            dropped_now.setdefault(target, []).append(record["route"])
            if on_event is not None:
                on_event(Event("rerouted", CheckKind.node_name(target), "check", target, error=f"route "
                               f"{' → '.join(record['route'])} dropped at {record['node']}: {record['reason']}"))
        the_plan = make_plan(planner, request, dropped_now=dropped_now, failed_now=failed)
        # What failed or was skipped on the dropped route is judged again on the next one.
        results = {n: r for n, r in results.items()
                   if n in the_plan.nodes and r.outcome not in (Outcome.FAILED, Outcome.SKIPPED)}
    return choose(planner, request, execute, writer, the_plan, results, on_event)  # `prefer:`: the best route


def _why(result: NodeResult) -> str:
    """A failure in words, as a node failed again unrun repeats it."""
    return "; ".join(str(f).removeprefix(FAILED_EARLIER)
                     for f in result.metrics.get("failures") or [result.error or "failed"])
