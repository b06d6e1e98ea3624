"""Report rows as the Markdown twin of the HTML page: a summary table and per-target sections."""

from __future__ import annotations

import html
from typing import Any

from buildsys.planning.repair import trade_off
from buildsys.report.html import formats
from buildsys.report.html.data import Row, count_statuses
from buildsys.report.html.formatting import (
    fmt_limit,
    fmt_ms,
    fmt_size,
    fmt_value,
    short_text,
)
from buildsys.report.html.palette import STATUS

MD_STATUS = {"passed": "✅", "caveats": "☑️", "warn": "⚠️", "over": "⚠️", "failed": "❌", "not run": "⏺", "unverified": "⏺"}


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


def render_markdown(data: list[Row], title: str) -> str:
    """The Markdown summary for `data` under `title`."""
    counts = count_statuses(data)
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
            md(r.words or STATUS[r.status][0])]) + " |")
    lines.append("")
    lines += _formats_compared(data)
    for r in data:
        lines += [f"## {MD_STATUS[r.status]} {md(r.target)}", "",
                  f"- artifact: `{r.node.replace('`', '')}` in `{r.path.replace('`', '')}`, {md(fmt_size(r.size))}"
                  f" ({md(', '.join(str(f[0]) for f in r.files))})"]
        for caveat in r.caveats:
            lines.append("- caveat: " + md(caveat))
        if r.route:
            lines.append("- route: " + md(" → ".join(r.route)))
        if r.rewrites:
            lines.append("- op rewrites: " + md(", ".join(r.rewrites)))
        lines += ["- " + md(line) for line in [*r.repair, *([r.weights] if r.weights else []), *r.choice]]
        for d in r.dropped:
            lines.append(f"- dropped route {md(' → '.join(map(str, d['route'])))} at `{str(d.get('node', '?')).replace('`', '')}`: "
                         f"{md(d.get('reason', '') + trade_off(d))}")
        if r.toolchain:
            lines.append("- toolchain: " + md(", ".join(f"{k} {v}" for k, v in r.toolchain.items())))
        if r.options:
            lines.append("- options: " + md(", ".join(f"{k}={short_text(v)}" for k, v in r.options.items())))
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


def _formats_compared(data: list[Row]) -> list[str]:
    """Per model with several delivered formats, their build-host latency, size and accuracy side by side."""
    lines: list[str] = []
    eager, eager1 = formats.eager_of(data), formats.eager_of(data, one_thread=True)
    for model, rows in formats.by_model(data).items():
        lines += [f"## Formats compared: {md(model)}", "", md(formats.verdict(rows, eager.get(model))) + " (desktop figures, "
                  "batch 1, the check's best call)", "",
                  "| Target | Format | Precision | Size | Best call | Median | vs eager | 1 thread | vs eager, 1 thread "
                  "| Accuracy |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {md(c.target)} | {md(c.format)} | {md(c.precision)} | {md(fmt_size(c.size))} | {md(fmt_ms(c.best_ms))} | "
                  f"{md(fmt_ms(c.p50_ms))} | {md(formats.times(eager.get(model), c.best_ms))} | {md(fmt_ms(c.one_thread_ms))} | "
                  f"{md(formats.times(eager1.get(model), c.one_thread_ms))} | "
                  f"{md(f'{c.accuracy:.2%}') if c.accuracy is not None else '—'} |" for c in rows]
        lines.append("")
    return lines
