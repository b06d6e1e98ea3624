"""Console and JSON output: plans, build progress, check tables and the target summary.

rich is imported only when something is printed for a person; `--json` output needs only json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from buildsys.formats.precision import BYTES_PER_WEIGHT
from buildsys.records import BuildResult
from buildsys.planning.plan import Plan
from buildsys.report.html import fmt_size as _size
from buildsys.planning.kinds import BenchKind, CheckKind, ReferenceKind
from buildsys.status import Action, Caveat, CaveatKind, State, Verdict, target_status


def console(stderr: bool = False) -> Any:
    import shutil
    import sys

    from rich.console import Console

    # Logs (CI, pipes) get wide tables instead of rich's 80-column default.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    plain = bool(os.environ.get("NO_COLOR"))  # no-color.org: rich drops colours itself; drop bold and dim too
    # emoji=False: rich would turn ":phone:" in "verify:phone" into a telephone
    return Console(stderr=stderr, highlight=False, emoji=False, soft_wrap=True, width=width, no_color=plain or None,
                   color_system=None if plain else "auto")



def describe_coverage(plan: Plan) -> dict[str, Any]:
    from buildsys.report.ops import describe

    return describe(plan)


def coverage_lines(plan: Plan) -> list[str]:
    from buildsys.report.ops import lines

    return lines(plan)

def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as data: one entry per node with its state, action and reasons (for scripts and CI)."""
    nodes = []
    for p in plan.order():
        nodes.append({
            "node": p.node.name, "kind": p.node.kind, "model": p.node.model, "format": p.node.format,
            "step": p.node.step, "deps": p.node.deps, "targets": p.node.targets or ([p.node.target] if p.node.target else []),
            "state": p.state.value, "action": p.action.value,
            "reasons": p.reasons, "key": p.key,
        })
    return {"config": str(plan.config.path), "targets": plan.targets,
            "routes": {t: r.words() for t, r in plan.dag.routes.items()},
            "candidate_routes": {t: [r.words() for r in rs] for t, rs in plan.dag.candidates.items()},
            "dropped_routes": plan.dropped, "nodes": nodes,
            "coverage": describe_coverage(plan),
            **{state.value: sum(1 for n in nodes if n["state"] == state.value)
               for state in (State.STALE, State.BLOCKED, State.FAILED)}}


# fresh: nothing to do; restore: copied back from the cache; blocked/failed: cannot be built here / failed already
_PLAN_COLORS = {"fresh": "bright_black", "restore": "cyan", "blocked": "red", "failed": "red"}


def print_plan(plan: Plan) -> None:
    """The plan for a person: one line per node with its state and reasons (no rich: plan stays fast)."""
    import click

    order = plan.order()
    width = max((len(p.node.name) for p in order), default=10)
    click.echo(f"{click.style('plan', bold=True)} {plan.config.path.name}: {len(plan.targets)} target(s), {len(order)} node(s)")
    for p in order:
        state, action = p.state, p.action
        label = state.value if state is not State.STALE else "cached" if action is Action.CACHED else \
            "remote" if action is Action.REMOTE else "restore" if action is Action.RESTORE else \
            "skip" if action is Action.SKIP else "stale"
        color = _PLAN_COLORS.get(label, "yellow")
        reasons = "; ".join(p.reasons)
        line = f"  {click.style(f'{label:<8}', fg=color)} {p.node.name:<{width}}  {click.style(reasons, dim=True) if reasons else ''}"
        click.echo(line.rstrip())
    for line in coverage_lines(plan):  # ops against each converter's registry (buildsys.planning.coverage)
        click.echo(f"  {click.style('ops', fg='cyan'):<8}    {line}")
    for target, records in plan.dropped.items():
        route = str(plan.dag.routes[target])
        for r in records:
            click.echo(f"  {click.style('route', fg='yellow'):<8}    {target}: {' → '.join(r['route'])} dropped at "
                       f"{r['node']} ({r['reason']}); " + ("no route left" if target in plan.dag.exhausted
                                                           else f"taking {route}"))
    work = plan.work
    blocked = sum(1 for p in work if p.action in (Action.FAIL, Action.SKIP))
    if blocked:
        click.echo(f"{blocked} node(s) cannot be built on this host or by any route (see why above); build fails them "
                   "without running them and builds the rest.")
    if len(work) > blocked:
        click.echo(f"{len(work) - blocked} of {len(order)} node(s) need work; run modelbuild build to make them.")
    elif not work:
        click.echo("Everything is fresh: nothing to do.")


def check_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str, bool]]:
    """(output, metric, observed, allowed, ok) rows from a check's metrics."""
    rows = []
    for output, values in (metrics.get("outputs") or {}).items():
        for metric, item in values.items():
            if isinstance(item, dict) and "observed" in item:
                allowed = item.get("allowed")
                rows.append((output, metric, _num(item["observed"]), "—" if allowed is None else f"{item.get('op', '')} {_num(allowed)}".strip(), bool(item.get("ok", True))))
    return rows


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def print_failures(result: BuildResult, out: Any, plan: Plan | None = None) -> None:
    from rich.table import Table

    for r in result.failed:
        affected = _targets_needing(plan, r.name) if plan and not plan.dag.nodes[r.name].target else []
        needed = f" [dim](target{'s' if len(affected) > 1 else ''} {', '.join(affected)})[/]" if affected else ""
        out.print(f"\n[bold red]✗ {r.name}[/]{needed}: {r.error}")
        for line in r.metrics.get("failures", []):
            out.print(f"  [red]{line}[/]", markup=True, highlight=False)
        for line in failure_details(r.metrics):  # where a stopped step was, where refused ops are called
            out.print(f"  {line}", markup=False, highlight=False)
        rows = check_rows(r.metrics)
        if rows:
            table = Table("output", "metric", "observed", "allowed", "", box=None, padding=(0, 2))
            for output, metric, observed, allowed, ok in rows:
                table.add_row(output, metric, observed, allowed, "[green]ok[/]" if ok else "[bold red]MISS[/]")
            out.print(table)
            if r.metrics.get("localisation", {}).get("rows"):
                from buildsys.localise.record import table_lines

                out.print("\n".join("    " + line for line in table_lines(r.metrics["localisation"])),
                          markup=False, highlight=False)
        elif r.log and Path(r.log).exists() and not r.metrics.get("failures"):
            if not r.user_error and "stopped" not in r.metrics:  # a converter's own failure: its last words help
                tail = Path(r.log).read_text(errors="replace").strip().splitlines()[-8:]
                out.print("\n".join("    " + line for line in tail), markup=False, style="dim")
            out.print(f"  full log: {r.log}")


def failure_details(metrics: dict[str, Any]) -> list[str]:
    """The lines a failed node's metrics add under its error: a step its budget stopped (running/watchdog.py),
    the sites of ops a converter refused (localise/sites.py)."""
    from buildsys.localise.sites import refused_lines
    from buildsys.running.watchdog import stopped_lines

    return (stopped_lines(metrics["stopped"]) if metrics.get("stopped") else []) + refused_lines(metrics.get("refused") or [])


def _targets_needing(plan: Plan, name: str) -> list[str]:
    """The requested targets whose check depends on node `name`."""
    dependents, todo = set(), [name]
    while todo:
        for consumer in plan.dag.consumers.get(todo.pop(), []):
            if consumer not in dependents:
                dependents.add(consumer)
                todo.append(consumer)
    node = plan.dag.nodes[name]
    own = [node.target] if node.target else []
    return sorted({plan.dag.nodes[d].target for d in dependents if plan.dag.nodes[d].target} | set(own))


def target_rows(plan: Plan, lock_nodes: dict[str, Any], lock_targets: dict[str, Any],
                source_sizes: dict[str, int], lock_routes: dict[str, Any] | None = None,
                undelivered: Mapping[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One summary row per requested target: size (and ratio to the fp32 source weights), check
    status and what users feel: accuracy, top-1 agreement, largest error; the choice `prefer:` made.
    `undelivered` maps the targets this build did not deliver (their check failed or never ran) to what their
    check measured in it ({} when it never ran): the lock's older record of them describes another model or other
    options than what was asked now, so it is not read."""
    rows, undelivered = [], undelivered or {}
    for target in plan.targets:
        node = plan.dag.nodes[plan.dag.target_nodes[target]]
        recorded = {} if target in undelivered else lock_targets.get(target, {})
        size = sum(f[2] for f in recorded.get("files", []))
        entry = {"metrics": undelivered[target]} if target in undelivered else \
            lock_nodes.get(CheckKind.node_name(target), {})
        check = entry.get("metrics", {})
        dropped: list[dict[str, Any]] = [{k: r[k] for k in ("route", "node", "reason", "observed") if k in r}
                   for r in plan.dropped.get(target, [])]
        route = plan.dag.routes[target].words() if target in plan.dag.routes else []
        status = target_status(entry, delivered=bool(recorded), route=route, dropped=dropped)
        reference = lock_nodes.get(ReferenceKind.node_name(node.model), {}).get("metrics") or {}
        parameters = reference.get("parameters")  # the model's weights, each tensor once (nodes/reference.py)
        fp32 = parameters * BYTES_PER_WEIGHT["fp32"] if parameters else source_sizes.get(node.model)
        ideal = parameters * BYTES_PER_WEIGHT.get(node.precision, 4) if parameters else None
        # what the artifact stores as weights (every copy of one: an unrolled recurrence's), else the whole file
        stored = (check.get("quantized_weights") or {}).get("weight_bytes") or size
        row = {"target": target, "format": node.format, "path": recorded.get("path", ""), "size": size,
               "size_ratio": round(size / fp32, 3) if fp32 and size else None,
               "ideal_ratio": round(stored / ideal, 3) if ideal and stored else None,  # against its precision
               "precision": node.precision,
               "check": status.words, "verdict": status.verdict.value,
               "caveats": [c.as_dict() for c in status.caveats],
               "not_run": [f"numeric check not run: {check['not_run']}"] if check.get("not_run") else [],
               "route": route, "dropped": dropped, "rewrites": plan.dag.rewrites(node.name),
               "repair": ((lock_nodes.get(node.name) or {}).get("facts") or {}).get("repair"),
               "chosen": ((lock_routes or {}).get(target) or {}).get("chosen"),  # under `prefer:` (planning.prefer)
               "quantized_weights": check.get("quantized_weights"),  # the share in its precision, against its floor
               "latency": check.get("latency"),  # batch 1 in its runtime, beside PyTorch eager's (the reference's)
               "eager_latency": reference.get("latency")}
        # The worst output speaks for the target: largest error, lowest agreement, biggest accuracy loss.
        for values in (check.get("outputs") or {}).values():
            observed = {m: values[m]["observed"] for m in ("accuracy", "top1_agreement", "max_abs")
                        if isinstance(values.get(m), dict) and values[m].get("observed") is not None}
            if "max_abs" in observed:
                row["max_abs"] = max(row.get("max_abs", observed["max_abs"]), observed["max_abs"])
            if "top1_agreement" in observed:
                row["top1_agreement"] = min(row.get("top1_agreement", 1.0), observed["top1_agreement"])
            if "accuracy" in observed:
                drop = (values.get("reference_accuracy") or observed["accuracy"]) - observed["accuracy"]
                if drop >= row.get("_drop", -1.0):
                    row.update(_drop=drop, accuracy=observed["accuracy"],
                               reference_accuracy=values.get("reference_accuracy"))
        row.pop("_drop", None)
        rows.append(row)
    return rows


def print_summary(rows: list[dict[str, Any]], out: Any) -> None:
    from rich.table import Table

    from buildsys.planning.repair import describe, trade_off

    table = Table("target", "format", "size", "vs fp32", "weights", "latency", "check", "accuracy", "agreement",
                  "max abs err", box=None, padding=(0, 1), pad_edge=False)
    for row in rows:
        clean = row.get("verdict") == Verdict.PASSED and not any(c["kind"] != CaveatKind.FALLBACK for c in row["caveats"])
        style = "green" if clean else "yellow"
        acc = ""
        if "accuracy" in row:
            acc = f"{row['accuracy']:.2%}"
            if row.get("reference_accuracy") is not None:
                acc += f" ({row['accuracy'] - row['reference_accuracy']:+.2%})"
        table.add_row(row["target"], row["format"], _size(row["size"]) if row["size"] else "—",
                      f"{row['size_ratio']:.2f}×" if row.get("size_ratio") else "",
                      weights_cell(row.get("quantized_weights"), row.get("ideal_ratio"), row.get("precision")),
                      latency_cell(row.get("latency"), row.get("eager_latency")), f"[{style}]{row['check']}[/]", acc,
                      f"{row['top1_agreement']:.2%}" if "top1_agreement" in row else "",
                      _num(row["max_abs"]) if "max_abs" in row else "")
    out.print(table)
    for row in rows:
        for reason in row.get("not_run") or []:
            out.print(f"{row['target']}: {reason}", style="yellow", markup=False, highlight=False)
        for caveat in row.get("caveats") or []:  # every lesser path, in the words of the status column
            if caveat["kind"] != CaveatKind.FALLBACK:
                out.print(f"{row['target']}: {Caveat.from_dict(caveat)}", style="yellow", markup=False, highlight=False)
        if row.get("dropped") and row["path"]:
            out.print(f"{row['target']}: made by {' → '.join(row['route'])}", style="yellow", markup=False)
        chosen = row.get("chosen")
        if chosen and row["path"] and chosen["route"] == row["route"]:
            out.print(f"{row['target']}: prefer {chosen['prefer']}: {' → '.join(chosen['route'])} of "
                      f"{len(chosen['compared'])} route(s) compared; {chosen['gain']}", markup=False, highlight=False)
        if row.get("rewrites") and row["path"]:
            out.print(f"{row['target']}: carries op rewrites {', '.join(row['rewrites'])} (docs/rewrites.md)",
                      style="yellow", markup=False, highlight=False)
        if row.get("repair") and row["path"]:
            out.print(f"{row['target']}: {describe(row['repair'])[0]} (docs/repair.md)", style="yellow", markup=False,
                      highlight=False)
        for drop in row.get("dropped") or []:
            out.print(f"{row['target']}: route {' → '.join(drop['route'])} dropped at {drop['node']}: {drop['reason']}"
                      f"{trade_off(drop)}", style="yellow", markup=False, highlight=False)


def weights_cell(weights: dict[str, Any] | None, ideal_ratio: float | None = None, precision: str | None = None) -> str:
    """The share of all weights in the target's precision, as the summary's weights column shows it: '97% int8',
    '72% int8 1.8×' (the weights the artifact stores, every copy counted, against the model's own parameters at
    that precision, `ideal_ratio`; else the record's own ratio; shown from 1.3×), '100% int8, float act.' (int8
    weights, activations not int8: dynamic or weight-only schemes), red below its floor; '1.6× fp32' for a float
    target whose file is that much larger than its parameters (weights stored twice, a graph written out), ''
    otherwise."""
    ratio = ideal_ratio if ideal_ratio is not None else (weights or {}).get("size_ratio")
    if not weights or weights.get("observed") is None:
        return f"{ideal_ratio:.1f}× {precision}" if ideal_ratio and ideal_ratio >= 1.3 and precision else ""
    text = f"{weights['observed']:.0%} {weights.get('asked') or ''}".strip()
    if (ratio or 0) >= 1.3:
        text += f" {ratio:.1f}×"
    if weights.get("activations"):
        text += f", {weights['activations']} act."
    return text if weights.get("ok", True) else f"[red]{text}[/]"


def latency_cell(latency: dict[str, Any] | None, eager: dict[str, Any] | None) -> str:
    """The summary's latency column: the artifact's best batch-1 call in its runtime, timed by its check, and how it
    compares with PyTorch eager's, timed by the reference: '0.12 ms 3.1×' (3.1 times as fast as eager; under 1×,
    slower, in yellow); '' where the check did not time it (a stand-in's numbers, a generation model). The best
    call, not the median: both are timed beside the build's other nodes, whose load the median carries (timeit's
    advice); the record keeps both, and `modelbuild bench` times a target alone."""
    if not latency or latency.get("min_ms") is None:
        return ""
    text = f"{_num(latency['min_ms'])} ms"
    if eager and eager.get("min_ms") and latency["min_ms"]:
        ratio = eager["min_ms"] / latency["min_ms"]
        text += f" {ratio:.1f}×" if ratio >= 1 else f" [yellow]{ratio:.2f}×[/]"
    return text


def print_bench(lock_nodes: dict[str, Any], targets: list[str], out: Any) -> None:
    """Latency per target: the artifact in its runtime next to PyTorch eager on the same inputs."""
    from rich.table import Table

    table = Table("target", "runtime", "batch", "p50 ms", "p95 ms", "spread", "samples/s", "eager p50 ms", "speedup",
                  "budget", box=None, padding=(0, 1), pad_edge=False)
    for target in targets:
        m = lock_nodes.get(BenchKind.node_name(target), {}).get("metrics", {})
        if not m:
            continue
        art, eager = m.get("artifact", {}), m.get("eager", {})
        if m.get("not_run"):
            table.add_row(target, str(m.get("runtime")), "", "", "", "", "", "", "", f"[yellow]not run: {m['not_run']}[/]")
            continue
        if m.get("task") == "text-generation":  # generation: time to first token and decode rate, not per-call latency
            gen = (lambda part: f"TTFT {_num(part.get('ttft_ms'))} ms, {_num(part.get('decode_tokens_per_s'))} tok/s"
                   if part.get("ttft_ms") is not None else "—")
            table.add_row(target, str(m.get("runtime")), "1", gen(art), "", "", "", gen(eager),
                          f"{m['decode_speedup_vs_eager']:.2f}× decode" if m.get("decode_speedup_vs_eager") else "—", "—")
            continue
        budget = "—" if m.get("passed") is None else "[green]met[/]" if m["passed"] else "[red]missed[/]"
        table.add_row(target, str(m.get("runtime")), str(m.get("batch_size")), _num(art.get("p50_ms")),
                      _num(art.get("p95_ms")), _num(art.get("spread")), _num(art.get("throughput")),
                      _num(eager.get("p50_ms")) if eager.get("p50_ms") else "—",
                      f"{m['speedup_vs_eager']:.2f}×" if m.get("speedup_vs_eager") else "—", budget)
    out.print(table)
    out.print("[dim]Latencies are wall-clock on this host: compare rows of one run, not runs of different machines.[/]")


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
