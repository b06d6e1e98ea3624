"""What a plan and a build found: node outcomes (the executor's), and the result objects of the Python API
(`buildsys.api`): plans, build reports, targets, events and bundle checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from buildsys.status import Action, Outcome, State

# What a build did to a node (the executor's outcomes), in the one status vocabulary.
FRESH, BUILT, CACHED, RESTORED, CUTOFF, FAILED, SKIPPED = (Outcome.FRESH, Outcome.BUILT, Outcome.CACHED, Outcome.RESTORED,
                                                           Outcome.CUTOFF, Outcome.FAILED, Outcome.SKIPPED)

#: NodeStatus.action: what building would do for the node (NodePlan.next).
NodeAction = Action

@dataclass
class NodeResult:
    name: str
    outcome: str
    seconds: float = 0.0
    error: str = ""
    log: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    user_error: bool = False  # the error is the user's to fix (its message says how): no traceback


@dataclass
class BuildResult:
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


# --- the Python API's results -------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeStatus:
    """One node of a plan: its state, what the build would do and why."""

    name: str
    kind: str  # artifact, reference, check, bench
    model: str
    format: str
    targets: list[str]
    state: State  # fresh, stale, blocked (this host cannot build it, e.g. no GPU) or failed (under this key)
    action: NodeAction
    reasons: list[str]
    key: str | None


@dataclass(frozen=True)
class PlanResult:
    """A plan: `nodes` in dependency order; `stale` are those a build would touch."""

    config: Path
    targets: list[str]
    routes: dict[str, list[str]]
    nodes: list[NodeStatus]

    @property
    def stale(self) -> list[NodeStatus]:
        return [n for n in self.nodes if n.state == "stale"]

    @property
    def fresh(self) -> bool:
        """Whether a build would do nothing."""
        return not self.stale


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


@dataclass(frozen=True)
class TargetResult:
    """A requested target after a build: its check status (the summary's vocabulary) and where it is."""

    name: str
    model: str
    format: str
    precision: str
    status: str  # the verdict and each caveat's words: "passed", "passed; not optimized", "not delivered" (buildsys.status)
    artifact: Path | None  # artifacts/<target>/ when delivered
    size_bytes: int
    metrics: dict[str, Any]  # the check's report: outputs, observed vs allowed, not_run reasons
    verdict: str = ""  # buildsys.status.Verdict
    caveats: list[dict[str, Any]] = field(default_factory=list)  # what did not run or ran on a lesser path
    route: list[str] = field(default_factory=list)  # the formats that made it, with a recipe: "onnx-int8 (repair keep-float)"
    dropped: list[dict[str, Any]] = field(default_factory=list)  # each route tried before it: route, node, reason
    rewrites: list[str] = field(default_factory=list)  # op rewrites the artifact carries (docs/rewrites.md)
    repair: dict[str, Any] | None = None  # what an accuracy repair chose and tried (docs/repair.md), else None


@dataclass
class BuildReport:
    """What a build did: every node's outcome, and each requested target's verdict."""

    ok: bool
    nodes: dict[str, NodeResult]
    targets: dict[str, TargetResult]
    seconds: float
    summary: list[dict[str, Any]] = field(default_factory=list)  # the console summary's rows
    work: int = 0  # nodes the plan said needed work (0: a no-op)
    plan: Any = None  # the buildsys.planning.plan.Plan the build carried out

    def as_json(self) -> dict[str, Any]:
        """The report as one JSON object (the last line of `build --json`)."""
        return {"event": "summary", "ok": self.ok, "seconds": self.seconds, "work": self.work,
                "failed": [r.name for r in self.failed],
                "targets": {name: {"status": t.status, "verdict": t.verdict, "caveats": t.caveats, "format": t.format,
                                   "precision": t.precision, "artifact": str(t.artifact) if t.artifact else None,
                                   "size_bytes": t.size_bytes, "route": t.route, "dropped": t.dropped,
                                   "rewrites": t.rewrites, "repair": t.repair}
                            for name, t in self.targets.items()}}

    @property
    def ran(self) -> list[str]:
        """Nodes whose step ran in this build."""
        return [n for n, r in self.nodes.items() if r.outcome == "built"]

    @property
    def failed(self) -> list[NodeResult]:
        return [r for r in self.nodes.values() if r.outcome == FAILED]


@dataclass(frozen=True)
class BundleCheck:
    """One artifact of a bundle re-checked by `verify_bundle`: passed, failed or not run, and why."""

    target: str
    format: str
    status: Literal["passed", "failed", "not run"]
    detail: str
    samples: int | None = None
