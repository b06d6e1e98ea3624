"""What a failed route means for the next plan: the record deploy.lock keeps of it (records.DroppedRoute), and
what answers it — the rewrites a converter's refusal points at (or a runtime's refusal to load the artifact) and
the routes that lower what it refused (answers.py: decompositions, a static export, converter switches, another
route); for a check that missed a tolerance on a quantizing route, its repair recipes (repair.py), on a float
route, the rewrites that compute an op of the program more precisely than converters write it (`precise`).

A route fails at the first node of the target's chain (its artifacts, then its check) that failed: a
conversion error, or a check that missed its acceptance. The decision loop (settle.py) asks `failures` after
each pass and hands the records to the lock writer; the next plan reads them back as the route history.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping

from buildsys import __version__
from buildsys.localise.sites import REASON_LIMIT, fit_reason
from buildsys.planning.answers import answer, answers_first, lowering_routes, refusal_rewrites
from buildsys.planning.history import FAILED_EARLIER
from buildsys.planning.kinds import ArtifactKind, CheckKind
from buildsys.planning.repair import repair_routes
from buildsys.records import DroppedRoute
from buildsys.status import Outcome

if TYPE_CHECKING:
    from buildsys.config.schema import Target
    from buildsys.planning.plan import Plan
    from buildsys.planning.routes import Route
    from buildsys.records import NodeResult
    from buildsys.storage.lock import Lock


#: A check whose runtime could not load the artifact (nodes/check.py: onnxruntime's shape inference on a Reshape the
#: exporter wrote, OpenVINO's reader) or crashed running it (running/pool.py: ExecuTorch's runtime aborting on a
#: 0-D unfold_copy): the converter's output is refused as a converter refuses its input, so the rewrites that
#: remove what the program holds answer it too (the text names no ATen op: the in-program tier).
RUNTIME_REFUSAL = re.compile(r"\bartifact could not be run in\b|\bthe worker crashed\b")


#: A check that refused an artifact for its share of weights in the precision asked (nodes/check.py,
#: formats/quantized_weights.py: "only 1.4% of the weights are int8 (floor 90%, min_quantized_share; …").
QUANTIZED_SHARE = re.compile(r"\bof the weights are \w+ \(floor [\d.]+%, min_quantized_share\b")


def failures(plan: "Plan", results: Mapping[str, "NodeResult"], lock: "Lock | None" = None) -> dict[str, DroppedRoute]:
    """Targets whose route failed in a build: target → the record deploy.lock keeps.

    The reference failing is the model's fault, not the route's, and a check that failed only because this
    host cannot run it (Core ML off macOS, strict) is no reason to change route. A target with one candidate
    (`via:`) has nothing to fall back to, unless its failure is answered (a rewrite, a repair): then the
    answer is the next route, or, where the target forbids it, the record says which rewrite would have
    removed the op. `lock` gives the ops of artifacts not built in this build (their record's metrics)."""
    out: dict[str, DroppedRoute] = {}
    for target in plan.targets:
        candidates = plan.dag.candidates.get(target, [])
        route = plan.dag.routes[target]
        if target in plan.dag.exhausted or route not in candidates:
            continue  # the last route's failure is recorded too: the target is then blocked, naming every route
        chain = _chain(plan, target)
        failed = [n for n in reversed(chain) if getattr(results.get(n), "outcome", "") == Outcome.FAILED]
        if not failed or results[failed[0]].metrics.get("host_limited") or not plan.nodes[failed[0]].key:
            continue  # nothing failed, or the host could not run the check (Core ML off macOS, strict)
        if results[failed[0]].metrics.get("every_route"):
            continue  # the target asks what no route gives this model (errors.UnmetOnEveryRoute): fail at once
        node, result = failed[0], results[failed[0]]
        why = str((result.metrics.get("failures") or [result.error or "failed"])[0]).removeprefix(FAILED_EARLIER)
        rewrites: list[str] = []
        note, lowered, guessed = "", [], False
        config = plan.config.project.targets[target]
        if plan.dag.nodes[node].kind == ArtifactKind.name:  # a conversion refused something: what answers it?
            ops = _chain_ops(chain, results, lock)
            rewrites, note = _answered(route, refusal_rewrites(why, ops), config)
            lowered = _lowered(plan, target, route, node, str(result.error or why), ops, result.metrics)
            fmt = plan.dag.nodes[node].format
            guessed = bool(rewrites and lowered) and answers_first(route, route.formats.index(fmt, 1), why, ops)
        elif RUNTIME_REFUSAL.search(why):  # the runtime refused (or crashed on) what the converter made: as a refusal
            rewrites, note = _answered(route, refusal_rewrites(why, _chain_ops(chain, results, lock)), config)
        elif QUANTIZED_SHARE.search(why):  # int8 weights short of the floor: layers its quantizer cannot quantize?
            # not a rewrite the artifact's step already weighed and declined for its cost (declined_rewrites)
            declined = set(metrics_of(chain[1], results, lock).get("declined_rewrites", ())) if len(chain) > 1 else set()
            names = [n for n in quantizable_rewrites(_chain_ops(chain, results, lock)) if n not in declined]
            rewrites, note = _answered(route, names, config)
        repair = _missed_tolerance(result.metrics) and opens_repair(plan, target, route, node)
        if not repair and _missed_tolerance(result.metrics):  # a float miss: ops converters write imprecisely?
            rewrites, _ = _answered(route, precise_rewrites(_chain_ops(chain, results, lock)), config)
        if len(candidates) < 2 and not rewrites and not note and not repair and not lowered:
            continue  # a pinned route, and nothing answers its failure
        record = DroppedRoute(route=route.words(), node=node, key=str(plan.nodes[node].key), modelbuild=__version__,
                              reason=fit_reason(why, REASON_LIMIT - len(note)) + note)
        if rewrites:
            record["rewrites"] = rewrites
        if lowered:
            record["answers"] = [r.words() for r in lowered]
        if guessed:
            record["answers_first"] = True
        if repair:
            record["repair"] = True
        seen = observed(chain, results, lock) if repair or route.repaired else {}
        if seen:
            record["observed"] = seen
        if result.metrics.get("refused"):  # where the user's model calls what was refused (localise/sites.py)
            record["refused"] = result.metrics["refused"]
        out[target] = record
    return out


def _answered(route: "Route", names: list[str], config: "Target") -> tuple[list[str], str]:
    """The rewrites `names` where they give the target its next route (else none), and the note saying why
    not where the target's own settings forbid them."""
    answered, note = answer(route, names, config.options, config.rewrites)
    return (names if answered is not None else []), note


def quantizable_rewrites(ops: list[str]) -> list[str]:
    """The rewrites that write an op of the program whose weights quantizers leave float as linear layers they
    quantize (an LSTM unrolled): the answer to an int8 artifact refused for its share of int8 weights."""
    from buildsys.rewrites import quantizable_for

    return [r.name for r in quantizable_for(ops)]


def precise_rewrites(ops: list[str]) -> list[str]:
    """The rewrites that compute an op of the program more precisely than converters write it (log1p as
    log(1 + x)): the answer to a check that missed its tolerance where no quantizer's repair is (a float route)."""
    from buildsys.rewrites import precise_for

    return [r.name for r in precise_for(ops)]


def _lowered(plan: "Plan", target: str, route: "Route", node: str, error: str, ops: list[str],
             metrics: Mapping[str, Any]) -> list["Route"]:
    """The routes that answer the refusal of `node` on `route` by lowering the model (answers.lowering_routes):
    its step's answers, with the `decomposable` table where the op analysis read it."""
    fmt = plan.dag.nodes[node].format
    if fmt not in route.formats[1:]:
        return []
    context = plan.dag.contexts[target]
    # The whole table where the op analysis read it, else what the failed step's worker said of the ops its
    # refusal names; None (neither known): every named op is answered, the step says if no table has it.
    known = plan.coverage.tables.get("decomposable") if plan.coverage is not None else None
    decomposable = known if known is not None else metrics.get("decomposable")
    pinned = bool(context.config.via or context.config.routes)
    return lowering_routes(route, route.formats.index(fmt, 1), error, ops, decomposable, context.options,
                           plan.dag.candidates.get(target, []), pinned)


def _chain(plan: "Plan", target: str) -> list[str]:
    """The target's check, then its artifacts back to the first one."""
    chain = [CheckKind.node_name(target)]
    while chain[-1] in plan.dag.nodes and plan.dag.nodes[chain[-1]].deps:
        first = plan.dag.nodes[chain[-1]].deps[0]
        if plan.dag.nodes[first].kind != ArtifactKind.name:
            break
        chain.append(first)
    return chain


def metrics_of(name: str, results: Mapping[str, "NodeResult"], lock: "Lock | None") -> dict[str, Any]:
    """A node's metrics from this build's results, else from the lock's build record."""
    found = getattr(results.get(name), "metrics", None)
    return found or ((lock.nodes.get(name, {}).get("metrics") or {}) if lock is not None else {})


def _chain_ops(chain: list[str], results: Mapping[str, "NodeResult"], lock: "Lock | None") -> list[str]:
    """The ATen ops the chain's traced or exported graph holds (a loading step's `ops` metric), for refusals
    that name no op (OpenVINO's `ops` metric is a count, not names)."""
    return next((list(m["ops"]) for name in chain
                 if isinstance((m := metrics_of(name, results, lock)).get("ops"), (list, tuple)) and m["ops"]), [])


def _missed_tolerance(metrics: Mapping[str, Any]) -> bool:
    """Whether a failed check missed a tolerance (some output's metric not ok, NaN / inf in an output where the
    reference has numbers, or a precision fault the runtime saw inside the program: an fp16 overflow): what
    accuracy repair answers, and on a float route the `precise` rewrites.
    A check that failed for another reason (a degraded path `require_numeric` refuses, a size budget) is not
    an accuracy miss: a quantizer's recipe is no answer to it, so the next route is tried instead."""
    outputs = metrics.get("outputs") or {}
    if any(isinstance(f, dict) and f.get("fails") for f in metrics.get("findings") or []):
        return True  # a precision fault inside the program (an fp16 overflow): keeping ops at higher precision answers it
    return any(out.get("non_finite") or any(isinstance(m, dict) and m.get("ok") is False for m in out.values())
               for out in outputs.values() if isinstance(out, dict))


def opens_repair(plan: "Plan", target: str, route: "Route", node: str) -> bool:
    """Whether this failure opens a repair: an artifact that missed its check (not a conversion error), on a
    route whose quantizing stop runs with its defaults, for a target that allows a recipe there and does
    not pin its route with `via:` (which, as for alternatives, pins the steps' options too). Bounded: a
    target's repair opens once, after its first route whose check missed; later routes are tried with their
    defaults only (their recipes would repeat the same search on another path)."""
    if plan.dag.nodes[node].kind != CheckKind.name:
        return False
    context = plan.dag.contexts[target]
    if context.config.via or any(record.get("repair") for record in plan.dropped.get(target, [])):
        return False
    return bool(repair_routes(route, context.options, context.config.repair, context.model, plan.config.root, context.written))


def observed(chain: list[str], results: Mapping[str, "NodeResult"], lock: "Lock | None") -> dict[str, Any]:
    """What a quantized route's failure measured, for the trade-off the report shows: the artifact's size,
    and its check's agreement and cosine per output (only what was measured)."""
    out: dict[str, Any] = {}
    if len(chain) > 1 and metrics_of(chain[1], results, lock).get("bytes"):
        out["bytes"] = metrics_of(chain[1], results, lock)["bytes"]
    for name, compared in (metrics_of(chain[0], results, lock).get("outputs") or {}).items():
        kept = {k: round(compared[k]["observed"], 6) for k in ("top1_agreement", "cosine")
                if isinstance(compared.get(k), dict) and isinstance(compared[k].get("observed"), (int, float))}
        if kept:
            out[name] = kept
    return out
