"""The records modelbuild passes around and keeps, typed, each built in one place by the function beside it.

- the worker protocol: `WorkerRequest` (what a step or check is asked to do) and `WorkerReply` (what came
  back), one JSON object per line between the builder and a worker process (buildsys.running.worker);
- deploy.lock's entries: `NodeEntry` (per node: key, components, output tree and files, committed facts,
  a check's verdict; the build record adds `built` and `metrics`), `TargetEntry` (per delivered target:
  the node, its files under artifacts/, the route that made it) and `DroppedRoute` (per target, each route
  that failed, with the key of the node that failed it and why: the route history the planner reads).

- what a build did: `NodeResult` per node (its `status.Outcome`), `BuildResult`, and the `Event`s a build
  streams to its watchers (the CLI's progress, `build --json`, the Python API's `on_event`).

The lock and the protocol are JSON, so their records are TypedDicts: the JSON a reader loads is the record,
no conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from typing_extensions import Required, TypedDict  # (typing has them from 3.11 only)

from buildsys.status import Outcome

#: One file of an output tree: [relative path, BLAKE3 digest, size in bytes, executable].
FileRow = list[Any]


class WorkerRequest(TypedDict):
    """One step (or check, reference, bench) for a worker to run."""

    step: str
    options: dict[str, Any]
    model_name: str
    model: dict[str, Any]  # the model's validated config (config.schema.Model) as JSON
    root: str  # the project root: relative source paths resolve against it
    input: str | None  # the main input (upstream artifact, source file), None for a factory
    out_dir: str  # where the step writes its output
    log: str  # the node's log file
    precision: str
    extra: dict[str, Any]  # kind-specific fields (a check's reference and format, a bench's source)


class WorkerReply(TypedDict, total=False):
    """What a worker answered: `ok` with the step's metrics, or the error; `built` says where it ran."""

    ok: Required[bool]
    metrics: dict[str, Any]
    error: str
    user: bool  # the error is the user's to fix (its message says how): no traceback
    built: dict[str, Any]
    refused: list[dict[str, Any]]  # where the user's model calls the ops a converter refused (localise/sites.py)
    decomposable: list[str]  # the refused ATen ops PyTorch's tables decompose (running/worker.py)
    every_route: bool  # the failure lies in what the target asks: no other route is tried (errors.UnmetOnEveryRoute)


def worker_request(*, step: str, options: dict[str, Any], model_name: str, model: dict[str, Any], root: str,
                   input: str | None, out_dir: str, log: str, precision: str,
                   extra: dict[str, Any] | None = None) -> WorkerRequest:
    return WorkerRequest(step=step, options=options, model_name=model_name, model=model, root=root, input=input,
                         out_dir=out_dir, log=log, precision=precision, extra=extra or {})


class DroppedRoute(TypedDict, total=False):
    """A route that failed: what deploy.lock's `routes.<target>.dropped` keeps of it, so that no machine
    tries it again under the key it failed with (planning.history)."""

    route: Required[list[str]]  # its stops' words (planning.routes.Route.words)
    node: Required[str]  # the node that failed it: a conversion, or the check that missed
    key: Required[str]  # that node's key when it failed
    modelbuild: Required[str]  # the modelbuild version that failed it (an upgrade retries it)
    reason: Required[str]  # the failure's first line, and what was not tried
    rewrites: list[str]  # the rewrites its refusal points at: the next route applies them
    answers: list[list[str]]  # the routes that lower what its refusal names (planning.answers), best first
    answers_first: bool  # its rewrites are a guess (the refusal names no op): those answers go before them
    repair: bool  # its check missed a tolerance: the next routes are its repair recipes
    observed: dict[str, Any]  # what the quantized artifact measured (size, agreement), for the trade-off
    refused: list[dict[str, Any]]  # where the user's model calls the ops a converter refused (localise/sites.py)


class ComparedRoute(TypedDict, total=False):
    """One route a target with `prefer:` built and measured (planning.prefer): what deploy.lock keeps of it."""

    route: Required[list[str]]  # its stops' words
    passed: Required[bool]  # its artifact passed the target's check
    reason: str  # why not, in one line
    bytes: int  # the deliverable's files
    latency_ms: float  # the check's quick latency on this host (min over its runs)
    fidelity: float  # the check's accuracy, else top-1 agreement, else cosine, averaged over outputs
    key: str  # its check's key


class ChosenRoute(TypedDict):
    """The route a target with `prefer:` ships, and the comparison that chose it: a build reuses the choice while
    the check of that route keeps `key` (planning.prefer)."""

    prefer: str  # latency | size | accuracy
    route: list[str]
    key: str  # the check's key when chosen
    gain: str  # what the choice bought against the route built first, in words
    compared: list[ComparedRoute]  # in the order built; the first is the route taken before comparing


class RouteEntry(TypedDict, total=False):
    dropped: Required[list[DroppedRoute]]
    chosen: ChosenRoute


class NodeEntry(TypedDict, total=False):
    """A node in deploy.lock (and, for `built` and `metrics`, in the build record beside it); `Lock.entry` gives
    an empty one for a node the lock lacks."""

    key: str
    components: dict[str, Any]  # what the key hashes (planning.planner.Planner.components)
    tree: str  # the output tree's digest
    files: list[FileRow]
    built: dict[str, Any]  # host, time, seconds, worker: the build record only
    metrics: dict[str, Any]  # what the step or check measured: the build record only
    facts: dict[str, Any]  # an artifact's committed facts (Step.committed_metrics)
    caveats: list[dict[str, Any]]
    verdict: str  # a check's (status.Verdict)
    local: bool  # host-bound (a benchmark): kept in the build record alone


class TargetEntry(TypedDict, total=False):
    """A delivered target: its artifact node, where it lies and the route that made it."""

    node: Required[str]
    path: Required[str]
    files: Required[list[FileRow]]
    route: Required[list[str]]
    rewrites: list[str]


def node_entry(*, key: str, components: dict[str, Any], tree: str, files: list[FileRow], built: dict[str, Any],
               metrics: dict[str, Any], fields: dict[str, Any]) -> NodeEntry:
    """A lock entry for a node just built or restored: `fields` are its kind's (planning.kinds lock_fields)."""
    entry = NodeEntry(key=key, components=components, tree=tree, files=files, built=built)
    if metrics:
        entry["metrics"] = {k: v for k, v in metrics.items() if k != "seconds"}
    entry.update(fields)  # type: ignore[typeddict-item]
    return entry


def target_entry(*, node: str, path: str, files: list[FileRow], route: list[str], rewrites: list[str]) -> TargetEntry:
    entry = TargetEntry(node=node, path=path, files=files, route=route)
    if rewrites:
        entry["rewrites"] = rewrites
    return entry


# What a build did to a node (the executor's outcomes), in the one status vocabulary.
FRESH, BUILT, CACHED, RESTORED, CUTOFF, FAILED, SKIPPED = (Outcome.FRESH, Outcome.BUILT, Outcome.CACHED, Outcome.RESTORED,
                                                           Outcome.CUTOFF, Outcome.FAILED, Outcome.SKIPPED)


@dataclass
class NodeResult:
    """What a build did to one node: its outcome, how long it took, why it failed, where its log is, what it
    measured."""

    name: str
    outcome: Outcome
    seconds: float = 0.0
    error: str = ""
    log: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    user_error: bool = False  # the error is the user's to fix (its message says how): no traceback


@dataclass
class BuildResult:
    """Every node's result in one build (or one pass of the decision loop)."""

    results: dict[str, NodeResult] = field(default_factory=dict)

    @property
    def failed(self) -> list[NodeResult]:
        return [r for r in self.results.values() if r.outcome == FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed and not any(r.outcome == SKIPPED for r in self.results.values())


def built_by(seconds: float) -> dict[str, Any]:
    """Where, when and how long a node was built (kept in the build record and in bundle manifests)."""
    import datetime
    import socket

    at = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return {"host": socket.gethostname(), "at": at, "seconds": round(seconds, 3)}


@dataclass(frozen=True)
class Event:
    """A build event: a node `started`, or ended `built`/`cached`/`restored`/`cutoff`/`fresh`/`failed`/`skipped`.

    `reasons` says why the node ran (from the plan), `metrics` what it measured, `log` where its
    worker wrote; `done`/`total` count the nodes of the build so far.
    """

    event: str
    node: str
    kind: str
    target: str | None = None
    seconds: float | None = None
    reasons: list[str] = field(default_factory=list)
    error: str = ""
    log: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    total: int = 0

    def as_json(self) -> dict[str, Any]:
        """The event as one JSON object (what `build --json` streams, one per line)."""
        out: dict[str, Any] = {"event": self.event, "node": self.node, "kind": self.kind, "target": self.target,
               "done": self.done, "total": self.total}
        if self.event == "started":
            out["reasons"] = self.reasons
        else:
            out.update(seconds=self.seconds, error=self.error or None, log=self.log or None, metrics=self.metrics)
        return out
