"""What one keep-float search measured and chose (buildsys/formats/keep_float.py): each judged artifact
(`Measured`), each trial (`Trial`) and the `RepairRecord` a node commits as deploy.lock's `facts.repair`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Measured:
    """One artifact judged on the search's data: whether it meets the goal, its error (the sum over outputs and
    limited metrics of how far each is from perfect, as a share of its allowance: above 1 somewhere is a miss),
    the metrics per output, its size and its latency (ms per sample; None where the runtime is not the
    artifact's own, e.g. ExecuTorch's reference arithmetic)."""

    passed: bool
    error: float
    metrics: dict[str, dict[str, float]]
    bytes: int | None = None
    ms: float | None = None
    clear: bool = False  # met the goal with MARGIN of every allowance to spare

    def as_fact(self) -> dict[str, Any]:
        return {"passed": self.passed, "with_margin": self.clear, "error": self.error, "metrics": self.metrics,
                **({"bytes": self.bytes} if self.bytes is not None else {})}


@dataclass(frozen=True)
class Trial:
    """The units kept at higher precision in one trial, and what that artifact measured."""

    kept: list[str]
    measured: Measured

    def as_fact(self) -> dict[str, Any]:
        return {"keep_float": self.kept, **self.measured.as_fact()}


@dataclass
class RepairRecord:
    """What a keep-float repair did: the node's committed `facts.repair` (deploy.lock, explain, the report).

    `reduced`: the precision the kept units escape (int8, fp16); `kept_float`: the units kept at higher
    precision (the format's names: ONNX node names, torch.export node names, TFLite op scopes, OpenVINO friendly
    names, MIL op names); `kinds`: their op types where the format says; `sensitivity`: the most sensitive units
    with their error; `measured`: how sensitivity was measured, in words."""

    reduced: str
    recipe: str = "keep-float"
    kept_float: list[str] = field(default_factory=list)
    baseline: Measured | None = None
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    measured: str = ""
    kinds: list[str] | None = None
    judged: str = ""  # on what data (Judge.describe)

    def as_fact(self) -> dict[str, Any]:
        """JSON-ready, without latencies (deploy.lock holds only what two clean builds agree on)."""
        out: dict[str, Any] = {"recipe": self.recipe, "reduced": self.reduced, "kept_float": list(self.kept_float)}
        if self.baseline is not None:
            out["baseline"] = self.baseline.as_fact()
            out["sensitivity"] = [[name, error] for name, error in self.sensitivity]
            out["trials"] = [t.as_fact() for t in self.trials]
        if self.measured:
            out["measured"] = self.measured
        if self.judged:
            out["judged"] = self.judged
        if self.kinds is not None:
            out["kept_ops"] = list(self.kinds)
        return out

    def timings(self) -> list[float]:
        """Milliseconds per sample of the baseline, then of each trial (for the build record)."""
        parts = [self.baseline, *(t.measured for t in self.trials)] if self.baseline is not None else []
        return [m.ms for m in parts if m is not None and m.ms is not None]
