"""Report rows drawn as inline SVG: numeric error, latency per runtime, size per precision by model."""

from __future__ import annotations

import math
from typing import Iterable

from buildsys.report.html.data import Row
from buildsys.report.html.formatting import (
    clip_text,
    esc,
    fmt_err,
    fmt_limit,
    fmt_ms,
    fmt_size,
)
from buildsys.report.html.palette import (
    AXIS,
    ERROR_COLORS,
    GRID,
    INK,
    MUTED,
    PRECISION_COLORS,
    RUNTIME_COLORS,
    STATUS,
)


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
            pair = {m: values[m] for m in ("max_abs", "max_rel") if isinstance(values.get(m), dict)}
            if pair:
                series.append((r, out, pair))
    if not series:
        return _empty(width, "No numeric checks in this lock")
    multi = any(len(r.outputs) > 1 for r, _, _ in series)
    label_w, pad_r, row_h, top = 150, 70, 34, 28
    height = top + row_h * len(series) + 26
    numbers = [item.get(k) for _, _, pair in series for item in pair.values() for k in ("observed", "allowed")]
    scale = Scale([v for v in numbers if isinstance(v, (int, float)) and v > 0] or [1e-6, 1], label_w, width - pad_r, log=True)
    has_limit = any(isinstance(i.get("allowed"), (int, float)) for _, _, pair in series for i in pair.values())
    body = _legend([("max abs error", ERROR_COLORS["max_abs"]), ("max relative error", ERROR_COLORS["max_rel"])]
                   + ([("limit", INK)] if has_limit else []), label_w, 14)
    body += _x_axis(scale, top - 4, top + row_h * len(series))
    for i, (r, out, pair) in enumerate(series):
        y = top + i * row_h
        name = f"{r.target} · {out}" if multi else r.target
        body.append(_text(label_w - 8, y + row_h / 2 + 4, clip_text(name, label_w - 12), anchor="end",
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
        body.append(_text(label_w - 8, y + row_h / 2 + 4, clip_text(r.target, label_w - 12), anchor="end"))
        if r.bench.get("not_run"):
            body.append(_text(label_w + 6, y + row_h / 2 + 4, f"not run: {clip_text(str(r.bench['not_run']), width - label_w - 60, 11)}",
                              size=11, fill=MUTED))
            continue
        for j, key in enumerate(("artifact", "eager")):
            part = r.bench.get(key) or {}
            by = y + 6 + j * 11
            p50, p95 = part.get("p50_ms"), part.get("p95_ms")
            if not isinstance(p50, (int, float)):
                if part.get("not_run"):
                    body.append(_text(label_w + 6, by + 8, f"eager not run: {clip_text(str(part['not_run']), width - label_w - 120, 10)}",
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
            body.append(_text(cx, top + plot_h + 15, clip_text(short, slot - 4, 11), size=11, anchor="middle"))
            x += slot
        body.append(f'<line x1="{gx0 + 4:.1f}" y1="{top + plot_h + 24:.1f}" x2="{x - 4:.1f}" y2="{top + plot_h + 24:.1f}" stroke="{AXIS}" />')
        body.append(_text((gx0 + x) / 2, top + plot_h + 40, clip_text(model, x - gx0), size=12, anchor="middle", weight="600"))
        x += gap
    body.append(f'<line x1="{left}" y1="{top + plot_h:.1f}" x2="{width - 6}" y2="{top + plot_h:.1f}" stroke="{AXIS}" />')
    return _svg(width, height, body, "Artifact size per precision, by model")
