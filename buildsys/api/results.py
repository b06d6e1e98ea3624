"""The result objects of the Python API (`buildsys.api`): plans, build reports, targets and bundle checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildsys.records import NodeResult
from buildsys.status import Action, Outcome, State, Verdict


@dataclass(frozen=True)
class NodeStatus:
    """One node of a plan: its state, what the build would do and why."""

    name: str
    kind: str  # artifact, reference, check, bench
    model: str
    format: str
    targets: list[str]
    state: State  # fresh, stale, blocked (this host cannot build it, e.g. no GPU) or failed (under this key)
    action: Action
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
        return [n for n in self.nodes if n.state is State.STALE]

    @property
    def fresh(self) -> bool:
        """Whether a build would do nothing."""
        return not self.stale


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
    size_ratio: float | None = None  # the file against the model's parameters × 4 bytes (None: not known)
    ideal_ratio: float | None = None  # its weight bytes against parameters × the precision's bytes (docs/quantization.md)
    latency: dict[str, Any] | None = None  # the check's batch-1 timing in the runtime (min_ms, p50_ms, one_thread)
    eager_latency: dict[str, Any] | None = None  # PyTorch eager's, timed by the reference the same way


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
                                   "rewrites": t.rewrites, "repair": t.repair, "size_ratio": t.size_ratio,
                                   "ideal_ratio": t.ideal_ratio, "weights": t.metrics.get("quantized_weights"),
                                   "latency": t.latency, "eager_latency": t.eager_latency}
                            for name, t in self.targets.items()}}

    @property
    def ran(self) -> list[str]:
        """Nodes whose step ran in this build."""
        return [n for n, r in self.nodes.items() if r.outcome is Outcome.BUILT]

    @property
    def failed(self) -> list[NodeResult]:
        return [r for r in self.nodes.values() if r.outcome is Outcome.FAILED]


@dataclass(frozen=True)
class BundleCheck:
    """One artifact of a bundle re-checked by `verify_bundle`: passed, failed or not run, and why."""

    target: str
    format: str
    status: Verdict  # passed, failed or not run (on this host)
    detail: str
    samples: int | None = None
