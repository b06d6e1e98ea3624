"""Per-layer comparison: an artifact's intermediates against PyTorch's module outputs, the first layer
beyond tolerance, and the bounded table a failed check carries (NumPy only; no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: Rows a check's result keeps: those up to the first divergence, a few after it, and the worst.
MAX_ROWS = 12
#: How many modules after an op's own (in PyTorch's execution order) its tensor may belong to: a
#: converter that folds BatchNorm into the Conv before it names the fused op after the Conv.
FUSION_WINDOW = 3


#: What a user can do about a layer that diverges, by the precision of the artifact.
HINTS = {
    "fp32": ("a converter or runtime computes this layer differently: try another route (via:) or opset, "
             "rewrite the layer, or report the op (per-layer table: modelbuild explain)"),
    "fp16": ("this layer loses too much in half precision: keep it in float32 (or its inputs in range), or "
             "loosen the tolerance if the model's use allows (per-layer table: modelbuild explain)"),
    "int8": ("this layer does not survive 8-bit quantization: keep it in float (the quantizer's excluded "
             "layers), calibrate with more representative data, or use per-channel or dynamic quantization "
             "(per-layer table: modelbuild explain)"),
}


@dataclass(frozen=True)
class Probe:
    """One intermediate tensor of the artifact, in its execution order: its name in the artifact, the
    op that made it, the module path its name maps to ("" when none) and its value (samples first)."""

    tensor: str
    op: str
    module: str
    value: "np.ndarray"


@dataclass(frozen=True)
class Criterion:
    """The per-layer metric and its limit, taken from the output tolerance that the check missed: a
    max_rel limit judges layers by max_rel, a range error limit by range_error, a cosine by cosine."""

    metric: str = "max_rel"
    allowed: float | None = None

    @property
    def lower_is_better(self) -> bool:
        return self.metric != "cosine"

    def ok(self, value: float) -> bool:
        if self.allowed is None:
            return True
        return value <= self.allowed if self.lower_is_better else value >= self.allowed

    @classmethod
    def from_tolerance(cls, tol: dict[str, Any] | None) -> "Criterion":
        tol = tol or {}
        for metric, limit in (("max_rel", "max_rel"), ("range_error", "max_range_error"), ("cosine", "min_cosine")):
            if tol.get(limit) is not None:
                return cls(metric, float(tol[limit]))
        return cls()


def errors(ref: "np.ndarray", obs: "np.ndarray") -> dict[str, float]:
    """max_rel (max |diff| / max |ref|), range_error (worst sample's RMS error over the reference's
    range) and cosine (worst sample), as the check computes them for outputs (comparison.compare)."""
    import numpy as np

    from buildsys.comparison import min_cosine, range_error

    ref64, obs64 = np.asarray(ref, np.float64), np.asarray(obs, np.float64)
    if not np.all(np.isfinite(obs64)):
        return {"max_rel": float("inf"), "range_error": float("inf"), "cosine": -1.0}
    diff = float(np.abs(obs64 - ref64).max()) if ref64.size else 0.0
    scale = float(np.abs(ref64).max()) if ref64.size else 0.0
    max_rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return {"max_rel": max_rel, "range_error": range_error(ref64, obs64), "cosine": min_cosine(ref64, obs64)}


@dataclass
class LayerRow:
    """One module's output in the artifact against PyTorch's."""

    module: str
    module_type: str
    op: str
    tensor: str
    errors: dict[str, float]
    error: float
    ok: bool
    fused: str = ""  # the module the artifact's op is named after, when that is another one (a fused op)
    #: No tensor of the artifact holds this output, yet a later module's is reproduced: the converter
    #: fused it away (a Conv's output before the BatchNorm folded into it). Not a divergence.
    absent: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = {"module": self.module, "module_type": self.module_type, "op": self.op, "tensor": self.tensor,
               "error": self.error, "ok": self.ok, **self.errors}
        return out | ({"fused": self.fused} if self.fused else {}) | ({"absent": True} if self.absent else {})


@dataclass
class Localisation:
    """Where an artifact's intermediates leave PyTorch's: `first` is the first module (in PyTorch's
    execution order) whose output misses the criterion, `worst` the one that adds the most error."""

    format: str
    criterion: Criterion
    rows: list[LayerRow] = field(default_factory=list)
    first: LayerRow | None = None
    worst: LayerRow | None = None
    samples: int = 0
    matched: int = 0
    probes: int = 0

    def headline(self, precision: str = "") -> str:
        """One line for the check's failures: the op, the module path, the error and what to do."""
        c = self.criterion
        if self.first is not None:
            r = self.first
            op = ">" if c.lower_is_better else "<"
            tensor = r.tensor.split(";")[0]
            tensor = tensor if len(tensor) <= 80 else "…" + tensor[-79:]
            return (f"first divergence from PyTorch at module '{r.module}' ({r.module_type}; {r.op} in the "
                    f"{self.format} artifact, tensor '{tensor}'): {c.metric} {r.error:.3g} {op} {c.allowed:.3g}, "
                    f"and no module after it comes back within that; {HINTS.get(precision, HINTS['fp32'])}")
        if self.rows:
            where = f"; the largest step is at '{self.worst.module}'" if self.worst is not None else ""
            return (f"no module of the {self.format} artifact leaves PyTorch's outputs by more than {c.metric} "
                    f"{c.allowed:.3g} for good{where} (per-layer table: modelbuild explain)")
        return f"localisation found no tensor of the {self.format} artifact that holds a PyTorch module's output"

    def table(self) -> list[LayerRow]:
        """At most MAX_ROWS rows: those up to and a few after the first divergence, and the worst."""
        if len(self.rows) <= MAX_ROWS:
            return list(self.rows)
        end = self.rows.index(self.first) + 4 if self.first is not None else MAX_ROWS
        kept = self.rows[max(0, end - MAX_ROWS):end]
        if self.worst is not None and self.worst not in kept:
            kept = kept[1:] + [self.worst]
        return kept

    def as_dict(self, precision: str = "") -> dict[str, Any]:
        return {"format": self.format, "metric": self.criterion.metric, "allowed": self.criterion.allowed,
                "first": self.first.module if self.first else None, "worst": self.worst.module if self.worst else None,
                "headline": self.headline(precision), "samples": self.samples, "layers_compared": len(self.rows),
                "tensors_mapped": self.matched, "tensors_seen": self.probes,
                "rows": [r.as_dict() for r in self.table()]}


def compare_layers(probes: list[Probe], reference: dict[str, "np.ndarray"], order: list[str], types: dict[str, str],
                   criterion: Criterion, fmt: str, samples: int = 0) -> Localisation:
    """Judge each module output (in PyTorch's order) against the artifact tensor that holds it.

    A module's candidates are the probes of its shape that are named after a module near it (itself,
    the FUSION_WINDOW modules before or after it, an ancestor or a descendant), and the unnamed probes
    that run between the named ones around it (names are hints: a converter that fuses BatchNorm into
    the Conv before it names the fused op after either, and Core ML's fused weights carry no name at
    all). The module is reproduced when a candidate meets the criterion; its row shows that candidate,
    else the one named after it, else the closest. `first` is the first module of the trailing run of
    modules that are not reproduced: a fused-away output (a Conv's before its BatchNorm) is excused by
    the reproduced output after it, a real divergence never is."""
    position = {path: i for i, path in enumerate(order)}
    named = [(k, position[p.module]) for k, p in enumerate(probes) if p.module in position]
    rows: list[LayerRow] = []
    reproduced: list[bool] = []
    seen: set[int] = set()
    last = -1  # the artifact position of the latest tensor a row shows
    for i, path in enumerate(order):
        ref = reference[path]
        lo = max((k for k, j in named if j < i - FUSION_WINDOW), default=-1)
        hi = min((k for k, j in named if j > i + FUSION_WINDOW), default=len(probes))
        near = {p for p in order[max(0, i - FUSION_WINDOW):i + FUSION_WINDOW + 1]}
        candidates = [k for k, probe in enumerate(probes) if probe.value.shape == ref.shape and (
            (probe.module in position and (probe.module in near or path.startswith(probe.module + ".")
                                           or probe.module.startswith(path + ".")))
            or (probe.module not in position and lo < k < hi))]
        if not candidates:
            continue
        seen.update(candidates)
        scored = [(k, errors(ref, probes[k].value)) for k in candidates]
        within = [(k, e) for k, e in scored if criterion.ok(e[criterion.metric]) and _close(e)]
        own = [(k, e) for k, e in scored if probes[k].module == path]
        if within:
            k, errs = next((c for c in within if probes[c[0]].module == path), within[-1])
        elif own:
            k, errs = own[-1]
        else:  # the first tensor of its shape after those already placed: where the divergence shows
            k, errs = next((c for c in scored if c[0] > last), scored[-1])
        last = max(last, k)
        probe = probes[k]
        value = errs[criterion.metric]
        rows.append(LayerRow(path, types.get(path, ""), probe.op, probe.tensor, errs, value, criterion.ok(value),
                             probe.module if probe.module and probe.module != path else ""))
        reproduced.append(bool(within))
    loc = Localisation(fmt, criterion, rows, samples=samples, matched=len(seen), probes=len(probes))
    start = len(reproduced)
    while start > 0 and not reproduced[start - 1]:
        start -= 1
    for row, held in zip(rows[:start], reproduced):
        row.absent = not held
    if criterion.allowed is not None and start < len(rows):
        loc.first = rows[start]
    loc.worst = _largest_step(rows, criterion)
    return loc


def _close(errs: dict[str, float]) -> bool:
    """Whether a candidate is plausibly the same tensor at all (guards a loose criterion, such as an int8
    cosine of 0.9, against matching an unrelated module's output of the same shape)."""
    return errs["cosine"] >= 0.5


def _largest_step(rows: list[LayerRow], criterion: Criterion) -> LayerRow | None:
    """The row whose error grows most over the largest error before it, as a ratio (for a cosine, of
    1 - cos): the layer that adds the most error of its own, where a quantization or a fault does its
    damage, rather than a later layer that only carries it on. Errors under a thousandth of the limit
    count as that thousandth, so rounding noise in the first layers is no step."""
    floor = 1e-3 * (criterion.allowed if criterion.allowed and criterion.lower_is_better
                    else 1.0 - criterion.allowed if criterion.allowed else 1e-6)
    best, best_ratio, so_far = None, 1.0, floor
    for row in rows:
        if row.absent:
            continue
        err = max(row.error if criterion.lower_is_better else 1.0 - row.error, floor)
        if err / so_far > best_ratio:
            best, best_ratio = row, err / so_far
        so_far = max(so_far, err)
    return best
