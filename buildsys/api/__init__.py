"""The Python API: what the command line does, as functions that return results and raise typed errors.

    import modelbuild

    project = modelbuild.load("deploy.yaml")
    plan = project.plan(["android"])            # PlanResult: every node, fresh or stale, and why
    report = project.build(["android"], jobs=2)   # BuildReport; raises BuildFailed when a check misses
    report.targets["android"].artifact           # Path of the verified artifact

The command line (`buildsys.cli.main`) is a thin layer over this module: it adds argument parsing, the
console output and exit codes. Errors are the `buildsys.errors` types: `ConfigError` and `PlanError`
for bad input (with file:line), `BuildFailed` (its `report` holds what happened), `StepError`,
`DataError`, `BundleError`. Nothing heavy is imported here: torch and the converters run in worker
processes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from buildsys.errors import BuildFailed
from buildsys.planning.project import DEFAULT_CONFIG, open_project, source_sizes
from buildsys.status import Analysis, Outcome, Verdict
from buildsys.api.results import BuildReport, BundleCheck, NodeStatus, PlanResult, TargetResult
from buildsys.records import Event, NodeResult, worker_request

if TYPE_CHECKING:
    from buildsys.release.pack import Packed
    from buildsys.release.signing import SigningKey
    from buildsys.release.verify import TrustCheck, TrustSource

EventHandler = Callable[[Event], None]

# --- the project --------------------------------------------------------------------------------


def load(path: str | Path = DEFAULT_CONFIG, *, serving: bool = False, strict: bool = False) -> "Project":
    """Open and validate a deploy file (raises ConfigError naming file:line:field on bad input).

    `serving` also checks targets in their serving software (Triton, TorchServe); `strict` fails a
    check that cannot run on this host instead of reporting it as not run.
    """
    return Project(str(path), serving=serving, strict=strict)


class Project:
    """A deploy file, opened: plan, build, verify, bench and bundle its targets."""

    def __init__(self, path: str, *, serving: bool = False, strict: bool = False):
        self.path = Path(path)
        self._opened = open_project(path, serving=serving, strict=strict)

    @property
    def targets(self) -> list[str]:
        return list(self._opened.config.project.targets)

    @property
    def models(self) -> list[str]:
        return list(self._opened.config.project.models)

    @property
    def artifacts(self) -> Path:
        return Path(self._opened.planner.artifacts)

    def plan(self, targets: list[str] | None = None, *, force: bool = False, ops: bool = False) -> PlanResult:
        """Every node the targets need (default: all), fresh or stale, and why. Writes nothing, except that
        `ops` first analyses the models' ops (torch.export in a subprocess) into the cache (planning.coverage)."""
        the_plan = self._plan(targets, force=force, analysis=Analysis.ALL if ops else Analysis.NONE)
        self._opened.planner.stat.save()
        return plan_result(the_plan)

    def _plan(self, targets: list[str] | None, *, force: bool = False, force_kinds: tuple[str, ...] = (),
              bench: bool = False, analysis: Analysis = Analysis.NONE) -> Any:
        """The planning.plan.Plan of the targets: the one plan entry point, as every command uses it."""
        from buildsys.planning.plan import PlanRequest, plan

        request = PlanRequest(tuple(targets) if targets else None, force, force_kinds, bench, analysis)
        return plan(self._opened.planner, request)

    def dry_run(self, targets: list[str] | None = None, *, force: bool = False, _force_kinds: tuple[str, ...] = (),
                _bench: bool = False) -> Any:
        """The plan a build of the targets would carry out first (routes ordered by op coverage as `build` orders
        them: the stale targets' models are analysed first), without building anything."""
        return self._plan(targets, force=force, force_kinds=_force_kinds, bench=_bench, analysis=Analysis.STALE)

    def build(self, targets: list[str] | None = None, *, jobs: int | None = None, keep_going: bool = False,
              force: bool = False, timeout: float | None = None, executor: str = "local", scheduler: str | None = None,
              on_event: EventHandler | None = None, check: bool = True, on_wait: Callable[[], None] | None = None,
              _force_kinds: tuple[str, ...] = (), _bench: bool = False, _watch: Any = None) -> BuildReport:
        """Build the targets (default: all) and what they need; only stale nodes run.

        `timeout` (seconds) replaces each step's time budget scaled to its model (running/limits.py; a target's
        `limits` still wins). `executor` is "local" (worker processes here, `jobs` at once; default: the usable
        CPUs, as the CLI's `-j`) or "dask" (a dask.distributed
        cluster at `scheduler`, which needs a remote cache). `on_event` receives an `Event` as each
        node starts and ends. With `check` (the default) a failed build raises `BuildFailed`, whose
        `report` is the returned object's twin.
        """
        from buildsys.planning.plan import PlanRequest
        from buildsys.planning.record import LockWriter
        from buildsys.planning.settle import settle

        started = time.perf_counter()
        if jobs is None:
            from buildsys.running.pool import usable_cpus

            jobs = usable_cpus()
        with _build_lock(self._opened, on_wait) as planner:
            writer = LockWriter(planner.lock)

            def execute(the_plan: Any) -> dict[str, NodeResult]:
                return _run(planner, the_plan, writer, jobs=jobs, keep_going=keep_going, force=force,
                            force_kinds=_force_kinds, timeout=timeout, executor=executor, scheduler=scheduler,
                            on_event=on_event)

            request = PlanRequest(tuple(targets) if targets else None, force, _force_kinds, _bench, jobs=jobs)
            the_plan, results = settle(planner, request, execute, writer, on_event=on_event, watch=_watch)
            if not the_plan.work:
                planner.stat.save()
            if results:  # the cards beside delivered artifacts follow what this build recorded
                from buildsys.release.cards import refresh

                refresh(planner)
            report = _report(self._opened, the_plan, results, time.perf_counter() - started)
        if check and not report.ok:
            raise build_failed(report)
        return report

    def verify(self, targets: list[str] | None = None, **options: Any) -> BuildReport:
        """Re-run the targets' checks (building whatever is stale first)."""
        return self.build(targets, _force_kinds=("check",), **options)

    def bench(self, targets: list[str] | None = None, **options: Any) -> BuildReport:
        """Time each target's artifact in its runtime next to PyTorch eager; budgets are checked."""
        return self.build(targets, _force_kinds=("bench",), _bench=True, **options)

    def bundle(self, name: str, *, out_dir: Path | None = None, key: "SigningKey | None" = None, sign: bool = True,
               **options: Any) -> Path:
        """Build the bundle's targets and pack them with their references, manifest, model cards, SBOM and
        provenance, signed with `key` (default: MODELBUILD_SIGNING_KEY or deploy.yaml's `signing:`; none
        with `sign=False`); the archive's path."""
        return self.pack(name, out_dir=out_dir, key=key, sign=sign, **options).path

    def pack(self, name: str, *, out_dir: Path | None = None, key: "SigningKey | None" = None, sign: bool = True,
             build: bool = True, **options: Any) -> "Packed":
        """`bundle`, returning what was packed (path, entries, signer); `build=False` packs what the last build
        delivered without building first (the CLI builds with its progress view, then packs)."""
        from buildsys.release import bundle as bundles
        from buildsys.release import pack, signing
        from buildsys.storage.lock import Lock

        spec = bundles.resolve(self._opened.config, name)
        if sign and key is None:
            key = signing.signing_key(self._opened.config, name)
        if build:
            self.build(list(spec.targets), **options)
        planner = self._opened.planner
        lock = Lock.read(planner.lock.path)
        dag = self._plan(list(spec.targets)).dag
        return pack.make(planner, lock, dag, name, out_dir or planner.artifacts / "bundles", key if sign else None)


def build_failed(report: BuildReport) -> BuildFailed:
    """The BuildFailed error for a failed build, carrying its report."""
    skipped = sum(1 for r in report.nodes.values() if r.outcome is Outcome.SKIPPED)
    error = BuildFailed(f"build failed: {len(report.failed)} node(s) failed, {skipped} skipped")
    error.report = report  # type: ignore[attr-defined]
    return error


# --- plumbing shared with the CLI -----------------------------------------------------------------


def plan_result(the_plan: Any) -> PlanResult:
    """A `buildsys.planning.plan.Plan` as the API's PlanResult."""
    nodes = []
    for p in the_plan.order():
        node = p.node
        nodes.append(NodeStatus(
            name=node.name, kind=node.kind, model=node.model, format=node.format,
            targets=list(node.targets or ([node.target] if node.target else [])),
            state=p.state, action=p.action, reasons=list(p.reasons), key=p.key))
    routes = {t: r.words() for t, r in the_plan.dag.routes.items()}
    return PlanResult(Path(the_plan.config.path), list(the_plan.targets), routes, nodes)


@contextmanager
def _build_lock(opened: Any, on_wait: Callable[[], None] | None = None) -> Iterator[Any]:
    """Hold the project's build lock (one build per project) and yield its planner, lock re-read.
    `on_wait` is called once if another build holds it (this one then waits its turn)."""
    from filelock import FileLock, Timeout

    from buildsys.storage.lock import Lock

    opened.cache_dir.mkdir(parents=True, exist_ok=True)
    guard = FileLock(str(opened.cache_dir / "build.lock"))
    try:
        guard.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        guard.acquire()
    try:
        planner = opened.planner
        planner.lock = Lock.read(planner.lock.path)  # another build may have finished meanwhile
        yield planner
    finally:
        guard.release()


def _run(planner: Any, the_plan: Any, writer: Any, *, jobs: int, keep_going: bool, force: bool,
         force_kinds: tuple[str, ...], timeout: float | None, executor: str, scheduler: str | None,
         on_event: EventHandler | None) -> dict[str, NodeResult]:
    from buildsys.running.dask import make_executor
    from buildsys.running.builder import Builder

    total = len(the_plan.nodes)
    done = 0

    def relay(kind: str, payload: NodeResult | str) -> None:
        nonlocal done
        if on_event is None:
            return
        if kind == "start":
            node = the_plan.nodes[str(payload)]
            on_event(Event("started", node.node.name, node.node.kind, node.node.target or None,
                           reasons=list(node.reasons), done=done, total=total))
            return
        assert isinstance(payload, NodeResult)
        done += 1
        node = the_plan.nodes[payload.name].node
        on_event(Event(payload.outcome, payload.name, node.kind, node.target or None, seconds=payload.seconds,
                       error=payload.error, log=payload.log, metrics=payload.metrics, done=done, total=total))

    runner = make_executor(executor, scheduler, planner.store.dir / "logs", jobs, planner)
    try:
        builder = Builder(planner, the_plan, runner, writer, jobs=runner.jobs, keep_going=keep_going, force=force,
                          force_kinds=force_kinds, timeout=timeout, on_event=relay)
        return builder.run().results
    finally:
        runner.close()


def _report(opened: Any, the_plan: Any, results: dict[str, NodeResult], seconds: float) -> BuildReport:
    from buildsys.planning.kinds import CheckKind
    from buildsys.report.console import target_rows
    from buildsys.records import FAILED, FRESH, SKIPPED, BuildResult

    planner = opened.planner
    result = BuildResult({**{p.node.name: NodeResult(p.node.name, FRESH) for p in the_plan.order()}, **results})
    undelivered = {the_plan.dag.nodes[name].target: dict(r.metrics) for name, r in results.items()
                   if r.outcome in (FAILED, SKIPPED) and name in the_plan.dag.nodes
                   and the_plan.dag.nodes[name].kind == CheckKind.name and the_plan.dag.nodes[name].target}
    rows = target_rows(the_plan, planner.lock.nodes, planner.lock.targets, source_sizes(opened), planner.lock.routes,
                       undelivered)
    targets = {}
    for row in rows:
        name = row["target"]
        node = the_plan.dag.nodes[the_plan.dag.target_nodes[name]]
        check = {"metrics": undelivered[name]} if name in undelivered else \
            planner.lock.nodes.get(CheckKind.node_name(name), {})
        path = row.get("path")
        targets[name] = TargetResult(
            name=name, model=node.model, format=node.format, precision=node.precision, status=row["check"],
            artifact=(planner.config.root / path) if path else None, size_bytes=row["size"],
            metrics=dict(check.get("metrics") or {}), verdict=row["verdict"], caveats=row["caveats"],
            route=list(row.get("route") or []), dropped=list(row.get("dropped") or []),
            rewrites=list(row.get("rewrites") or []), repair=row.get("repair"), size_ratio=row.get("size_ratio"),
            ideal_ratio=row.get("ideal_ratio"), latency=row.get("latency"), eager_latency=row.get("eager_latency"))
    return BuildReport(ok=result.ok, nodes=result.results, targets=targets, seconds=round(seconds, 3), summary=rows,
                       work=len(the_plan.work), plan=the_plan)


# --- bundles ------------------------------------------------------------------------------------


def verify_bundle(path: str | Path, *, jobs: int = 1, timeout: float = 1800.0,
                  on_check: Callable[[BundleCheck], None] | None = None,
                  on_manifest: Callable[[Any], None] | None = None, trust: "TrustSource" = None,
                  on_trust: "Callable[[TrustCheck], None] | None" = None) -> list[BundleCheck]:
    """Check a bundle's signature (against `trust`: a public key or root certificates), its hashes
    against its manifest and its provenance and SBOM (BundleError on any problem), then re-run every
    check this host can run, in worker processes, from the bundled references alone.

    `on_trust` is called with each of those checks, `on_manifest` once the hashes hold, `on_check` after
    each artifact's check. Raises BundleError naming the first failure; returns every artifact's result
    otherwise.
    """
    import shutil
    import tempfile

    from buildsys.release import bundle as bundles
    from buildsys.running.pool import Job, LocalExecutor
    from buildsys.formats import get_step
    from buildsys.release.verify import unpack_and_verify

    path = Path(path)
    work = Path(tempfile.mkdtemp(prefix="modelbuild-bundle-"))
    executor = LocalExecutor(work / "logs", jobs)
    checks: list[BundleCheck] = []
    try:
        manifest = unpack_and_verify(path, work / "bundle", trust, on_trust)
        if on_manifest is not None:  # every file is there and matches its sha256
            on_manifest(manifest)
        (work / "logs").mkdir(exist_ok=True)
        for art in manifest.artifacts:
            out = work / "checks" / art.target
            out.mkdir(parents=True)
            request = worker_request(step="check", options=art.acceptance, model_name=art.model,
                                     model=art.model_config_, root=str(work / "bundle"),
                                     input=str(work / "bundle" / art.main), out_dir=str(out),
                                     log=str(work / "logs" / f"{art.target}.log"), precision=art.precision,
                                     extra={"format": art.format, "reference": str(work / "bundle" / art.reference)})
            reply = executor.run(Job(art.target, get_step(art.chain[-1].step).toolchain, request, timeout))
            metrics = reply.get("metrics", {})
            if not reply.get("ok"):
                result = BundleCheck(art.target, art.format, Verdict.FAILED, str(reply.get("error")))
            elif metrics.get("passed") is False:
                result = BundleCheck(art.target, art.format, Verdict.FAILED,
                                     "; ".join(metrics.get("failures", ["acceptance not met"])))
            elif metrics.get("not_run"):
                result = BundleCheck(art.target, art.format, Verdict.NOT_RUN, str(metrics["not_run"]))
            else:
                result = BundleCheck(art.target, art.format, Verdict.PASSED, "", metrics.get("samples"))
            checks.append(result)
            if on_check is not None:
                on_check(result)
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)
    failed = [c for c in checks if c.status is Verdict.FAILED]
    if failed:
        raise bundles.BundleError(f"bundle {path.name} failed verification: {failed[0].target}: {failed[0].detail}")
    return checks
