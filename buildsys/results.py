"""What a build did to each node: outcomes and results (shared by the executor and the reports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FRESH, BUILT, CACHED, RESTORED, CUTOFF, FAILED, SKIPPED = "fresh", "built", "cached", "restored", "cutoff", "failed", "skipped"


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
