"""The per-model format comparison: every delivered format of one model side by side, from what each build
measured (the check's quick latency at batch 1 on the build host, the deliverable's bytes, accuracy), with
PyTorch eager's latency (the reference's) beside them; which format is fastest here and by how much. As a
table and a chart on the HTML page, as a table in the Markdown (markdown.py). The figures are the build host's:
desktop figures, labelled so."""

from __future__ import annotations

from dataclasses import dataclass

from buildsys.report.html.charts import Scale, _legend, _svg, _text, _x_axis
from buildsys.report.html.data import Row
from buildsys.report.html.formatting import clip_text, esc, fmt_ms, fmt_size
from buildsys.report.html.palette import INK, MUTED, PRECISION_COLORS, RUNTIME_COLORS


@dataclass(frozen=True)
class Compared:
    """One delivered target of a model, as the comparison shows it."""

    target: str
    format: str
    precision: str
    size: int
    best_ms: float | None  # the check's best call at batch 1 (min over its runs)
    p50_ms: float | None
    one_thread_ms: float | None  # the best call at one intra-op thread, where the runtime lets a session choose
    runtime: str
    accuracy: float | None


def by_model(data: list[Row]) -> dict[str, list[Compared]]:
    """The models with more than one delivered target, each target measured, fastest first (unmeasured last)."""
    groups: dict[str, list[Compared]] = {}
    for r in data:
        latency = r.check.get("latency") or {}
        accuracy = r.metric("accuracy")
        groups.setdefault(r.model, []).append(Compared(
            r.target, r.format, r.precision, r.size, _num(latency.get("min_ms")), _num(latency.get("p50_ms")),
            _num((latency.get("one_thread") or {}).get("min_ms")), str(latency.get("runtime") or ""), _num(accuracy.get("observed")) if accuracy else None))
    return {m: sorted(rows, key=lambda c: (c.best_ms is None, c.best_ms or 0.0))
            for m, rows in sorted(groups.items()) if len(rows) > 1}


def verdict(rows: list[Compared], eager_ms: float | None) -> str:
    """Which format is fastest on this host, by how much against the next and against PyTorch eager."""
    timed = [(c, c.best_ms) for c in rows if c.best_ms]
    if not timed:
        return "no latency measured (stand-ins, or a runtime this host lacks)"
    (best, best_ms), rest = timed[0], timed[1:]
    words = f"fastest here: {best.format} ({best.target}), {fmt_ms(best_ms)}"
    if rest:
        words += f", {rest[0][1] / best_ms:.2g}× the next ({rest[0][0].format})"
    if eager_ms:
        words += f", {eager_ms / best_ms:.2g}× PyTorch eager ({fmt_ms(eager_ms)})"
    return words


def eager_of(data: list[Row], one_thread: bool = False) -> dict[str, float]:
    """Each model's PyTorch eager best call at batch 1 (its reference's quick latency), or at one thread."""
    return {r.model: v for r in data if (v := (r.eager_one_thread_ms if one_thread else r.eager_ms))}


def html(data: list[Row]) -> str:
    """The section: per model, its verdict, a table of its formats and a chart of their latencies."""
    groups, eager, eager1 = by_model(data), eager_of(data), eager_of(data, one_thread=True)
    if not groups:
        return ""
    parts = ['<h2>Formats compared</h2><p class="dim">Per model, every delivered format at batch 1 on the build host '
             "(desktop figures: the check's best call, its median beside it, and the best call at one intra-op thread where the "
             "runtime lets a session choose), against PyTorch eager's.</p>"]
    for model, rows in groups.items():
        body = "".join(
            f"<tr><td>{esc(c.target)}</td><td>{esc(c.format)}</td><td>{esc(c.precision)}</td><td>{esc(fmt_size(c.size))}</td>"
            f"<td>{esc(fmt_ms(c.best_ms))}</td><td>{esc(fmt_ms(c.p50_ms))}</td>"
            f"<td>{esc(times(eager.get(model), c.best_ms))}</td><td>{esc(fmt_ms(c.one_thread_ms))}</td>"
            f"<td>{esc(times(eager1.get(model), c.one_thread_ms))}</td><td>{esc(c.runtime or '—')}</td>"
            f"<td>{esc(f'{c.accuracy:.2%}' if c.accuracy is not None else '—')}</td></tr>" for c in rows)
        parts.append(f"<h3>{esc(model)}</h3><p>{esc(verdict(rows, eager.get(model)))}</p>"
                     "<table><thead><tr><th>target</th><th>format</th><th>precision</th><th>size</th><th>best call</th>"
                     "<th>median</th><th>vs eager</th><th>1 thread</th><th>vs eager, 1 thread</th><th>runtime</th>"
                     "<th>accuracy</th></tr></thead>"
                     f"<tbody>{body}</tbody></table><figure>{chart(model, rows, eager.get(model))}</figure>")
    return "".join(parts)


def chart(model: str, rows: list[Compared], eager_ms: float | None, width: int = 600) -> str:
    """Horizontal bars of each format's best call, coloured by precision, PyTorch eager's as a grey bar."""
    bars = [(c.target, c.best_ms, PRECISION_COLORS.get(c.precision, MUTED)) for c in rows if c.best_ms]
    if eager_ms:
        bars.append(("PyTorch eager", eager_ms, RUNTIME_COLORS["eager"]))
    label_w, pad_r, row_h, top = 150, 80, 22, 28
    height = top + row_h * len(bars) + 26
    scale = Scale([v for _, v, _ in bars] or [1.0], label_w, width - pad_r)
    body = _legend([(p, PRECISION_COLORS.get(p, MUTED)) for p in sorted({c.precision for c in rows})], label_w, 14)
    body += _x_axis(scale, top - 4, top + row_h * len(bars), " ms")
    for i, (name, value, color) in enumerate(bars):
        y = top + i * row_h
        body.append(_text(label_w - 8, y + row_h / 2 + 4, clip_text(name, label_w - 12), anchor="end"))
        body.append(f'<rect x="{label_w}" y="{y + 5:.1f}" width="{max(scale(value) - label_w, 1.5):.1f}" height="12" rx="2" '
                    f'fill="{color}"><title>{esc(f"{name}: {fmt_ms(value)}")}</title></rect>')
        body.append(_text(width - 4, y + row_h / 2 + 4, fmt_ms(value), size=10, anchor="end", fill=INK))
    if scale.log:
        body.append(_text(width - 4, height - 4, "log scale", size=10, anchor="end", fill=MUTED))
    return _svg(width, height, body, f"Latency of each format of {model}")


def times(eager_ms: float | None, best_ms: float | None) -> str:
    return f"{eager_ms / best_ms:.2g}×" if eager_ms and best_ms else "—"


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
