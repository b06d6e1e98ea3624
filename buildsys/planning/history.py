"""What a failed route means for the next plan: the record deploy.lock keeps of it, and the rewrites its
refusal points at (planning code: `build` only records what this returns and plans again)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys import __version__
from buildsys.planning.kinds import ArtifactKind, CheckKind
from buildsys.planning.repair import is_repair_route, opens_repair

if TYPE_CHECKING:
    from buildsys.storage.lock import Lock
    from buildsys.planning.plan import Plan

#: How a node that already failed in this build under the same key is failed again, unrun.
FAILED_EARLIER = "failed earlier in this build: "


def _not_run_here(result: Any) -> bool:
    """Whether a failed check failed only because of this host's limits (require_numeric on a part it
    could not run, or on a stand-in's numbers), not because of the artifact."""
    return bool(result.metrics.get("host_limited"))


def route_failures(plan: "Plan", results: dict[str, Any], lock: "Lock | None" = None) -> dict[str, dict[str, Any]]:
    """Targets whose route failed in a build: target → the record deploy.lock keeps ({"route", "node",
    "key", "modelbuild", "reason"}, and "rewrites" when the refusal points at rewrites the next route applies).

    A route fails at the first node of the target's chain (its artifacts, then its check) that
    failed: a conversion error, or a check that missed its acceptance. The reference failing is the
    model's fault, not the route's. A target with one candidate route (`via:`) has nothing to fall back
    to, unless a converter refused an op that a rewrite removes (rewrite_routes): then the same route with
    that rewrite is the next one, or, where the target forbids it, the record says which rewrite would
    have removed the op. `lock` gives the ops of artifacts not built in this build (their record's metrics).
    """
    out: dict[str, dict[str, Any]] = {}
    for target in plan.targets:
        candidates = plan.dag.candidates.get(target, [])
        route = plan.dag.routes[target]
        if target in plan.dag.exhausted or route not in candidates:
            continue  # the last route's failure is recorded too: the target is then blocked, naming every route
        chain = [CheckKind.node_name(target)]
        while chain[-1] in plan.dag.nodes and plan.dag.nodes[chain[-1]].deps:
            first = plan.dag.nodes[chain[-1]].deps[0]
            if plan.dag.nodes[first].kind != ArtifactKind.name:
                break
            chain.append(first)
        failed = [n for n in reversed(chain) if getattr(results.get(n), "outcome", "") == "failed"]
        if not failed or _not_run_here(results[failed[0]]) or not plan.nodes[failed[0]].key:
            continue  # nothing failed, or the host could not run the check (Core ML off macOS, strict)
        result = results[failed[0]]
        why = str((result.metrics.get("failures") or [result.error or "failed"])[0])
        why = why.removeprefix(FAILED_EARLIER)  # deploy.lock outlives the build: keep the failure itself
        rewrites, note = _rewrite_answer(plan, target, route, failed[0], why, chain, results, lock)
        repair = _missed_tolerance(result.metrics) and opens_repair(plan, target, route, failed[0])
        if len(candidates) < 2 and not rewrites and not note and not repair:
            continue  # a pinned route, and no rewrite or repair answers its failure
        reason = str(why).splitlines()[0][:300 - len(note)] if str(why).strip() else "failed"
        observed = _observed(chain, results, lock) if repair or is_repair_route(route) else {}
        out[target] = {"route": route, "node": failed[0], "key": plan.nodes[failed[0]].key, "modelbuild": __version__,
                       "reason": reason + note, **({"rewrites": rewrites} if rewrites else {}),
                       **({"repair": True} if repair else {}), **({"observed": observed} if observed else {})}
    return out


def _observed(chain: list[str], results: dict[str, Any], lock: "Lock | None") -> dict[str, Any]:
    """What a quantized route's failure measured, for the trade-off the report shows: the artifact's size,
    and its check's agreement and cosine per output (only what was measured)."""
    def metrics(name: str) -> dict[str, Any]:
        return getattr(results.get(name), "metrics", None) or \
            ((lock.nodes.get(name, {}).get("metrics") or {}) if lock is not None else {})

    out: dict[str, Any] = {}
    if len(chain) > 1 and metrics(chain[1]).get("bytes"):
        out["bytes"] = metrics(chain[1])["bytes"]
    for name, compared in (metrics(chain[0]).get("outputs") or {}).items():
        kept = {k: round(compared[k]["observed"], 6) for k in ("top1_agreement", "cosine")
                if isinstance(compared.get(k), dict) and isinstance(compared[k].get("observed"), (int, float))}
        if kept:
            out[name] = kept
    return out


def _rewrite_answer(plan: "Plan", target: str, route: list[str], node: str, error: str, chain: list[str],
                    results: dict[str, Any], lock: "Lock | None") -> tuple[list[str], str]:
    """The rewrites the next route applies after this refusal ([] for none), and, where the refusal points
    at rewrites that are not tried, the words the record's reason ends with to say which and why not."""
    from buildsys.planning.answers import loading_stop, refusal_rewrites, with_rewrites
    from buildsys.planning.routes import hop, label_parts

    if plan.dag.nodes[node].kind != ArtifactKind.name:
        return [], ""  # a check that missed: the artifact was made, no converter refused anything
    names = refusal_rewrites(error, _chain_ops(chain, results, lock))
    stop = loading_stop(route)
    if not names or stop is None:
        return [], ""
    config = plan.config.project.targets[target]
    fmt, label = hop(route[stop])
    if config.rewrites is None and with_rewrites(route, names, config.options) is not None:
        return names, ""
    if config.rewrites is not None:
        not_tried = f"the target sets rewrites: [{', '.join(config.rewrites)}]"
    elif "rewrites" in (config.options.get(fmt) or {}):
        not_tried = f"its options for {fmt} set rewrites"
    else:
        not_tried = f"this route applies {', '.join(label_parts(label)[1])} already"
    return [], f" (rewrite {', '.join(names)} would remove what was refused; not tried: {not_tried})"


def _chain_ops(chain: list[str], results: dict[str, Any], lock: "Lock | None") -> list[str]:
    """The ATen ops the chain's traced or exported graph holds (a loading step's `ops` metric), for refusals
    that name no op: from this build's results, else from the lock's build record."""
    for name in chain:
        metrics = getattr(results.get(name), "metrics", None) or \
            ((lock.nodes.get(name, {}).get("metrics") or {}) if lock is not None else {})
        if metrics.get("ops"):
            return list(metrics["ops"])
    return []


def _missed_tolerance(metrics: dict[str, Any]) -> bool:
    """Whether a failed check missed a tolerance (some output's metric not ok): what accuracy repair answers.
    A check that failed for another reason (a degraded path `require_numeric` refuses, a size budget) is not
    an accuracy miss: a quantizer's recipe is no answer to it, so the next route is tried instead."""
    outputs = metrics.get("outputs") or {}
    return any(isinstance(m, dict) and m.get("ok") is False
               for out in outputs.values() if isinstance(out, dict) for m in out.values())
