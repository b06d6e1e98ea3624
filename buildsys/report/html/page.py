"""Report rows as one self-contained HTML page: summary cards and table, plots, per-target details, CSS."""

from __future__ import annotations

from typing import Any

from buildsys.report.html import formats
from buildsys.report.html.charts import error_chart, latency_chart, size_chart
from buildsys.planning.repair import trade_off
from buildsys.report.html.data import Row, count_statuses
from buildsys.report.html.formatting import (
    clip_text,
    esc,
    fmt_limit,
    fmt_ms,
    fmt_size,
    fmt_value,
    short_text,
)
from buildsys.report.html.palette import MUTED, PRECISION_COLORS, STATUS

NOISY = 3.0  # p95 / p50 above this: the latency tail is flagged as noisy


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
        note = "; ".join([*([str(r.check["not_run"])] if r.check.get("not_run") else []), *r.caveats])
        body.append(
            f'<tr style="{_status_vars(r.status)}">'
            f'<td><div class="t">{esc(r.target)}</div><div class="dim">{esc(r.model)} · <span class="mono">{esc(r.path)}</span></div></td>'
            f'<td>{_badge(r.status)}' + (f'<div class="dim wrap" title="{esc(note)}">{esc(clip_text(str(note), 150))}</div>' if note else "") + "</td>"
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
    if (r.check.get("localisation") or {}).get("rows"):  # where the artifact left PyTorch, layer by layer
        from buildsys.localise.record import table_lines

        fails += f'<pre class="localisation">{esc(chr(10).join(table_lines(r.check["localisation"])))}</pre>'
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
            assert k is not None  # only 'Runtime' and 'mean ± std' have no key of their own, both handled above
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
    return '<div class="kv">' + "".join(f"<code>{esc(k)}={esc(short_text(v))}</code>" for k, v in values.items()) + "</div>"


def _route(r: Row) -> str:
    """The route that made the artifact and the routes dropped before it, with why."""
    if not r.route:
        return ""
    dropped = "".join(f'<li><span class="mono">{esc(" → ".join(map(str, d["route"])))}</span> dropped at '
                      f'<span class="mono">{esc(d.get("node", "?"))}</span>: {esc(d.get("reason", "") + trade_off(d))}</li>'
                      for d in r.dropped)
    rewrites = f'<p>op rewrites: <span class="mono">{esc(", ".join(r.rewrites))}</span></p>' if r.rewrites else ""
    rewrites += "".join(f"<p>{esc(line)}</p>" for line in [*r.repair, *([r.weights] if r.weights else []), *r.choice])
    return (f'<h3 class="gap">Route</h3><p class="mono">{esc(" → ".join(r.route))}</p>' + rewrites
            + (f'<ul class="dim">{dropped}</ul>' if dropped else ""))


def _caveats(r: Row) -> str:
    """What the check did not run, or ran on a lesser path, in full."""
    if not r.caveats:
        return ""
    return '<h3 class="gap">Caveats</h3><ul>' + "".join(f"<li>{esc(c)}</li>" for c in r.caveats) + "</ul>"


def _details(r: Row) -> str:
    files = "".join(f'<tr><td class="mono">{esc(f[0])}</td><td class="num">{esc(fmt_size(f[2]) if isinstance(f[2], (int, float)) else f[2])}</td>'
                    f'<td class="mono dim" title="{esc(f[1])}">{esc(str(f[1])[:12])}</td></tr>' for f in r.files)
    files_table = (f'<table><thead><tr><th>File</th><th class=num>Size</th><th>Digest</th></tr></thead><tbody>{files}</tbody></table>'
                   if files else '<p class="dim">No files recorded.</p>')
    opened = " open" if r.status not in ("passed", "unverified") else ""  # what needs attention is unfolded
    return (f'<details style="{_status_vars(r.status)}"{opened}><summary>{_badge(r.status)}<span class="t">{esc(r.target)}</span>'
            f'<span class="dim">{esc(r.node)} · {esc(fmt_size(r.size))}</span></summary><div class="body">'
            f'<div><h3>Numeric check</h3>{_metrics_table(r)}{_caveats(r)}</div>'
            f'<div><h3>Files in {esc(r.path or "?")}</h3>{files_table}'
            f'{_route(r)}<h3 class="gap">Toolchain</h3>{_kv(r.toolchain)}<h3 class="gap">Step options</h3>{_kv(r.options)}</div>'
            f'<div class="full"><h3>Latency</h3>{_bench_table(r)}</div>'
            "</div></details>")


def render_html(data: list[Row], title: str) -> str:
    """The whole page for `data` under `title`: one HTML document, no external assets."""
    counts = count_statuses(data)
    models = sorted({r.model for r in data})
    total = sum(r.size for r in data)
    cards: list[tuple[int | str, str, str]] = [(len(data), "targets", ""), (counts["passed"], "passed", "ok")]
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
            f"{formats.html(data)}<h2>Details</h2>{''.join(_details(r) for r in data)}")
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
