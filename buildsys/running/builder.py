"""Execution: carry out a plan's work through an executor, store what it made, report each node.

The Builder schedules ready nodes on up to `jobs` threads, sends each as a `Job` to the executor
(buildsys.running.pool's worker processes, or a Dask cluster) and, from the main thread, stores each success
(blobs → action cache), delivers what a check accepted under artifacts/, and reports it to the plan's lock
writer (planning.record), which alone writes deploy.lock. What to do with each node is the plan's
(`NodePlan.action`); the builder only re-keys a node whose upstream was rebuilt (early cutoff when the bytes
came out the same).
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

from buildsys.formats import get_format, get_step
from buildsys.formats.base import delivered
from buildsys.planning.kinds import kind_of
from buildsys.planning.node import Node
from buildsys.planning.plan import Plan
from buildsys.planning.planner import NodePlan, Planner
from buildsys.planning.record import Delivery, LockWriter
from buildsys.records import (
    BUILT,
    CACHED,
    CUTOFF,
    FAILED,
    FRESH,
    RESTORED,
    SKIPPED,
    BuildResult,
    FileRow,
    NodeResult,
    WorkerReply,
    built_by,
    worker_request,
)
from buildsys.running.limits import Budgets
from buildsys.running.pool import Executor, Job
from buildsys.status import Action as PlanAction
from buildsys.storage.store import CorruptBlob

#: The note on a cached node whose result was pulled from the remote cache instead of being built.
FROM_REMOTE = "from remote"


class Builder:
    """Carries out a Plan. Decisions are the plan's; the builder only re-keys nodes whose upstream
    was rebuilt (early cutoff when the bytes came out the same)."""

    def __init__(self, planner: Planner, plan: Plan, executor: Executor, writer: LockWriter, *, jobs: int = 1,
                 keep_going: bool = False, force: bool = False, force_kinds: tuple[str, ...] = (),
                 timeout: float | None = None, on_event: Callable[[str, NodeResult | str], None] | None = None):
        self.planner = planner
        self.plan = plan
        self.executor = executor
        self.writer = writer
        self.jobs = max(1, jobs)
        self.keep_going = keep_going
        self.force = force
        self.force_kinds = force_kinds
        self.budgets = Budgets(planner, plan, timeout)  # each node's time and memory (running/limits.py)
        self.on_event = on_event or (lambda kind, payload: None)
        self.store = planner.store
        self.lock = planner.lock
        self.log_dir = planner.store.dir / "logs"
        self.result = BuildResult()
        self._digests: dict[str, str | None] = {}
        self._workers: dict[str, str] = {}  # node → the worker that built it (a check prefers it)
        self._toolchains: dict[str, str] = {}
        # The remote cache (None: not configured). Pushes run beside the build on their own thread,
        # so uploading a big artifact never holds up the next node; run() waits for them at the end.
        self.remote = planner.remote if any(p.runs for p in plan.nodes.values()) else None
        self._pushes: list[Future[None]] = []
        self._push_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="push") \
            if self.remote is not None and not self.remote.readonly else None

    # --- scheduling ----------------------------------------------------------------------------
    def run(self) -> BuildResult:
        order = self.plan.order()
        pending = {p.node.name: p for p in order}
        running: dict[Future[WorkerReply], tuple[NodePlan, Path, float]] = {}
        stop = False
        for nplan in order:  # known at plan time: no step runs
            if nplan.action in (PlanAction.FAIL, PlanAction.SKIP):
                pending.pop(nplan.node.name)
                outcome = FAILED if nplan.action is PlanAction.FAIL else SKIPPED
                if outcome is FAILED and kind_of(nplan.node).owns_delivery and nplan.node.target:
                    self._withdraw(nplan.node.target)  # every route failed: what an earlier build delivered is
                    # another model's or other options' artifact, not this target's
                self._finish(NodeResult(nplan.node.name, outcome, error=nplan.reasons[0], user_error=True))
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            while pending or running:
                self._expect(pending)
                for name in self._by_affinity([n for n in pending if self._deps_done(pending[n].node)], pending):
                    if len(running) >= self.jobs or any(kind_of(p.node).runs_alone for p, _, _ in running.values()):
                        break
                    if kind_of(pending[name].node).runs_alone and running and not stop:
                        continue  # e.g. a benchmark: parallel work would skew its latencies
                    nplan = pending.pop(name)
                    if stop:
                        if nplan.action is PlanAction.NONE:
                            self._finish(NodeResult(name, FRESH))
                        else:
                            self._finish(NodeResult(name, SKIPPED, error="not started: an earlier node failed"))
                        continue
                    started = self._start(nplan)
                    if started is not None:
                        action, scratch = started
                        self.on_event("start", name)
                        running[pool.submit(self.executor.run, action)] = (nplan, scratch, time.perf_counter())
                if not running:
                    if pending and not any(self._deps_done(p.node) for p in pending.values()):
                        raise RuntimeError("scheduler stalled")  # unreachable for a DAG
                    continue
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    nplan, scratch, t0 = running.pop(fut)
                    ok = self._complete(nplan, fut.result(), scratch, time.perf_counter() - t0)
                    if not ok and not self.keep_going:
                        stop = True
        if self._push_pool is not None:
            wait(self._pushes)
            self._push_pool.shutdown()
        self.planner.stat.save()
        return self.result

    def _by_affinity(self, ready: list[str], pending: dict[str, NodePlan]) -> list[str]:
        """Ready nodes, those that need no worker first, then a check whose artifact's worker is idle,
        then nodes whose toolchain has an idle worker: each switch of toolchain may cost an import.
        Plan order otherwise (a stable sort)."""
        warm = self.executor.warm

        def rank(name: str) -> int:
            nplan = pending[name]
            if nplan.action is PlanAction.NONE:
                return 0
            toolchain = self._toolchain(nplan.node)
            worker = self._workers.get(nplan.node.deps[0]) if kind_of(nplan.node).judges else None
            if worker is not None and warm(toolchain, worker):
                return 1
            return 2 if warm(toolchain) else 3
        return sorted(ready, key=rank)

    def _expect(self, pending: dict[str, NodePlan]) -> None:
        """Tell the pool which toolchains the queued nodes need, so it evicts others' workers first."""
        counts: dict[str, int] = {}
        for p in pending.values():
            if p.action is not PlanAction.NONE:
                tc = self._toolchain(p.node)
                counts[tc] = counts.get(tc, 0) + 1
        self.executor.expect(counts)

    def _deps_done(self, node: Node) -> bool:
        return all(d in self.result.results or d not in self.plan.nodes for d in node.deps)

    def _finish(self, result: NodeResult) -> None:
        self.result.results[result.name] = result
        self.on_event("finish", result)

    # --- one node ----------------------------------------------------------------------------------
    def _start(self, nplan: NodePlan) -> tuple[Job, Path] | None:
        """Decide from the (re-keyed) status: nothing, restore, cache hit, or an action to run."""
        node = nplan.node
        bad = [d for d in node.deps if self.result.results.get(d, NodeResult(d, FRESH)).outcome in (FAILED, SKIPPED)]
        if bad:
            self._finish(NodeResult(node.name, SKIPPED, error=f"upstream {bad[0]} failed"))
            return None
        upstream = {d: self._output(d) for d in node.deps}
        force = self.force or node.kind in self.force_kinds
        status = nplan if nplan.key and not any(self._rebuilt(d) for d in node.deps) else \
            self.planner.status(node, upstream, force=force)
        if status.action is PlanAction.NONE and nplan.runs and not force:
            # The plan expected to run this node, but upstream came out byte-identical.
            self._finish(NodeResult(node.name, CUTOFF if node.deps else FRESH))
            return None
        if status.action is PlanAction.NONE:
            self._finish(NodeResult(node.name, FRESH))
            return None
        assert status.key and status.components is not None
        try:
            if status.action is PlanAction.RESTORE:
                self.writer.delivered(self._deliver(node))
                self._finish(NodeResult(node.name, RESTORED))
                return None
            cached = None if force else self.store.get_action(status.key)
            note = ""
            if cached is None and not force and self.remote is not None and self.remote.serves(node):
                cached, note = self.remote.pull(status.key, self.store), FROM_REMOTE
            if cached is not None:
                self._publish(node, status, cached["tree"], cached["files"], cached.get("metrics", {}),
                              cached.get("built", {}))
                self._finish(NodeResult(node.name, CACHED, error=note, metrics=cached.get("metrics", {})))
                return None
        except CorruptBlob:
            pass  # a bad blob is a miss: build the node again
        nplan.key, nplan.components = status.key, status.components
        return self._action(nplan)

    def _rebuilt(self, dep: str) -> bool:
        r = self.result.results.get(dep)
        return r is not None and r.outcome in (BUILT, CACHED)

    def _output(self, name: str) -> str | None:
        return self._digests.get(name) or self.planner.output_digest(name)

    def _action(self, nplan: NodePlan) -> tuple[Job, Path]:
        node = nplan.node
        cfg = self.planner.config
        model = cfg.project.models[node.model]
        scratch = self.store.scratch(node.name)
        out_dir = scratch / "out"
        out_dir.mkdir()
        extra: dict[str, Any] = {}
        inputs: dict[str, list[FileRow]] = {}
        input_path: Path | None = None
        if node.source_format:
            input_path = _source_path(cfg.root, model)
            extra["source_format"] = node.source_format
        if node.deps and not node.source_format:
            dep = self.plan.dag.nodes[node.deps[0]]
            input_path = self._checkout(dep, scratch / "in", inputs)
        kind = kind_of(node)
        if kind.judges:  # deps are [artifact, reference]
            extra["reference"] = str(self._checkout(self.plan.dag.nodes[node.deps[1]], scratch / "ref", inputs))
            extra["caveats"] = (nplan.components or {}).get("caveats", [])  # the artifact chain's (keyed)
            extra["quantized_weights"] = (nplan.components or {}).get("quantized_weights")  # judged by its floor
            if self.plan.dag.structured_sparsity(node.deps[0]):  # a pruned artifact: no per-layer localisation
                extra["structured_sparsity"] = self.plan.dag.structured_sparsity(node.deps[0])
            repair = self._repair_next(node.target)
            if repair:  # a miss here opens a repair that measures each layer itself: not localised twice
                extra["localise_deferred"] = repair
        source = _source_path(cfg.root, model)
        extra.update(kind.request_extra(node, model, str(source) if source else None))
        sites = ((self.plan.coverage.ops.get(node.model) if self.plan.coverage else None) or {}).get("sites")
        if sites:  # where the model calls each op (the op analysis'): a refusal is located without exporting again
            extra["sites"] = sites
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / (node.name.replace("/", "__").replace(":", "_") + ".log")
        log.write_text(f"# modelbuild: {node.name} ({node.step})\n")
        budget = self.budgets.for_node(node)
        extra["budget_s"] = budget.seconds  # what the watchdog allows: a bounded search plans by it (StepContext)
        request = worker_request(step=node.step, options=node.options, model_name=node.model,
                                 model=model.model_dump(mode="json"), root=str(cfg.root),
                                 input=str(input_path) if input_path else None, out_dir=str(out_dir), log=str(log),
                                 precision=node.precision, extra=extra)
        worker = self._workers.get(node.deps[0]) if kind.judges else None  # the worker that made the artifact
        return Job(node.name, self._toolchain(node), request, budget.seconds, inputs, worker, budget.memory,
                   budget.basis), scratch

    def _repair_next(self, target: str) -> str | None:
        """The repair route a target takes next, in words, when a miss of this plan's check opens one: that
        repair's search measures every layer's sensitivity itself, so the check does not localise the miss (the
        repair's own check does, if it misses too). The repair is the next candidate when deploy.lock already
        knows the route missed; in a cold build it is not among the candidates yet, and the route's repair recipes
        (planning.repair.repair_routes, what the planner adds right after a miss) say which comes. None when the
        route is a repair itself or has no recipe (its miss is localised: a user reads each route's)."""
        from buildsys.planning.repair import repair_routes

        dag = self.plan.dag
        route, candidates = dag.routes.get(target), dag.candidates.get(target, [])
        if route is None or route not in candidates or route.repaired:
            return None
        dropped = [d["route"] for d in self.plan.dropped.get(target, [])]  # failed already: would fail at once
        later = [r for r in candidates[candidates.index(route) + 1:] if r.words() not in dropped]
        if later and later[0].repaired:
            return str(later[0])
        context = dag.contexts.get(target)
        if context is None:
            return None
        opened = repair_routes(route, context.options, context.config.repair, context.model,
                               self.planner.config.root, context.written)
        return str(opened[0]) if opened else None

    def _toolchain(self, node: Node) -> str:
        if node.name not in self._toolchains:
            if kind_of(node).judges:  # run where the artifact's toolchain is already imported
                self._toolchains[node.name] = get_step(self.plan.dag.nodes[node.deps[0]].step).toolchain
            else:
                self._toolchains[node.name] = get_step(node.step).toolchain
        return self._toolchains[node.name]

    def _checkout(self, dep: Node, dest: Path, inputs: dict[str, list[FileRow]]) -> Path:
        inputs[dest.name] = self.lock.nodes[dep.name]["files"]
        self.store.checkout(inputs[dest.name], dest, link=True)
        return dest / get_format(dep.format).filename

    def _complete(self, nplan: NodePlan, reply: WorkerReply, scratch: Path, seconds: float) -> bool:
        node = nplan.node
        log = self.log_dir / (node.name.replace("/", "__").replace(":", "_") + ".log")
        try:
            if not reply.get("ok"):
                self._finish(NodeResult(node.name, FAILED, seconds, reply.get("error", "failed"), str(log),
                                        failure_metrics(reply), user_error=bool(reply.get("user"))))
                return False
            metrics = reply.get("metrics", {})
            outcome = kind_of(node).outcome(node, metrics)
            if outcome.failed:
                if outcome.withdraw:
                    self._withdraw(node.target)
                from buildsys.localise.record import save_miss

                save_miss(self.planner.store.dir, node.name, nplan.key, metrics)  # for `explain`
                self._finish(NodeResult(node.name, FAILED, seconds, outcome.what, str(log), metrics))
                return False
            tree, entries = self.store.put_tree(scratch / "out")
            files = [e.as_list() for e in entries]
            assert nplan.key is not None
            built = {**built_by(seconds), **reply.get("built", {})}  # the executor says which worker
            if built.get("worker"):
                self._workers[node.name] = built["worker"]
            entry = {"tree": tree, "files": files, "metrics": metrics, "built": built}
            self.store.put_action(nplan.key, entry)
            if self._push_pool is not None and self.remote is not None and self.remote.serves(node):
                self._pushes.append(self._push_pool.submit(self.remote.push, nplan.key, entry, self.store))
            self._publish(node, nplan, tree, files, metrics, built)
            self._finish(NodeResult(node.name, BUILT, seconds, log=str(log), metrics=metrics))
            return True
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _publish(self, node: Node, status: NodePlan, tree: str, files: list[FileRow], metrics: dict[str, Any],
                 built: dict[str, Any]) -> None:
        """A finished node: its deliverable under artifacts/ when it is a check that accepted its artifact, then
        its record, through the plan's lock writer."""
        self._digests[node.name] = tree
        kind = kind_of(node)
        delivery = self._deliver(node) if kind.owns_delivery and kind.outcome(node, metrics).deliver else None
        assert status.key is not None and status.components is not None
        self.writer.published(node, status.key, status.components, tree, files, metrics, built, delivery)

    def _deliver(self, check: Node) -> Delivery:
        """Copy the artifact a check accepted to artifacts/<target>/, swapping the directory at once. Only
        checks deliver: an artifact that misses its acceptance never lands there."""
        artifact, target = check.deps[0], check.target
        files = delivered(self.lock.nodes[artifact]["files"])  # a node's diagnostics stay in the cache
        artifacts = self.planner.artifacts
        fresh = artifacts / f".tmp-{target}"
        shutil.rmtree(fresh, ignore_errors=True)
        self.store.checkout(files, fresh, link=False)
        final = artifacts / target
        old = artifacts / f".old-{target}"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(fresh, final)
        shutil.rmtree(old, ignore_errors=True)
        for rel, digest, _size, _x in files:  # verified copies: spare the next plan a re-hash
            self.planner.stat.record(final / rel, digest)
        return Delivery(target, artifact, self.planner.display(final), files, self.plan.dag.routes[target],
                        self.plan.dag.rewrites(artifact))

    def _withdraw(self, target: str) -> None:
        """A target whose check failed has no deliverable: remove the previous one and its record."""
        shutil.rmtree(self.planner.artifacts / target, ignore_errors=True)
        self.writer.withdrawn(target)


def failure_metrics(reply: WorkerReply) -> dict[str, Any]:
    """What a failed step's reply says beyond its error: where the step was when its budget stopped it
    (`stopped`, running/watchdog.py) and where the user's model calls the ops a converter refused (`refused`,
    localise/sites.py), for the summary and the record of the dropped route; and which of the refused ATen ops
    PyTorch's tables decompose (`decomposable`: the planner's decomposition answers, planning.answers); and
    whether the failure lies in what the target asks, so that no other route is tried (`every_route`,
    errors.UnmetOnEveryRoute)."""
    out = {k: v for k, v in (reply.get("metrics") or {}).items() if k == "stopped"}
    out.update({k: reply[k] for k in ("refused", "decomposable", "every_route") if reply.get(k) is not None})
    return out


def _source_path(root: Path, model: Any) -> Path | None:
    src = model.source
    for attr in ("torchscript", "exported", "onnx"):
        if getattr(src, attr):
            return root / getattr(src, attr)
    return None
