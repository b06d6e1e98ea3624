"""Choosing by objective: a target with `prefer: latency | size | accuracy` ships the best of its passing routes.

Without `prefer:` the first route that passes ships (the cheapest build). With it, once the decision loop has
settled (settle.py), each such target whose choice is not on record builds and checks up to
`RIVALS` more of its plain candidate routes (no fallback scheme, no repair recipe, none that failed before),
one round at a time through the same executor and within `BUDGET_S`, measures each from what its check and
its artifact recorded (the check's quick latency, the deliverable's bytes, its accuracy), ships the best, and
records the comparison in deploy.lock (`routes.<target>.chosen`). The expansion takes a chosen route before the
others (expand.py), so a later build plans it at once and measures nothing again, until the check of that
route has another key (new weights, options, toolchain): then the comparison runs again.

A rival replaces the route tried first only when it is better by more than the host's noise (`MARGIN`): a
desktop host's latency varies by a few percent from run to run, and a choice must not flip on it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from buildsys.planning.kinds import CheckKind
from buildsys.planning.plan import Plan, PlanRequest, make_plan
from buildsys.records import ChosenRoute, ComparedRoute, Event, NodeResult
from buildsys.status import Outcome

if TYPE_CHECKING:
    from buildsys.planning.planner import Planner
    from buildsys.planning.record import LockWriter
    from buildsys.planning.routes import Route
    from buildsys.records import NodeEntry

#: How many routes besides the one that passed first are built and measured, at most.
RIVALS = 2
#: No comparison round starts after this many seconds of comparing (the rounds that ran are compared).
BUDGET_S = 600.0
#: How much better a rival must be to replace the route tried first: relative for latency and size, absolute
#: (a fraction of the validation set, or of agreement) for accuracy.
MARGIN = {"latency": 0.05, "size": 0.01, "accuracy": 0.001}


def choose(planner: "Planner", request: PlanRequest, execute: Callable[[Plan], dict[str, NodeResult]],
           writer: "LockWriter", the_plan: Plan, results: dict[str, NodeResult],
           on_event: Callable[[Event], None] | None = None) -> tuple[Plan, dict[str, NodeResult]]:
    """After the decision loop: compare the routes of every target whose `prefer:` has no valid choice on record,
    record each choice, and return the plan that takes the chosen routes with every node's latest result."""

    rivals = {t: _rivals(planner, the_plan, t) for t in _unchosen(planner, the_plan, results)}
    if not rivals:
        return the_plan, results
    measured = {t: [_measure(planner, the_plan, t, the_plan.dag.routes[t], results)] for t in rivals}
    started, skipped = time.monotonic(), set()
    while any(rivals.values()) and time.monotonic() - started <= BUDGET_S:
        pins = {t: rs[0] for t, rs in rivals.items() if rs}  # one round: each target's next rival, side by side
        excluded = {t: [r for r in the_plan.dag.candidates[t] if r != pins[t]] for t in pins}
        round_plan = make_plan(planner, request, excluded_now=excluded)
        results.update(execute(round_plan))
        for t, route in pins.items():
            failed = _first_failure(round_plan, t, results)
            if failed is None and not _checked(results.get(CheckKind.node_name(t))) and (t, route) not in skipped:
                skipped.add((t, route))  # not started: another target's rival failed first (no keep-going)
                continue
            rivals[t].pop(0)
            measured[t].append(_measure(planner, round_plan, t, route, results, failed))
    for t, compared in measured.items():
        record = chosen_record(the_plan.dag.contexts[t].config.prefer or "", compared)
        writer.chose(t, record)
        if on_event is not None:
            on_event(Event("chosen", CheckKind.node_name(t), "check", t,
                           error=f"prefer {record['prefer']}: {' → '.join(record['route'])} ({record['gain']})"))
    final = make_plan(planner, request)  # the chosen routes: their nodes are restored from the cache
    results = {n: r for n, r in results.items()
               if n in final.nodes and r.outcome not in (Outcome.FAILED, Outcome.SKIPPED)}
    results.update(execute(final))
    return final, results


def chosen_record(prefer: str, compared: list[ComparedRoute]) -> ChosenRoute:
    """The route to ship under `prefer` among `compared` (the first is the route the build took before comparing,
    which passed: the pipeline's first, or the route chosen before), and what choosing it bought, in words."""
    first = compared[0]
    best = first
    for rival in compared[1:]:
        if rival["passed"] and _better(prefer, rival, best):
            best = rival
    return ChosenRoute(prefer=prefer, route=best["route"], key=best.get("key", ""), gain=_gain(prefer, first, best),
                       compared=compared)


def _better(prefer: str, rival: ComparedRoute, best: ComparedRoute) -> bool:
    margin = MARGIN[prefer]
    if prefer == "accuracy":
        return rival.get("fidelity", 0.0) > best.get("fidelity", 0.0) + margin
    field = "latency_ms" if prefer == "latency" else "bytes"
    if field not in rival:
        return False
    return field not in best or rival[field] < best[field] * (1 - margin)  # type: ignore[literal-required]


def _gain(prefer: str, first: ComparedRoute, best: ComparedRoute) -> str:
    if best is first:
        return f"the route built first stays: no rival better by {_margin_words(prefer)}"
    if prefer == "latency":
        return f"{best['latency_ms']:.3g} ms against {first['latency_ms']:.3g} ms, " \
               f"{first['latency_ms'] / best['latency_ms']:.2f}× faster than the route built first"
    if prefer == "size":
        return f"{best['bytes'] / 1e3:.1f} KB against {first['bytes'] / 1e3:.1f} KB, " \
               f"{first['bytes'] / best['bytes']:.2f}× smaller than the route built first"
    return f"accuracy {best['fidelity']:.2%} against {first['fidelity']:.2%} on the route built first"


def _margin_words(prefer: str) -> str:
    return f"{MARGIN[prefer]:.1%}" if prefer == "accuracy" else f"more than {MARGIN[prefer]:.0%}"


def _unchosen(planner: "Planner", the_plan: Plan, results: dict[str, NodeResult]) -> list[str]:
    """The requested targets with a `prefer:` whose check passed on a route no valid choice on record names: a
    record is valid for the same objective, the same route, and the check's key it was chosen under."""
    out = []
    for t in the_plan.targets:
        context = the_plan.dag.contexts.get(t)
        if context is None or not context.config.prefer or t in the_plan.dag.exhausted:
            continue
        check = planner.lock.entry(CheckKind.node_name(t))
        if not _passed(check, results.get(CheckKind.node_name(t))):
            continue
        entry = planner.lock.routes.get(t)
        record = entry.get("chosen") if entry else None
        if record and record["prefer"] == context.config.prefer and record["key"] == check.get("key") \
                and record["route"] == the_plan.dag.routes[t].words():
            continue
        out.append(t)
    return out


def _rivals(planner: "Planner", the_plan: Plan, target: str) -> list["Route"]:
    """The target's other plain candidates, in the order tried, at most RIVALS: no fallback scheme (an
    alternative gives up what was asked), no repair recipe, none on record as failed."""
    taken = the_plan.dag.routes[target]
    entry = planner.lock.routes.get(target)
    failed = [r["route"] for r in entry["dropped"]] if entry else []
    plain = [r for r in the_plan.dag.candidates.get(target, [])
             if r != taken and not r.repaired and not any(s.alternative for s in r.stops)
             and r.words() not in failed]
    return plain[:RIVALS]


def _passed(check: "NodeEntry", result: NodeResult | None) -> bool:
    if result is not None and result.outcome in (Outcome.FAILED, Outcome.SKIPPED):
        return False
    return check.get("verdict") == "passed"


def _checked(result: NodeResult | None) -> bool:
    return result is None or result.outcome is not Outcome.SKIPPED


def _first_failure(the_plan: Plan, target: str, results: dict[str, NodeResult]) -> NodeResult | None:
    """The first node of the target's chain (its check included) that failed in this round, if one did."""
    import networkx as nx

    check = CheckKind.node_name(target)
    chain = [n for n in the_plan.dag.names if n == check or n in nx.ancestors(the_plan.dag.graph(), check)]
    return next((results[n] for n in chain if n in results and results[n].outcome is Outcome.FAILED), None)


def _measure(planner: "Planner", the_plan: Plan, target: str, route: "Route", results: dict[str, NodeResult],
             failed: NodeResult | None = None) -> ComparedRoute:
    """What `route` delivered for `target`, from its check's and its artifact's lock entries (this round's);
    `failed`: the node of its chain that failed."""
    name = CheckKind.node_name(target)
    out = ComparedRoute(route=route.words(), passed=False)
    if the_plan.dag.routes.get(target) != route:
        out["reason"] = "not taken: the plan chose another route"
        return out
    check = planner.lock.entry(name)
    if failed is not None or not _passed(check, results.get(name)):
        why = (f"{failed.name}: {failed.error or 'failed'}" if failed is not None else "") or "its check did not pass"
        out["reason"] = why.splitlines()[0][:300]
        return out
    metrics = check.get("metrics") or {}
    artifact = planner.lock.entry(the_plan.dag.target_nodes[target])
    out["passed"], out["bytes"] = True, sum(int(row[2]) for row in artifact.get("files", []))
    latency = metrics.get("latency") or {}
    if "min_ms" in latency:
        out["latency_ms"] = float(latency["min_ms"])
    fidelity = _fidelity(metrics.get("outputs") or {})
    if fidelity is not None:
        out["fidelity"] = fidelity
    out["key"] = check.get("key", "")
    return out


def _fidelity(outputs: dict[str, Any]) -> float | None:
    """The check's accuracy on the validation set, else top-1 agreement, else cosine, averaged over outputs."""
    values = []
    for found in outputs.values():
        for metric in ("accuracy", "top1_agreement", "token_agreement", "cosine"):
            observed = (found.get(metric) or {}).get("observed") if isinstance(found, dict) else None
            if isinstance(observed, (int, float)):
                values.append(float(observed))
                break
    return round(sum(values) / len(values), 6) if values else None
