"""deploy.lock (as a dict) read into report rows: one `Row` per target with its status and precision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from buildsys.planning.kinds import BenchKind, CheckKind, ReferenceKind
from buildsys.planning.repair import describe
from buildsys.report.html.formatting import fmt_size
from buildsys.report.html.palette import PRECISION_COLORS, STATUS
from buildsys.status import TargetStatus, Verdict, target_status


@dataclass
class Row:
    """One target as the report shows it."""

    target: str
    node: str
    model: str
    format: str
    precision: str
    path: str
    files: list[list[Any]]
    size: int
    check: dict[str, Any]
    bench: dict[str, Any]
    toolchain: dict[str, Any]
    options: dict[str, Any]
    on_fail: str
    status: str = "unverified"  # the page's status class (palette.STATUS)
    words: str = ""  # the target's status as every output words it (verdict; caveats)
    caveats: list[str] = field(default_factory=list)  # each caveat in full: what did not run or ran on a lesser path
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    route: list[str] = field(default_factory=list)  # formats from the source to the artifact
    dropped: list[dict[str, Any]] = field(default_factory=list)  # routes tried first: route, node, reason
    choice: list[str] = field(default_factory=list)  # the comparison a `prefer:` made, in words (choice_lines)
    rewrites: list[str] = field(default_factory=list)  # op rewrites the artifact carries (docs/rewrites.md)
    repair: list[str] = field(default_factory=list)  # the accuracy-repair record in words (docs/repair.md)
    weights: str = ""  # the share of weights in the target's precision against its floor, in words
    eager_ms: float | None = None  # PyTorch eager's best call at batch 1 (the model's reference node)
    eager_one_thread_ms: float | None = None  # the same at one intra-op thread

    def metric(self, name: str) -> dict[str, Any] | None:
        """The first output's item for `name` that has an observed value."""
        for values in self.outputs.values():
            item = values.get(name)
            if isinstance(item, dict) and item.get("observed") is not None:
                return item
        return None

    def worst(self, name: str) -> dict[str, Any] | None:
        """The item for `name` with the largest observed value across outputs (errors)."""
        items = [v[name] for v in self.outputs.values() if isinstance(v.get(name), dict)
                 and isinstance(v[name].get("observed"), (int, float))]
        return max(items, key=lambda i: i["observed"]) if items else None

    def reference_accuracy(self) -> float | None:
        for values in self.outputs.values():
            if isinstance(values.get("reference_accuracy"), (int, float)):
                return float(values["reference_accuracy"])
        return None


def _precision(fmt: str, *hints: Any) -> str:
    for hint in hints:
        if isinstance(hint, str) and hint:
            return hint
    suffix = fmt.rsplit("-", 1)[-1] if "-" in fmt else ""
    return suffix if suffix in PRECISION_COLORS else "fp32"


def _status(status: TargetStatus, bench: dict[str, Any], on_fail: str) -> str:
    """The page's short status (a CSS class and a legend entry) from the target's status, the
    vocabulary the console summary and the lock use (buildsys.status), plus the benchmark's budget."""
    verdict = status.verdict
    if verdict is Verdict.PASSED:
        page = "caveats" if any(c.strict for c in status.caveats) else "passed"
    elif verdict in (Verdict.NOT_RUN, Verdict.STRUCTURE_ONLY):
        page = "not run"
    elif verdict is Verdict.WARNED:
        page = "warn" if on_fail == "warn" else "failed"
    else:
        page = "unverified"
    if bench.get("passed") is False and page in ("passed", "caveats", "not run", "unverified"):
        page = "over"  # the numbers are right but too slow: a budget was missed
    return page


def rows(lock: dict[str, Any]) -> list[Row]:
    """The report's rows, in the lock's target order."""
    nodes = lock.get("nodes") or {}
    result = []
    for target, entry in (lock.get("targets") or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        node_name = str(entry.get("node", ""))
        artifact = nodes.get(node_name) or {}
        components = artifact.get("components") or {}
        check_node = nodes.get(CheckKind.node_name(target)) or {}
        bench_node = nodes.get(BenchKind.node_name(target)) or {}
        check = check_node.get("metrics") or {}
        bench = bench_node.get("metrics") or {}
        files = [f for f in entry.get("files") or [] if isinstance(f, (list, tuple)) and len(f) >= 3]
        model, _, fmt = node_name.partition("/")
        fmt = str(check.get("format") or bench.get("format") or fmt or "")
        on_fail = ((check_node.get("components") or {}).get("acceptance") or {}).get("on_fail", "error")
        row = Row(target=str(target), node=node_name, model=model or "?", format=fmt,
                  precision=_precision(fmt, bench.get("precision"), check.get("precision")),
                  path=str(entry.get("path", "")), files=[list(f) for f in files],
                  size=sum(int(f[2]) for f in files if isinstance(f[2], (int, float))),
                  check=check, bench=bench, toolchain=dict(components.get("toolchain") or {}),
                  options=dict(components.get("options") or {}), on_fail=str(on_fail))
        row.outputs = {str(k): v for k, v in (check.get("outputs") or {}).items() if isinstance(v, dict)}
        row.route = [str(f) for f in entry.get("route") or []]
        row.rewrites = [str(n) for n in entry.get("rewrites") or []]
        p50 = (bench.get("artifact") or {}).get("p50_ms")
        row.repair = describe((artifact.get("facts") or {}).get("repair"), p50 if isinstance(p50, (int, float)) else None)
        row.weights = weights_words(check.get("quantized_weights"))
        row.dropped = [d for d in ((lock.get("routes") or {}).get(target) or {}).get("dropped") or []
                       if isinstance(d, dict) and isinstance(d.get("route"), list)]
        eager = ((nodes.get(ReferenceKind.node_name(row.model)) or {}).get("metrics") or {}).get("latency") or {}
        row.eager_ms = float(eager["min_ms"]) if isinstance(eager.get("min_ms"), (int, float)) else None
        one = eager.get("one_thread") or {}
        row.eager_one_thread_ms = float(one["min_ms"]) if isinstance(one.get("min_ms"), (int, float)) else None
        row.choice = choice_lines(((lock.get("routes") or {}).get(target) or {}).get("chosen"))
        status = target_status(check_node, delivered=True, route=row.route, dropped=row.dropped)
        row.status = _status(status, bench, row.on_fail)
        row.words = status.words
        row.caveats = [str(c) for c in status.caveats]
        result.append(row)
    return result


def choice_lines(chosen: Any) -> list[str]:
    """deploy.lock's record of a `prefer:` comparison (planning.prefer) in words: the choice and what it bought,
    then each route compared with what it measured, or why it did not pass."""
    if not isinstance(chosen, dict) or not isinstance(chosen.get("compared"), list):
        return []
    lines = [f"prefer {chosen.get('prefer')}: {' → '.join(map(str, chosen.get('route') or []))}; {chosen.get('gain', '')}"]
    for c in chosen["compared"]:
        route = " → ".join(map(str, c.get("route") or []))
        if not c.get("passed"):
            lines.append(f"compared {route}: did not pass: {c.get('reason', '')}")
            continue
        figures = [fmt_size(c["bytes"])] if isinstance(c.get("bytes"), int) else []
        figures += [f"{c['latency_ms']:.3g} ms"] if isinstance(c.get("latency_ms"), (int, float)) else []
        figures += [f"accuracy {c['fidelity']:.2%}"] if isinstance(c.get("fidelity"), (int, float)) else []
        lines.append(f"compared {route}: {', '.join(figures)}")
    return lines


def weights_words(weights: Any) -> str:
    """A check's `quantized_weights` summary in words: '97% of the weights int8 (1.09× the int8 size; floor 75%;
    measured on …)'."""
    if not isinstance(weights, dict) or not isinstance(weights.get("observed"), (int, float)):
        return ""
    floor = weights.get("allowed")
    bound = (f"floor {floor:.0%}" + ("" if weights.get("ok", True) else ": MISSED")) if isinstance(floor, (int, float)) else "no floor"
    size = (f"{weights['size_ratio']:.2f}× the {weights.get('asked')} size; "
            if isinstance(weights.get("size_ratio"), (int, float)) else "")
    size += f"{weights['activations']} activations; " if weights.get("activations") else ""
    return (f"{weights['observed']:.0%} of the weights {weights.get('asked') or ''} ({size}{bound}; measured on "
            f"{weights.get('measured_on') or '?'})")


def count_statuses(data: list[Row]) -> dict[str, int]:
    """How many rows have each status, every status present (zero or more), in `STATUS` order."""
    counts = {k: 0 for k in STATUS}
    for r in data:
        counts[r.status] += 1
    return counts
