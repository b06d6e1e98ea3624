"""`modelbuild diff` for people: a table of the numbers per target (size, accuracy, agreement, largest error,
latency), then every other change (format, route, options, toolchain), as console text or as Markdown for
a pull-request comment."""

from __future__ import annotations

from typing import Any

from buildsys.release.diff import Change, Diff, TargetDiff

NUMBERS = (("size", "size"), ("weights", "weights"), ("accuracy", "accuracy"), ("agreement", "agreement"),
           ("max_abs", "max abs err"), ("latency_p50_ms", "p50 latency"))


def value(name: str, v: Any) -> str:
    if v is None:
        return "—"
    if name == "size" and isinstance(v, (int, float)):
        return f"{v:.0f} B" if v < 1000 else f"{v / 1e3:.1f} KB" if v < 1e6 else f"{v / 1e6:.2f} MB"
    if name in ("accuracy", "agreement", "weights") and isinstance(v, float):
        return f"{v:.2%}"
    if name == "latency_p50_ms" and isinstance(v, (int, float)):
        return f"{v:.4g} ms"
    if isinstance(v, float):
        return f"{v:.4g}" if v == 0 or abs(v) >= 1e-3 else f"{v:.2e}"
    return f"[{v}]" if name == "route" else str(v)  # a route's own arrows would blur the change's


def _arrow(c: Change) -> str:
    text = f"{value(c.field, c.before)} → {value(c.field, c.after)}"
    return f"{text} ({c.delta})" if c.delta else text


def _headline(diff: Diff) -> str:
    counts: dict[str, int] = {}
    for t in diff.targets:
        counts[t.status] = counts.get(t.status, 0) + 1
    parts = [f"{n} {status}" for status, n in sorted(counts.items()) if n]
    regressed = [t.target for t in diff.targets if t.regressed]
    tail = f"; regressed beyond the thresholds: {', '.join(regressed)}" if regressed else ""
    return f"{diff.before} → {diff.after}: {len(diff.targets)} target(s): {', '.join(parts) or 'none'}{tail}"


def _rows(diff: Diff, every: bool) -> list[TargetDiff]:
    return [t for t in diff.targets if every or t.status != "unchanged"]


def text(diff: Diff, every: bool = False) -> str:
    """A table of the numbers, then the other changes of each target (unchanged targets only with `every`)."""
    rows = _rows(diff, every)
    lines = [_headline(diff)]
    if not rows:
        return "\n".join(lines + ["No target changed."]) + "\n"
    header = ["target", "status", *(label for _, label in NUMBERS)]
    table = [header]
    for t in rows:
        by = {c.field: c for c in t.changes}
        cells = [t.target, t.status + (" REGRESSED" if t.regressed else "")]
        cells += [(_arrow(by[name]) + (" !" if by[name].regressed else "")) if name in by else "" for name, _ in NUMBERS]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    for t in rows:
        other = [c for c in t.changes if c.field not in dict(NUMBERS)]
        if other:
            lines.append(f"{t.target}:")
            lines += [f"  {c.field}: {_arrow(c)}" + ("  (regression)" if c.regressed else "") for c in other]
    return "\n".join(lines) + "\n"


def markdown(diff: Diff, every: bool = False) -> str:
    """The same for a pull-request comment: a Markdown table and a list of the other changes."""
    rows = _rows(diff, every)
    lines = ["### modelbuild diff", "", f"`{diff.before}` → `{diff.after}`", ""]
    regressed = [t.target for t in diff.targets if t.regressed]
    if regressed:
        lines += [f"**Regressed beyond the thresholds:** {', '.join(regressed)}", ""]
    if not rows:
        return "\n".join(lines + [f"No target changed ({len(diff.targets)} compared)."]) + "\n"
    lines += ["| target | status | " + " | ".join(label for _, label in NUMBERS) + " |",
              "|---|---|" + "---|" * len(NUMBERS)]
    for t in rows:
        by = {c.field: c for c in t.changes}
        cells = [f"**{_esc(_arrow(by[n]))}** :warning:" if n in by and by[n].regressed else _esc(_arrow(by[n])) if n in by
                 else "" for n, _ in NUMBERS]
        lines.append(f"| {_esc(t.target)} | {t.status}{' :warning:' if t.regressed else ''} | " + " | ".join(cells) + " |")
    details = [(t, [c for c in t.changes if c.field not in dict(NUMBERS)]) for t in rows]
    details = [(t, other) for t, other in details if other]
    if details:
        lines += ["", "<details><summary>Format, route, options and toolchain changes</summary>", ""]
        for t, other in details:
            lines.append(f"- **{_esc(t.target)}**")
            lines += [f"  - {c.field}: `{value(c.field, c.before)}` → `{value(c.field, c.after)}`" for c in other]
        lines += ["", "</details>"]
    unchanged = sum(1 for t in diff.targets if t.status == "unchanged")
    if unchanged and not every:
        lines += ["", f"{unchanged} target(s) unchanged."]
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    return text.replace("|", "\\|")
