"""The build report: one self-contained HTML page (and its Markdown twin) drawn from deploy.lock alone.

One row per target with its size, numeric check, latency and status; three inline SVG plots
(numeric error per target and output, latency per runtime, size per precision by model); and per
target details (files, every metric against its limit, bench runs, toolchain and options).

Standard library only: no JavaScript, no external assets, no plotting library; every piece of text
from the lock is escaped. `render(lock, title)` returns (html, markdown).

    python -m buildsys.report_html deploy.lock -o report.html [--markdown report.md] [--title ...]
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

# --- palette -------------------------------------------------------------------------------------

STATUS = {  # status -> (label, foreground, background)
    "passed": ("passed", "#1a7f37", "#dafbe1"),
    "warn": ("missed (warn)", "#9a6700", "#fff8c5"),
    "over": ("over budget", "#bc4c00", "#fff1e5"),
    "failed": ("failed", "#cf222e", "#ffebe9"),
    "not run": ("not run", "#57606a", "#eaeef2"),
    "unverified": ("not verified", "#57606a", "#eaeef2"),
}
PRECISION_COLORS = {"fp32": "#0969da", "fp16": "#1b7c83", "bf16": "#116329", "int8": "#8250df", "int4": "#bf3989"}
ERROR_COLORS = {"max_abs": "#0969da", "max_rel": "#8250df"}
RUNTIME_COLORS = {"artifact": "#1f883d", "eager": "#8c959f"}
INK, MUTED, GRID, AXIS = "#1f2328", "#656d76", "#eaeef2", "#afb8c1"
NOISY = 3.0  # p95 / p50 above this: the latency tail is flagged as noisy
MD_STATUS = {"passed": "✅", "warn": "⚠️", "over": "⚠️", "failed": "❌", "not run": "⏺", "unverified": "⏺"}


def esc(value: Any) -> str:
    """Text for HTML/SVG content and attribute values."""
    return html.escape(str(value), quote=True)


# --- the lock, read ------------------------------------------------------------------------------


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
    status: str = "unverified"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

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


def _status(check: dict[str, Any], bench: dict[str, Any], on_fail: str) -> str:
    if not check:
        status = "unverified"
    elif check.get("not_run"):
        status = "not run"
    elif check.get("passed") is True:
        status = "passed"
    elif check.get("passed") is False:
        status = "warn" if on_fail == "warn" else "failed"
    else:
        status = "unverified"
    if bench.get("passed") is False and status in ("passed", "not run", "unverified"):
        status = "over"  # the numbers are right but too slow: a budget was missed
    return status


def rows(lock: dict[str, Any]) -> list[Row]:
    """The report's rows, in the lock's target order."""
    nodes = lock.get("nodes") or {}
    result = []
    for target, entry in (lock.get("targets") or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        node_name = str(entry.get("node", ""))
        artifact = nodes.get(node_name) or {}
        components = artifact.get("components") or {}
        check_node = nodes.get(f"verify:{target}") or {}
        bench_node = nodes.get(f"bench:{target}") or {}
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
        row.status = _status(check, bench, row.on_fail)
        result.append(row)
    return result


# --- numbers -------------------------------------------------------------------------------------


def fmt_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_err(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if value == 0:
        return "0"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.1e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3g}"


def fmt_ratio(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


def fmt_pct(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) else "—"


def fmt_ms(value: Any) -> str:
    """A latency with its natural unit: 5.48 µs, 0.473 ms, 12.3 ms, 1.25 s."""
    if not isinstance(value, (int, float)):
        return "—"
    if value < 1:
        return f"{value * 1000:.3g} µs"
    if value < 1000:
        return f"{value:.3g} ms"
    return f"{value / 1000:.3g} s"


def fmt_value(metric: str, value: Any) -> str:
    if metric.startswith("max_") or metric.endswith("_abs") or metric.endswith("_rel"):
        return fmt_err(value)
    if metric in ("accuracy", "top1_agreement"):
        return fmt_pct(value)
    if metric.endswith("_ms"):
        return fmt_ms(value)
    if isinstance(value, float):
        return fmt_ratio(value)
    return "—" if value is None else str(value)


def fmt_limit(metric: str, item: dict[str, Any]) -> str:
    allowed = item.get("allowed")
    if allowed is None:
        return "not checked"
    op = {"<=": "≤", ">=": "≥"}.get(str(item.get("op", "")), str(item.get("op", "")))
    return f"{op} {fmt_value(metric, allowed)}"


# --- SVG charts ----------------------------------------------------------------------------------

FONT = 'font-family="inherit"'


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


class Scale:
    """Maps values to pixels on [x0, x1], linear from 0 or logarithmic by decades."""

    def __init__(self, values: Iterable[float], x0: float, x1: float, log: bool | None = None):
        vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        positive = [v for v in vals if v > 0]
        hi = max(positive, default=1.0)
        lo = min(positive, default=hi)
        self.log = (hi / lo > 30) if log is None else log
        self.x0, self.x1 = x0, x1
        if self.log:
            self.lo = 10 ** math.floor(math.log10(lo))
            self.hi = 10 ** math.ceil(math.log10(hi))
            if self.hi <= self.lo:
                self.hi = self.lo * 10
        else:
            self.lo = 0.0
            step = _nice_step(hi)
            self.hi = step * math.ceil(hi / step * 1.0001) if hi > 0 else 1.0
            self.step = step

    def __call__(self, v: float) -> float:
        if self.log:
            v = min(max(v, self.lo), self.hi)
            t = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            t = min(max(v, 0.0), self.hi) / self.hi
        return self.x0 + t * (self.x1 - self.x0)

    def ticks(self) -> list[float]:
        if self.log:
            a, b = round(math.log10(self.lo)), round(math.log10(self.hi))
            every = max(1, math.ceil((b - a) / 7))
            return [10.0 ** e for e in range(a, b + 1, every)]
        n = int(round(self.hi / self.step))
        return [i * self.step for i in range(n + 1)]


def _tick_label(v: float, log: bool, unit: str = "") -> str:
    if log:
        e = round(math.log10(v)) if v > 0 else 0
        text = f"1e{e}" if e < -2 or e > 3 else f"{v:g}"
    else:
        text = f"{v:g}"
    return f"{text}{unit}"


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{esc(label)}">' + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start", fill: str = INK,
          weight: str = "normal", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}" {extra}>{esc(text)}</text>')


def _clip(text: str, px: float, size: int = 12) -> str:
    """Shorten `text` with an ellipsis to fit about `px` pixels at font `size`."""
    fit = max(3, int(px / (size * 0.56)))
    return text if len(text) <= fit else text[: fit - 1] + "…"


def _x_axis(scale: Scale, top: float, bottom: float, unit: str = "") -> list[str]:
    out = []
    for t in scale.ticks():
        x = scale(t)
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="{GRID}" />')
        out.append(_text(x, bottom + 14, _tick_label(t, scale.log, unit), size=10, anchor="middle", fill=MUTED))
    out.append(f'<line x1="{scale.x0:.1f}" y1="{bottom:.1f}" x2="{scale.x1:.1f}" y2="{bottom:.1f}" stroke="{AXIS}" />')
    return out


def _legend(items: list[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for label, color in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" rx="2" fill="{color}" />')
        out.append(_text(x + 14, y, label, size=11, fill=MUTED))
        x += 22 + len(label) * 6.4
    return out


def _empty(width: int, message: str) -> str:
    return _svg(width, 70, [f'<rect x="0.5" y="0.5" width="{width - 1}" height="69" rx="6" fill="#f6f8fa" stroke="{GRID}" />',
                            _text(width / 2, 40, message, size=12, anchor="middle", fill=MUTED)], message)


def error_chart(data: list[Row], width: int = 600) -> str:
    """Horizontal bars on a log axis: max_abs and max_rel per target and output, limits as ticks."""
    series = []
    for r in data:
        for out, values in r.outputs.items():
            pair = {m: values.get(m) for m in ("max_abs", "max_rel") if isinstance(values.get(m), dict)}
            if pair:
                series.append((r, out, pair))
    if not series:
        return _empty(width, "No numeric checks in this lock")
    multi = any(len(r.outputs) > 1 for r, _, _ in series)
    label_w, pad_r, row_h, top = 150, 70, 34, 28
    height = top + row_h * len(series) + 26
    values = [item.get(k) for _, _, pair in series for item in pair.values() for k in ("observed", "allowed")]
    scale = Scale([v for v in values if isinstance(v, (int, float)) and v > 0] or [1e-6, 1], label_w, width - pad_r, log=True)
    has_limit = any(isinstance(i.get("allowed"), (int, float)) for _, _, pair in series for i in pair.values())
    body = _legend([("max abs error", ERROR_COLORS["max_abs"]), ("max relative error", ERROR_COLORS["max_rel"])]
                   + ([("limit", INK)] if has_limit else []), label_w, 14)
    body += _x_axis(scale, top - 4, top + row_h * len(series))
    for i, (r, out, pair) in enumerate(series):
        y = top + i * row_h
        name = f"{r.target} · {out}" if multi else r.target
        body.append(_text(label_w - 8, y + row_h / 2 + 4, _clip(name, label_w - 12), anchor="end",
                          fill=STATUS[r.status][1] if r.status in ("failed", "warn") else INK))
        for j, metric in enumerate(("max_abs", "max_rel")):
            item = pair.get(metric)
            if not item:
                continue
            by = y + 6 + j * 11
            obs = item.get("observed")
            color = ERROR_COLORS[metric]
            tip = f"{r.target} · {out} · {metric} {fmt_err(obs)} ({fmt_limit(metric, item)})"
            if isinstance(obs, (int, float)) and obs > 0:
                x = scale(obs)
                body.append(f'<rect x="{label_w}" y="{by:.1f}" width="{max(x - label_w, 1.5):.1f}" height="9" rx="2" '
                            f'fill="{color}" opacity="{0.9 if item.get("ok", True) else 1}"><title>{esc(tip)}</title></rect>')
                body.append(_text(x + 4, by + 8, fmt_err(obs), size=10, fill=MUTED))
            else:
                body.append(f'<circle cx="{label_w + 3}" cy="{by + 4.5:.1f}" r="3" fill="{color}"><title>{esc(tip)}</title></circle>')
                body.append(_text(label_w + 10, by + 8, "0 (exact)" if obs == 0 else "n/a", size=10, fill=MUTED))
            allowed = item.get("allowed")
            if isinstance(allowed, (int, float)) and allowed > 0:
                ax = scale(allowed)
                body.append(f'<line x1="{ax:.1f}" y1="{by - 2:.1f}" x2="{ax:.1f}" y2="{by + 11:.1f}" stroke="{INK}" '
                            f'stroke-width="2"><title>{esc(f"limit {metric} ≤ {fmt_err(allowed)}")}</title></line>')
            if item.get("ok") is False:
                body.append(_text(width - 4, by + 8, "MISS", size=10, anchor="end", fill=STATUS["failed"][1], weight="bold"))
    return _svg(width, height, body, "Numeric error per target and output")


def latency_chart(data: list[Row], width: int = 600) -> str:
    """Per target: the artifact's and PyTorch eager's p50 as bars, the p95 as a whisker, budgets as ticks."""
    benched = [r for r in data if r.bench]
    if not benched:
        return _empty(width, "No benchmarks in this lock (bench nodes not built)")
    label_w, pad_r, row_h, top = 150, 150, 34, 28  # values sit in a right-hand column: "p50 / p95"
    height = top + row_h * len(benched) + 26
    values: list[float] = []
    for r in benched:
        for key in ("artifact", "eager"):
            part = r.bench.get(key) or {}
            values += [v for v in (part.get("p50_ms"), part.get("p95_ms")) if isinstance(v, (int, float)) and v > 0]
        for item in (r.bench.get("budgets") or {}).values():
            if isinstance(item, dict) and isinstance(item.get("allowed"), (int, float)) and item["allowed"] > 0:
                values.append(item["allowed"])
    scale = Scale(values or [1.0], label_w, width - pad_r)
    has_budget = any(isinstance(i, dict) and i.get("allowed") for r in benched for i in (r.bench.get("budgets") or {}).values())
    body = _legend([("artifact p50", RUNTIME_COLORS["artifact"]), ("PyTorch eager p50", RUNTIME_COLORS["eager"]),
                    ("p95 whisker", INK)] + ([("budget", STATUS["failed"][1])] if has_budget else []), label_w, 14)
    body += _x_axis(scale, top - 4, top + row_h * len(benched), " ms")
    body.append(_text(width - 4, top - 8, "p50 / p95", size=10, anchor="end", fill=MUTED, weight="600"))
    for i, r in enumerate(benched):
        y = top + i * row_h
        body.append(_text(label_w - 8, y + row_h / 2 + 4, _clip(r.target, label_w - 12), anchor="end"))
        if r.bench.get("not_run"):
            body.append(_text(label_w + 6, y + row_h / 2 + 4, f"not run: {_clip(str(r.bench['not_run']), width - label_w - 60, 11)}",
                              size=11, fill=MUTED))
            continue
        for j, key in enumerate(("artifact", "eager")):
            part = r.bench.get(key) or {}
            by = y + 6 + j * 11
            p50, p95 = part.get("p50_ms"), part.get("p95_ms")
            if not isinstance(p50, (int, float)):
                if part.get("not_run"):
                    body.append(_text(label_w + 6, by + 8, f"eager not run: {_clip(str(part['not_run']), width - label_w - 120, 10)}",
                                      size=10, fill=MUTED))
                continue
            runtime = part.get("runtime", key)
            tip = f"{r.target} · {runtime}: p50 {fmt_ms(p50)}, p95 {fmt_ms(p95)}, {part.get('runs', '?')} runs"
            x = scale(p50)
            body.append(f'<rect x="{label_w}" y="{by:.1f}" width="{max(x - label_w, 1.5):.1f}" height="9" rx="2" '
                        f'fill="{RUNTIME_COLORS[key]}"><title>{esc(tip)}</title></rect>')
            if isinstance(p95, (int, float)) and p95 > p50:
                x95 = scale(p95)
                body.append(f'<line x1="{x:.1f}" y1="{by + 4.5:.1f}" x2="{x95:.1f}" y2="{by + 4.5:.1f}" stroke="{INK}" stroke-width="1.2" />')
                body.append(f'<line x1="{x95:.1f}" y1="{by + 1:.1f}" x2="{x95:.1f}" y2="{by + 8:.1f}" stroke="{INK}" stroke-width="1.2" />')
            body.append(_text(width - 4, by + 8.5, f"{fmt_ms(p50)} / {fmt_ms(p95)}", size=10, anchor="end",
                              fill=INK if key == "artifact" else MUTED))
        for name, item in (r.bench.get("budgets") or {}).items():
            allowed = item.get("allowed") if isinstance(item, dict) else None
            if isinstance(allowed, (int, float)) and allowed > 0:
                bx = scale(allowed)
                body.append(f'<line x1="{bx:.1f}" y1="{y + 3:.1f}" x2="{bx:.1f}" y2="{y + 17:.1f}" stroke="{STATUS["failed"][1]}" '
                            f'stroke-width="2" stroke-dasharray="3 2"><title>{esc(f"budget {name} ≤ {fmt_ms(allowed)}")}</title></line>')
    if scale.log:
        body.append(_text(width - 4, height - 4, "log scale", size=10, anchor="end", fill=MUTED))
    return _svg(width, height, body, "Latency per runtime")


def size_chart(data: list[Row], width: int = 1220) -> str:
    """Vertical bars of artifact size, grouped by model, coloured by precision."""
    sized = [r for r in data if r.size > 0]
    if not sized:
        return _empty(width, "No artifact files in this lock")
    groups: dict[str, list[Row]] = {}
    for r in sized:
        groups.setdefault(r.model, []).append(r)
    left, top, bottom_h, gap = 62, 30, 50, 36
    plot_h = 190
    height = top + plot_h + bottom_h
    slots = sum(len(g) for g in groups.values())
    slot = min(118.0, (width - left - 10 - gap * (len(groups) - 1)) / max(slots, 1))
    bar_w = min(56.0, slot * 0.62)
    hi = max(r.size for r in sized)
    unit, div = ("MB", 2**20) if hi >= 2**20 else ("KB", 1024.0) if hi >= 1024 else ("B", 1.0)
    scale = Scale([hi / div], top + plot_h, top, log=False)  # y: value -> pixel (inverted range)
    precisions = sorted({r.precision for r in sized}, key=lambda p: list(PRECISION_COLORS).index(p) if p in PRECISION_COLORS else 99)
    body = _legend([(p, PRECISION_COLORS.get(p, MUTED)) for p in precisions], left, 14)
    for t in scale.ticks():
        y = scale(t)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 6}" y2="{y:.1f}" stroke="{GRID}" />')
        body.append(_text(left - 6, y + 4, f"{t:g} {unit}", size=10, anchor="end", fill=MUTED))
    x = float(left) + 6
    for model, group in groups.items():
        gx0 = x
        for r in group:
            cx = x + slot / 2
            y = scale(r.size / div)
            color = PRECISION_COLORS.get(r.precision, MUTED)
            tip = f"{r.target}: {fmt_size(r.size)} ({r.format}, {r.precision})"
            body.append(f'<rect x="{cx - bar_w / 2:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(top + plot_h - y, 1):.1f}" '
                        f'rx="3" fill="{color}"><title>{esc(tip)}</title></rect>')
            body.append(_text(cx, y - 5, fmt_size(r.size), size=10, anchor="middle", fill=MUTED))
            short = r.target[len(model) + 1:] if r.target.startswith(model + "-") and len(r.target) > len(model) + 1 else r.target
            body.append(_text(cx, top + plot_h + 15, _clip(short, slot - 4, 11), size=11, anchor="middle"))
            x += slot
        body.append(f'<line x1="{gx0 + 4:.1f}" y1="{top + plot_h + 24:.1f}" x2="{x - 4:.1f}" y2="{top + plot_h + 24:.1f}" stroke="{AXIS}" />')
        body.append(_text((gx0 + x) / 2, top + plot_h + 40, _clip(model, x - gx0), size=12, anchor="middle", weight="600"))
        x += gap
    body.append(f'<line x1="{left}" y1="{top + plot_h:.1f}" x2="{width - 6}" y2="{top + plot_h:.1f}" stroke="{AXIS}" />')
    return _svg(width, height, body, "Artifact size per precision, by model")


# --- HTML ----------------------------------------------------------------------------------------

CSS = """
:root{--ink:#1f2328;--muted:#656d76;--line:#d0d7de;--soft:#f6f8fa;--accent:#0969da}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:#fff;color:var(--ink);
 font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI","Helvetica Neue","Liberation Sans",Arial,"DejaVu Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:24px;font-weight:650;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:16px;font-weight:650;margin:32px 0 12px}
.sub{color:var(--muted);margin:0 0 18px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:0 0 8px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:132px;background:#fff}
.card b{display:block;font-size:22px;font-weight:650;font-variant-numeric:tabular-nums;line-height:1.2}
.card span{color:var(--muted);font-size:12px}
.card.ok b{color:#1a7f37}.card.bad b{color:#cf222e}.card.warn b{color:#9a6700}
.table-wrap{overflow-x:auto;border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:8px 9px;text-align:left;vertical-align:top;border-bottom:1px solid #eaeef2;white-space:nowrap}
th{font-size:12px;font-weight:600;color:var(--muted);background:var(--soft);position:sticky;top:0}
tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right}
table.summary td:first-child{border-left:4px solid var(--status);padding-left:10px}
table.summary tbody tr:hover{background:#f6f8fa}
.t{font-weight:600}
.dim{color:var(--muted);font-size:12px}
.wrap{white-space:normal;max-width:220px}
.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono","DejaVu Sans Mono",monospace;font-size:12px}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;
 color:var(--fg);background:var(--bg);border:1px solid color-mix(in srgb,var(--fg) 25%,transparent)}
.chip{display:inline-block;padding:0 7px;border-radius:4px;font-size:12px;font-weight:600;color:#fff;background:var(--c)}
.miss{color:#cf222e;font-weight:600}
.ok{color:#1a7f37}
.lim{color:var(--muted);font-size:12px}
.lim.noisy{color:#9a6700}
.sizebar{display:block;height:4px;border-radius:2px;background:var(--c);opacity:.55;margin-top:4px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:16px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:14px 14px 8px;background:#fff;min-width:0}
figure.wide{grid-column:1 / -1}
figcaption{font-weight:600;margin:0 0 2px}
figcaption span{display:block;font-weight:400;color:var(--muted);font-size:12px;margin-bottom:6px}
svg.chart{display:block;max-width:100%;height:auto;font-family:inherit}
details{border:1px solid var(--line);border-radius:8px;margin:0 0 10px;background:#fff}
details>summary{cursor:pointer;padding:10px 14px;list-style:none;display:flex;gap:12px;align-items:center;border-left:4px solid var(--status);border-radius:8px}
details>summary::-webkit-details-marker{display:none}
details>summary::before{content:"▸";color:var(--muted);width:10px}
details[open]>summary::before{content:"▾"}
details[open]>summary{border-bottom:1px solid var(--line);border-radius:8px 8px 0 0}
.body{padding:12px 16px 16px;display:grid;grid-template-columns:1fr 1fr;gap:16px}
.body>div{min-width:0}
.body h3{font-size:13px;margin:0 0 6px}
.body h3.gap{margin-top:12px}
.body .full{grid-column:1 / -1}
.body table{border:1px solid #eaeef2;border-radius:6px}
.body td,.body th{padding:4px 8px;font-size:12.5px}
.note{color:#9a6700;font-size:12.5px;white-space:normal}
.kv{display:flex;flex-wrap:wrap;gap:6px}
.kv code{background:var(--soft);border:1px solid #eaeef2;border-radius:4px;padding:1px 6px}
footer{margin-top:36px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:12px}
@media (max-width:900px){.charts,.body{grid-template-columns:1fr}}
@media print{details{break-inside:avoid}th{position:static}}
"""


def _status_vars(status: str) -> str:
    _, fg, bg = STATUS[status]
    return f"--status:{fg};--fg:{fg};--bg:{bg}"


def _badge(status: str) -> str:
    label, fg, bg = STATUS[status]
    return f'<span class="badge" style="--fg:{fg};--bg:{bg}">{esc(label)}</span>'


def _chip(precision: str) -> str:
    return f'<span class="chip" style="--c:{PRECISION_COLORS.get(precision, MUTED)}">{esc(precision)}</span>'


def _cell_metric(item: dict[str, Any] | None, metric: str, extra: str = "") -> str:
    if not item:
        return '<td class="num dim">—</td>'
    value = esc(fmt_value(metric, item.get("observed")))
    cls = ' class="miss"' if item.get("ok") is False else ""
    limit = "" if item.get("allowed") is None else f'<div class="lim">{esc(fmt_limit(metric, item))}</div>'
    return f'<td class="num"><span{cls}>{value}</span>{extra}{limit}</td>'


def _summary_table(data: list[Row]) -> str:
    biggest = max((r.size for r in data), default=0) or 1
    head = ("<tr><th>Target</th><th>Status</th><th>Format</th><th>Precision</th><th class=num>Size</th>"
            "<th class=num>Accuracy</th><th class=num>Agreement</th><th class=num>Max rel. error</th>"
            "<th class=num>Cosine</th><th class=num>Latency p50</th><th class=num>vs eager</th></tr>")
    body = []
    for r in data:
        acc = r.metric("accuracy")
        delta = ""
        ref = r.reference_accuracy()
        if acc and isinstance(acc.get("observed"), (int, float)) and ref is not None:
            d = (acc["observed"] - ref) * 100
            delta = f' <span class="dim">({d:+.2f} pt)</span>'
        runtime = r.check.get("runtime") or r.bench.get("runtime") or ""
        art = r.bench.get("artifact") or {}
        if isinstance(art.get("p50_ms"), (int, float)):
            spread = art.get("spread")
            noisy = isinstance(spread, (int, float)) and spread > NOISY
            budgets = r.bench.get("budgets") or {}
            missed = {k.removesuffix("_ms") for k, b in budgets.items() if isinstance(b, dict) and b.get("ok") is False}
            p50 = f'<span class="miss">{esc(fmt_ms(art["p50_ms"]))}</span>' if "p50" in missed else esc(fmt_ms(art["p50_ms"]))
            p95 = f'p95 {esc(fmt_ms(art.get("p95_ms")))}'
            p95 = f'<span class="miss">{p95}</span>' if "p95" in missed else p95
            if noisy:
                tail = (f'<div class="lim noisy" title="p95 is {spread:.1f}× p50: a loaded host or an unstable runtime">'
                        f'{p95} ⚠</div>')
            else:
                tail = f'<div class="lim">{p95}</div>'
            lat = p50 + tail
            lat_cell = f'<td class="num">{lat}</td>'
        elif r.bench.get("not_run"):
            lat_cell = f'<td class="num dim" title="{esc(r.bench["not_run"])}">not run</td>'
        else:
            lat_cell = '<td class="num dim">—</td>'
        speed = r.bench.get("speedup_vs_eager")
        speed_cell = (f'<td class="num">{speed:.2f}×</td>' if isinstance(speed, (int, float))
                      else '<td class="num dim">—</td>')
        note = r.check.get("not_run") or ""
        body.append(
            f'<tr style="{_status_vars(r.status)}">'
            f'<td><div class="t">{esc(r.target)}</div><div class="dim">{esc(r.model)} · <span class="mono">{esc(r.path)}</span></div></td>'
            f'<td>{_badge(r.status)}' + (f'<div class="dim wrap" title="{esc(note)}">{esc(_clip(str(note), 150))}</div>' if note else "") + "</td>"
            f'<td>{esc(r.format)}<div class="dim">{esc(runtime)}</div></td>'
            f'<td>{_chip(r.precision)}</td>'
            f'<td class="num">{esc(fmt_size(r.size))}<span class="sizebar" style="--c:{PRECISION_COLORS.get(r.precision, MUTED)};'
            f'width:{max(4, round(100 * r.size / biggest))}%"></span></td>'
            + _cell_metric(acc, "accuracy", delta)
            + _cell_metric(r.metric("top1_agreement"), "top1_agreement")
            + _cell_metric(r.worst("max_rel"), "max_rel")
            + _cell_metric(_lowest(r, "cosine"), "cosine")
            + lat_cell + speed_cell + "</tr>")
    return f'<div class="table-wrap"><table class="summary"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>'


def _lowest(r: Row, name: str) -> dict[str, Any] | None:
    items = [v[name] for v in r.outputs.values() if isinstance(v.get(name), dict)
             and isinstance(v[name].get("observed"), (int, float))]
    return min(items, key=lambda i: i["observed"]) if items else None


def _metrics_table(r: Row) -> str:
    if r.check.get("not_run"):
        return f'<p class="note">Numeric check not run: {esc(r.check["not_run"])}</p>'
    if not r.outputs:
        return '<p class="dim">No numeric check recorded.</p>'
    rows_ = []
    for out, values in r.outputs.items():
        if values.get("problem"):
            rows_.append(f'<tr><td>{esc(out)}</td><td colspan=4 class="miss">{esc(values["problem"])}</td></tr>')
        for metric, item in values.items():
            if not (isinstance(item, dict) and "observed" in item):
                continue
            ok = item.get("ok")
            mark = '<span class="miss">MISS</span>' if ok is False else ('<span class="ok">ok</span>' if item.get("allowed") is not None else '<span class="dim">info</span>')
            rows_.append(f'<tr><td>{esc(out)}</td><td>{esc(metric)}</td><td class="num">{esc(fmt_value(metric, item.get("observed")))}</td>'
                         f'<td class="num lim">{esc(fmt_limit(metric, item))}</td><td>{mark}</td></tr>')
    samples = r.check.get("samples")
    caption = f'<div class="dim">{esc(samples)} samples in {esc(r.check.get("runtime", "?"))}</div>' if samples else ""
    fails = "".join(f'<div class="note">{esc(f)}</div>' for f in r.check.get("failures") or [])
    return ("<table><thead><tr><th>Output</th><th>Metric</th><th class=num>Observed</th><th class=num>Limit</th><th></th></tr></thead>"
            f"<tbody>{''.join(rows_)}</tbody></table>{caption}{fails}")


def _bench_table(r: Row) -> str:
    b = r.bench
    if not b:
        return '<p class="dim">Not benchmarked.</p>'
    if b.get("not_run"):
        return f'<p class="note">Benchmark not run: {esc(b["not_run"])}</p>'
    cols = [("Runtime", None), ("p50", "p50_ms"), ("p95", "p95_ms"), ("mean ± std", None), ("min", "min_ms"),
            ("samples/s", "throughput"), ("p95/p50", "spread"), ("runs", "runs"), ("load", "load_ms"), ("peak RSS", "peak_rss_mb")]
    head = "".join(f'<th{" class=num" if k or n == "mean ± std" else ""}>{esc(n)}</th>' for n, k in cols)
    body = []
    for key, label in (("artifact", "artifact"), ("eager", "PyTorch eager")):
        part = b.get(key)
        if not isinstance(part, dict):
            continue
        name = f"{label} ({part.get('runtime', '?')})"
        if part.get("not_run"):
            body.append(f'<tr><td>{esc(name)}</td><td colspan={len(cols) - 1} class="note">not run: {esc(part["not_run"])}</td></tr>')
            continue
        cells = [f"<td>{esc(name)}</td>"]
        for n, k in cols[1:]:
            if n == "mean ± std":
                cells.append(f'<td class="num">{esc(fmt_ms(part.get("mean_ms")))} ± {esc(fmt_ms(part.get("std_ms")))}</td>')
                continue
            v = part.get(k)
            text = (fmt_ms(v) if k.endswith("_ms") else f"{v:,.0f}" if k == "throughput" and isinstance(v, (int, float))
                    else f"{v:.2f}" if k == "spread" and isinstance(v, (int, float))
                    else f"{v:.1f} MB" if k == "peak_rss_mb" and isinstance(v, (int, float)) else "—" if v is None else str(v))
            cells.append(f'<td class="num">{esc(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    budgets = []
    for name, item in (b.get("budgets") or {}).items():
        if isinstance(item, dict):
            cls = "miss" if item.get("ok") is False else ""
            budgets.append(f'<div class="{cls}">budget {esc(name.removesuffix("_ms"))}: {esc(fmt_ms(item.get("observed")))} '
                           f'{"≤" if item.get("ok") else ">"} {esc(fmt_ms(item.get("allowed")))}</div>')
    h = b.get("host") or {}
    where = ", ".join(str(x) for x in (h.get("cpu"), f"{h.get('cpus')} CPUs" if h.get("cpus") else None, h.get("machine")) if x)
    load = f", load average {h['load_avg']}" if isinstance(h.get("load_avg"), (int, float)) else ""
    meta = (f'<div class="dim">batch {esc(b.get("batch_size", "?"))}, threads {esc(b.get("threads") or "default")}'
            + (f", on {esc(where)}" if where else "") + esc(load) + "</div>")
    return (f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{meta}{"".join(budgets)}')


def _kv(values: dict[str, Any]) -> str:
    if not values:
        return '<span class="dim">—</span>'
    return '<div class="kv">' + "".join(f"<code>{esc(k)}={esc(_short(v))}</code>" for k, v in values.items()) + "</div>"


def _short(value: Any) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def _details(r: Row) -> str:
    files = "".join(f'<tr><td class="mono">{esc(f[0])}</td><td class="num">{esc(fmt_size(f[2]) if isinstance(f[2], (int, float)) else f[2])}</td>'
                    f'<td class="mono dim" title="{esc(f[1])}">{esc(str(f[1])[:12])}</td></tr>' for f in r.files)
    files_table = (f'<table><thead><tr><th>File</th><th class=num>Size</th><th>Digest</th></tr></thead><tbody>{files}</tbody></table>'
                   if files else '<p class="dim">No files recorded.</p>')
    opened = " open" if r.status not in ("passed", "unverified") else ""  # what needs attention is unfolded
    return (f'<details style="{_status_vars(r.status)}"{opened}><summary>{_badge(r.status)}<span class="t">{esc(r.target)}</span>'
            f'<span class="dim">{esc(r.node)} · {esc(fmt_size(r.size))}</span></summary><div class="body">'
            f'<div><h3>Numeric check</h3>{_metrics_table(r)}</div>'
            f'<div><h3>Files in {esc(r.path or "?")}</h3>{files_table}'
            f'<h3 class="gap">Toolchain</h3>{_kv(r.toolchain)}<h3 class="gap">Step options</h3>{_kv(r.options)}</div>'
            f'<div class="full"><h3>Latency</h3>{_bench_table(r)}</div>'
            "</div></details>")


def _counts(data: list[Row]) -> dict[str, int]:
    counts = {k: 0 for k in STATUS}
    for r in data:
        counts[r.status] += 1
    return counts


def render(lock: dict[str, Any], title: str) -> tuple[str, str]:
    """The report of the build recorded in `lock` (deploy.lock as a dict): (HTML page, Markdown)."""
    data = rows(lock)
    return _html(data, title), _markdown(data, title)


def _html(data: list[Row], title: str) -> str:
    counts = _counts(data)
    models = sorted({r.model for r in data})
    total = sum(r.size for r in data)
    cards = [(len(data), "targets", ""), (counts["passed"], "passed", "ok")]
    bad = counts["failed"]
    if bad:
        cards.append((bad, "failed", "bad"))
    if counts["warn"] + counts["over"]:
        cards.append((counts["warn"] + counts["over"], "missed (warn) / over budget", "warn"))
    if counts["not run"] + counts["unverified"]:
        cards.append((counts["not run"] + counts["unverified"], "not run / not verified", ""))
    cards.append((fmt_size(total), "artifacts in all", ""))
    benched = sum(1 for r in data if r.bench and not r.bench.get("not_run"))
    cards_html = "".join(f'<div class="card {cls}"><b>{esc(v)}</b><span>{esc(label)}</span></div>' for v, label, cls in cards)
    sub = (f"{len(data)} target{'s' if len(data) != 1 else ''} of {len(models)} model{'s' if len(models) != 1 else ''} "
           f"({', '.join(models)}) · {benched} benchmarked · from deploy.lock")
    if not data:
        content = '<p class="dim">This lock records no targets: run <code>modelbuild build</code> first.</p>'
    else:
        content = (
            f"<h2>Targets</h2>{_summary_table(data)}"
            '<h2>Plots</h2><div class="charts">'
            f'<figure><figcaption>Numeric error vs the PyTorch reference<span>max |artifact − reference| and the same over '
            f'max |reference|, log scale; black ticks are the acceptance limits</span></figcaption>{error_chart(data)}</figure>'
            f'<figure><figcaption>Latency per call<span>p50 bar, p95 whisker; the artifact in its runtime vs the PyTorch '
            f'source in eager mode on the same inputs</span></figcaption>{latency_chart(data)}</figure>'
            f'<figure class="wide"><figcaption>Artifact size by model and precision<span>all files of each target\'s '
            f'artifact</span></figcaption>{size_chart(data)}</figure></div>'
            f"<h2>Details</h2>{''.join(_details(r) for r in data)}")
    hosts = sorted({_host_line(r.bench.get("host")) for r in data if r.bench.get("host")} - {""})
    foot = "Generated by modelbuild from deploy.lock." + (f" Latencies measured on {'; '.join(hosts)}." if hosts else "")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(sub)}</p><div class=\"cards\">{cards_html}</div>"
            f"{content}<footer>{esc(foot)}</footer></main></body></html>\n")


def _host_line(h: Any) -> str:
    if not isinstance(h, dict):
        return ""
    return ", ".join(str(x) for x in (h.get("cpu"), f"{h['cpus']} CPUs" if h.get("cpus") else None, h.get("system")) if x)


# --- Markdown ------------------------------------------------------------------------------------


def md(value: Any) -> str:
    """Text for a Markdown table cell: no HTML, no table breaks, no emphasis or links by accident."""
    text = " ".join(str(value).split())
    text = html.escape(text, quote=False)
    for ch in "\\`*_[]|#":
        text = text.replace(ch, "\\" + ch)
    return text


def _md_metric(item: dict[str, Any] | None, metric: str) -> str:
    if not item:
        return "—"
    text = fmt_value(metric, item.get("observed"))
    if item.get("allowed") is not None:
        text += f" ({fmt_limit(metric, item)})"
    return f"**{md(text)}** ✗" if item.get("ok") is False else md(text)


def _markdown(data: list[Row], title: str) -> str:
    counts = _counts(data)
    lines = [f"# {md(title)}", ""]
    parts = [f"{len(data)} targets", f"{counts['passed']} passed"]
    parts += [f"{n} {STATUS[k][0]}" for k, n in counts.items() if n and k != "passed"]
    lines += [md(", ".join(parts)) + f" · {md(fmt_size(sum(r.size for r in data)))} of artifacts", ""]
    if not data:
        return "\n".join(lines + ["This lock records no targets.", ""])
    lines += ["| | Target | Model | Format | Precision | Size | Accuracy | Top-1 agreement | Max rel. error | Latency p50 / p95 | vs eager | Status |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in data:
        art = r.bench.get("artifact") or {}
        lat = md(f"{fmt_ms(art['p50_ms'])} / {fmt_ms(art.get('p95_ms'))}" if isinstance(art.get("p50_ms"), (int, float))
                 else "not run" if r.bench.get("not_run") else "—")
        if any(isinstance(b, dict) and b.get("ok") is False for b in (r.bench.get("budgets") or {}).values()):
            lat = f"**{lat}** ✗"
        speed = r.bench.get("speedup_vs_eager")
        lines.append("| " + " | ".join([
            MD_STATUS[r.status], f"**{md(r.target)}**", md(r.model), md(r.format), md(r.precision), md(fmt_size(r.size)),
            _md_metric(r.metric("accuracy"), "accuracy"), _md_metric(r.metric("top1_agreement"), "top1_agreement"),
            _md_metric(r.worst("max_rel"), "max_rel"), lat, md(f"{speed:.2f}×") if isinstance(speed, (int, float)) else "—",
            md(STATUS[r.status][0])]) + " |")
    lines.append("")
    for r in data:
        lines += [f"## {MD_STATUS[r.status]} {md(r.target)}", "",
                  f"- artifact: `{r.node.replace('`', '')}` in `{r.path.replace('`', '')}`, {md(fmt_size(r.size))}"
                  f" ({md(', '.join(str(f[0]) for f in r.files))})"]
        if r.toolchain:
            lines.append("- toolchain: " + md(", ".join(f"{k} {v}" for k, v in r.toolchain.items())))
        if r.options:
            lines.append("- options: " + md(", ".join(f"{k}={_short(v)}" for k, v in r.options.items())))
        if r.check.get("not_run"):
            lines.append(f"- numeric check not run: {md(r.check['not_run'])}")
        if r.bench.get("not_run"):
            lines.append(f"- benchmark not run: {md(r.bench['not_run'])}")
        lines.append("")
        metric_rows = [(out, m, item) for out, values in r.outputs.items() for m, item in values.items()
                       if isinstance(item, dict) and "observed" in item]
        if metric_rows:
            lines += ["| Output | Metric | Observed | Limit | |", "|---|---|---:|---:|---|"]
            for out, m, item in metric_rows:
                ok = "✗" if item.get("ok") is False else "ok" if item.get("allowed") is not None else ""
                lines.append(f"| {md(out)} | {md(m)} | {md(fmt_value(m, item.get('observed')))} | {md(fmt_limit(m, item))} | {ok} |")
            lines.append("")
        bench_rows = [(k, r.bench[k]) for k in ("artifact", "eager") if isinstance(r.bench.get(k), dict)]
        if bench_rows:
            lines += ["| Runtime | p50 | p95 | mean | std | samples/s | runs | peak RSS |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for k, p in bench_rows:
                if p.get("not_run"):
                    lines.append(f"| {md(k)} ({md(p.get('runtime', '?'))}) | not run: {md(p['not_run'])} | | | | | | |")
                    continue
                tp = p.get("throughput")
                rss = p.get("peak_rss_mb")
                lines.append(f"| {md(k)} ({md(p.get('runtime', '?'))}) | {md(fmt_ms(p.get('p50_ms')))} | {md(fmt_ms(p.get('p95_ms')))} | "
                             f"{md(fmt_ms(p.get('mean_ms')))} | {md(fmt_ms(p.get('std_ms')))} | "
                             f"{md(f'{tp:,.0f}') if isinstance(tp, (int, float)) else '—'} | {md(p.get('runs', '—'))} | "
                             f"{md(f'{rss:.1f} MB') if isinstance(rss, (int, float)) else '—'} |")
            for name, item in (r.bench.get("budgets") or {}).items():
                if isinstance(item, dict):
                    lines.append(f"\nBudget {md(name)}: {md(fmt_ms(item.get('observed')))} {'≤' if item.get('ok') else '>'} "
                                 f"{md(fmt_ms(item.get('allowed')))}{'' if item.get('ok') else ' ✗'}")
            lines.append("")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m buildsys.report_html", description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path, help="deploy.lock to report on")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file to write")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown summary here")
    parser.add_argument("--title", default="", help="page title (default: 'Build report: <lock's directory>')")
    args = parser.parse_args(argv)
    from buildsys.lock import Lock

    lock = Lock.read(args.lock).as_dict()  # with the build record's observations merged in
    title = args.title or f"Build report: {args.lock.resolve().parent.name}"
    page, summary = render(lock, title)
    args.output.write_text(page, encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(summary, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
