"""Op coverage in the plan: a model's ATen ops against what each route's converter accepts, read from the
cache, and the candidate routes ordered so that one certain to fail is not tried first (docs/rewrites.md).

Torch-free: the op inventory (torch.export of the model) and the converters' tables (their own registries)
are made by `buildsys.planning.coverage_probe` in a subprocess and cached under the store (`<cache>/ops/`), the
inventory keyed by the model's code, weights, signature and toolchain, each table by its converter's
version. `plan` only reads them ("not analysed yet" until then); `plan --ops` and `build` make what is
missing first.

A step declares what it accepts (`Step.accepts_ops`: a table and which inventory it reads, the graph as
exported or after the core ATen decompositions). A route whose steps lack an op moves after the routes
that can work; when rewrites remove every op it lacks (and the target lets rewrites be added), the same
route with those rewrites takes its place first. A table that could not be read leaves its routes as
they were: coverage unknown is never coverage refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from buildsys.storage.hashing import digest_json

if TYPE_CHECKING:
    from buildsys.planning.plan import Plan, Planner
    from buildsys.running.results import Event

#: What a step's converter reads of the model (`Step.accepts_ops[1]`): the graph as torch.export traced it, after
#: the core ATen decompositions, as torch.jit.trace records it, or as exported with each op the table lacks
#: counted when its core decomposition is covered (an exporter that decomposes what it cannot translate).
READS = ("exported", "core", "traced", "decomposed")

#: model → {"table:reads" → the ops the model holds that the table lacks}: what expansion orders routes by.
Gaps = dict[str, dict[str, list[str]]]


@dataclass
class Coverage:
    """What the cache holds: each model's inventory (or why it is missing), each table (or why unknown)."""

    ops: dict[str, dict[str, Any]] = field(default_factory=dict)  # model → its inventory (coverage_probe.model_ops)
    not_analysed: dict[str, str] = field(default_factory=dict)  # model → why ("not analysed yet", an error)
    tables: dict[str, list[str]] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)  # table → why its registry could not be read

    def lacks(self, model: str, accepts: tuple[str, str]) -> list[str] | None:
        """The ops of `model` the table lacks (reading the inventory the step reads, `READS`); None when
        unknown (no inventory, no table, or a model that gave no inventory of that kind)."""
        table, reads = accepts
        inventory = self.ops.get(model, {})
        if table not in self.tables or (inventory.get("exported") if reads == "decomposed" else inventory.get(reads)) is None:
            return None
        have = set(self.tables[table])
        # An op counts with its functional `_copy` variant (`view` runs as `view_copy`, as ExecuTorch's edge
        # dialect rewrites it) and, in place, with its out-of-place op (the TorchScript exporter's first pass).
        has = lambda op: op in have or f"{op}_copy" in have or (op.endswith("_") and op[:-1] in have)  # noqa: E731
        if reads != "decomposed":
            return [op for op in inventory[reads] if not has(op)]
        # An op the table lacks still counts when every op of its decomposition does: the exporter decomposes it.
        parts: dict[str, list[str]] = inventory.get("decomposed", {})
        return [op for op in inventory["exported"] if not has(op) and not (op in parts and all(map(has, parts[op])))]

    def qat(self) -> dict[str, str]:
        """model → the QAT flow its graph showed ('pt2e', 'eager'; '' for none), for the analysed models and those
        whose analysis failed ('': nothing recognised, the calibration rule stands): buildsys.formats.torch.qat."""
        out = {model: str(entry.get("qat_flow") or "") for model, entry in self.ops.items()}
        return {**{m: "" for m, why in self.not_analysed.items() if not why.startswith("not analysed")}, **out}

    def gaps(self) -> Gaps:
        out: Gaps = {}
        for model in self.ops:
            for table in self.tables:
                for reads in READS:
                    lacking = self.lacks(model, (table, reads))
                    if lacking:
                        out.setdefault(model, {})[f"{table}:{reads}"] = lacking
        return out


def _dir(planner: "Planner") -> Path:
    return planner.store.dir / "ops"


def _model_key(planner: "Planner", model: str) -> str | None:
    from buildsys.storage import keys
    from buildsys.planning.coverage_probe import VERSION

    spec = planner.config.project.models[model]
    if spec.source.format != "pytorch":
        return None  # a TorchScript, .pt2 or ONNX file: no module to export here
    return digest_json([VERSION, planner.source_inputs(model), spec.model_dump(mode="json", include={"source", "inputs"}),
                        keys.toolchain(["torch", *planner.source_packages(model)])])


def _table_key(name: str) -> str:
    from buildsys.storage import keys
    from buildsys.planning.coverage_probe import TABLES, VERSION

    return digest_json([VERSION, name, keys.toolchain(list(TABLES[name][0]))])


def _project(planner: "Planner") -> tuple[list[str], list[str]]:
    """The project's models that are PyTorch factories, and every table a step declares."""
    from buildsys.formats import steps

    tables = sorted({t for s in steps().values() for t in s.accepts_any()}
                    | {s.delegates_ops[0] for s in steps().values() if s.delegates_ops})
    models = sorted({t.model for t in planner.config.project.targets.values()
                     if t.model in planner.config.project.models and _model_key(planner, t.model)})
    return models, tables


def read(planner: "Planner") -> Coverage:
    """What the cache holds for this project (no subprocess, no torch)."""
    cov = Coverage()
    models, tables = _project(planner)
    for model in models:
        entry = _load(_dir(planner) / f"model-{_model_key(planner, model)}.json")
        if entry is None:
            cov.not_analysed[model] = "not analysed yet (modelbuild plan --ops)"
        elif "error" in entry:
            cov.not_analysed[model] = f"torch.export failed: {entry['error']}"
        else:
            cov.ops[model] = entry
    for table in tables:
        entry = _load(_dir(planner) / f"table-{table}-{_table_key(table)}.json")
        if entry is not None:
            if "accepts" in entry:
                cov.tables[table] = entry["accepts"]
            else:
                cov.unknown[table] = entry.get("error", "unreadable")
    return cov


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def missing(plan: "Plan", stale_only: bool = True) -> tuple[list[str], list[str]]:
    """The models and tables the plan's targets would be ordered by and the cache lacks. With `stale_only`
    (what `build` asks): the models of targets with work whose candidate routes pass a step that declares
    `accepts_ops`; without (`plan --ops`): every target's model."""
    from buildsys.planning.kinds import CheckKind

    cov = plan.coverage or Coverage()
    models: set[str] = set()
    tables: set[str] = set()
    for target in plan.targets:
        check = plan.nodes.get(CheckKind.node_name(target))
        if stale_only and (check is None or check.fresh):
            continue
        needed = route_tables(plan.dag.candidates.get(target, []), plan.config.project.targets[target].options)
        model = plan.config.project.targets[target].model
        if (needed or not stale_only) and cov.not_analysed.get(model, "").startswith("not analysed"):
            models.add(model)
        tables |= {t for t in needed if t not in cov.tables and t not in cov.unknown}
    return sorted(models), sorted(tables)


def route_tables(routes: Sequence[Sequence[str]], options: Mapping[str, Any] | None = None) -> set[str]:
    """The tables the steps of `routes` read, given the target's options by format."""
    from buildsys.formats import steps
    from buildsys.planning.routes import format_graph, hop

    g = format_graph()
    out: set[str] = set()
    for route in routes:
        formats = [hop(s)[0] for s in route]
        for a, b in zip(formats, formats[1:]):
            step = steps()[g.edges[a, b]["step"]]
            accepts = _accepts(step, b, options)
            out |= ({accepts[0]} if accepts else set()) | ({step.delegates_ops[0]} if step.delegates_ops else set())
    return out


def _accepts(step: Any, fmt: str, options: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """What `step` (making `fmt`) reads under the target's options for that format."""
    given = (options or {}).get(fmt)
    return step.accepts(given if isinstance(given, Mapping) else None)


def enabled() -> bool:
    """Whether `build` analyses ops before it runs anything (MODELBUILD_OP_COVERAGE=0 turns it off)."""
    return os.environ.get("MODELBUILD_OP_COVERAGE", "1").lower() not in ("0", "off", "false", "no")


def analyse(planner: "Planner", models: Sequence[str], tables: Sequence[str], timeout: float = 600,
            on_event: Callable[[Event], None] | None = None) -> Coverage:
    """Make the inventories of `models` and the `tables` in a worker subprocess per model (the tables with the
    first), cache them, then read the cache back. A probe that crashes or times out leaves its entries
    missing: "not analysed yet", never a guess. `on_event` hears each probe start ("started") and end
    ("analysed", or "failed" with why), as node `ops:<model>` (or `ops:converters`) of kind "analysis"."""
    from buildsys.running.results import Event
    jobs: list[tuple[str | None, list[str]]] = [(m, list(tables) if i == 0 else []) for i, m in enumerate(models)] \
        or ([(None, list(tables))] if tables else [])
    out_dir = _dir(planner)
    out_dir.mkdir(parents=True, exist_ok=True)
    for model, wanted in jobs:
        name = f"ops:{model or 'converters'}"
        what = ([f"op coverage: the ops of model '{model}'"] if model else []) \
            + ([f"the op tables of {', '.join(wanted)}"] if wanted else [])
        if on_event:
            on_event(Event("started", name, "analysis", reasons=what))
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=planner.store.dir) as tmp:
            request, answer = Path(tmp) / "request.json", Path(tmp) / "answer.json"
            request.write_text(json.dumps({"deploy": str(planner.config.path), "model": model, "tables": wanted,
                                           "out": str(answer)}))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(planner.config.root),
                                                                           os.environ.get("PYTHONPATH", "")) if p)}
            try:
                subprocess.run([sys.executable, "-m", "buildsys.planning.coverage_probe", str(request)], cwd=planner.config.root,
                               env=env, capture_output=True, timeout=timeout, check=False)
                result = _load(answer) or {}
            except subprocess.TimeoutExpired:
                result = {}
            if on_event:
                lacking = (model and "ops" not in result) or any(t not in result.get("tables", {}) for t in wanted)
                on_event(Event("failed" if lacking else "analysed", name, "analysis",
                               seconds=round(time.monotonic() - started, 3),
                               error="not analysed (the probe crashed or timed out): routes keep their order"
                               if lacking else ""))
            if model and "ops" in result:
                _write(out_dir / f"model-{_model_key(planner, model)}.json", result["ops"])
            for table, entry in result.get("tables", {}).items():
                _write(out_dir / f"table-{table}-{_table_key(table)}.json", entry)
    return read(planner)


def _write(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    tmp.replace(path)


def order_routes(routes: list[list[str]], model: str, gaps: Gaps, options: Mapping[str, Any],
                 auto_rewrites: bool) -> list[list[str]]:
    """`routes` with those whose converters lack an op moved after the ones that can work; where rewrites
    remove every op a route lacks (and `auto_rewrites`), that route with them first, in its place."""
    from buildsys.planning.answers import with_rewrites

    good: list[list[str]] = []
    bad: list[list[str]] = []
    for route in routes:
        lacking = route_gaps(route, gaps.get(model, {}), options)
        if not lacking:
            good.append(route)
            continue
        names = _rewrites_for(lacking)
        rewritten = with_rewrites(route, names, options) if auto_rewrites and names is not None else None
        if rewritten is not None and route_gaps(rewritten, gaps.get(model, {}), options) == []:
            good.append(rewritten)
        bad.append(route)
    out = [r for i, r in enumerate(good) if r not in good[:i]]
    return out + [r for r in bad if r not in out]


def route_gaps(route: Sequence[str], gaps: Mapping[str, list[str]], options: Mapping[str, Any] | None = None) -> list[str]:
    """The ops the route's converters lack (per the tables, under the target's `options` by format), less
    those the route's rewrites remove."""
    from buildsys.formats import steps
    from buildsys.rewrites import REGISTRY
    from buildsys.rewrites.base import op_base
    from buildsys.planning.routes import format_graph, hop, label_parts

    g = format_graph()
    stops = [hop(s) for s in route]
    removed = {op_base(op) for _, label in stops for n in label_parts(label)[1] if n in REGISTRY
               for op in REGISTRY[n].removes}
    out: list[str] = []
    for (a, _), (b, _) in zip(stops, stops[1:]):
        accepts = _accepts(steps()[g.edges[a, b]["step"]], b, options)
        if accepts:
            out += [op for op in gaps.get(f"{accepts[0]}:{accepts[1]}", []) if op not in removed and op not in out]
    return out


def _rewrites_for(ops: Sequence[str]) -> list[str] | None:
    """One rewrite per op (the first that removes it), or None when an op has none."""
    from buildsys.rewrites import removing

    names: list[str] = []
    for op in ops:
        found = removing(op)
        if not found:
            return None
        names += [found[0].name] if found[0].name not in names else []
    return names


def describe(plan: "Plan") -> dict[str, Any]:
    """What `plan` shows of coverage: each model's ops (or why not analysed) and, per target, each step on its
    candidate routes: the ops its table lacks and the rewrites that remove them, or why it is unknown."""
    from buildsys.planning.coverage_probe import TABLES
    from buildsys.formats import steps
    from buildsys.rewrites import removing
    from buildsys.planning.routes import format_graph, hop

    cov = plan.coverage or Coverage()
    g = format_graph()
    models: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for target in plan.targets:
        model = plan.config.project.targets[target].model
        if model not in cov.ops and model not in cov.not_analysed:
            continue  # not a PyTorch factory: nothing to export
        models[model] = {"ops": cov.ops[model]["exported"], "core": cov.ops[model]["core"]} if model in cov.ops \
            else {"not_analysed": cov.not_analysed[model]}
        if model in cov.ops and cov.ops[model].get("traced") is not None:  # as the TorchScript ONNX exporter sees it
            models[model]["traced"] = cov.ops[model]["traced"]
        if cov.ops.get(model, {}).get("qat"):  # recognised from the graph by the probe (buildsys.formats.torch.qat)
            models[model]["qat"] = cov.ops[model]["qat"]
        found: dict[str, Any] = {}
        for route in plan.dag.candidates.get(target, []):
            formats = [hop(s)[0] for s in route]
            for a, b in zip(formats, formats[1:]):
                step = steps()[g.edges[a, b]["step"]]
                accepts = _accepts(step, b, plan.config.project.targets[target].options)
                if step.name in found:
                    continue
                if not accepts:
                    found[step.name] = {"unknown": "no op registry is read for it"}
                    continue
                table = accepts[0]
                lacking = cov.lacks(model, accepts)
                if lacking is None:
                    why = cov.unknown.get(table) or ("not analysed yet" if model not in cov.ops or table not in
                                                     cov.tables else f"the model gave no '{accepts[1]}' inventory")
                    found[step.name] = {"table": table, "unknown": why}
                else:
                    found[step.name] = {"table": table, "registry": TABLES[table][2], "lacks": lacking,
                                        "rewrites": {op: [r.name for r in removing(op)][:1] for op in lacking}}
                portable = cov.lacks(model, step.delegates_ops) if step.delegates_ops else None
                if step.delegates_ops and portable is not None:  # information: which ops the backend may take
                    ops = cov.ops[model][step.delegates_ops[1]]
                    found[step.name]["delegates"] = {"table": step.delegates_ops[0], "portable": portable,
                                                     "delegated": [op for op in ops if op not in portable]}
        targets[target] = {"model": model, "steps": found, "route": plan.dag.routes.get(target)}
    return {"models": models, "targets": targets}


def lines(plan: "Plan") -> list[str]:
    """`describe` in words, a line per model and per target (for `plan`)."""
    data = describe(plan)
    out: list[str] = []
    for model, entry in data["models"].items():
        if entry.get("qat"):
            reach = "its ONNX and OpenVINO int8 targets" if "eager" in entry["qat"] else "its int8 targets"
            out.append(f"{model}: {entry['qat']}: {reach} are lowered with the learned quantization "
                       "parameters (no calibration) and checked against its fake-quant outputs")
        if "ops" in entry:
            out.append(f"{model}: {len(entry['ops'])} ATen ops (torch.export): {', '.join(entry['ops'])}")
        else:
            out.append(f"{model}: ops {entry['not_analysed']}")
    clear: list[str] = []
    unknown: set[str] = set()
    for target, entry in data["targets"].items():
        if "ops" not in data["models"][entry["model"]]:
            continue  # the model line says why
        gaps = []
        for step, s in entry["steps"].items():
            if s.get("lacks"):
                ops = [f"{op} (rewrite {s['rewrites'][op][0]})" if s["rewrites"][op] else f"{op} (no rewrite yet: "
                       "blocks this route)" for op in s["lacks"]]
                gaps.append(f"{step} lacks {', '.join(ops)}")
            elif "lacks" not in s:
                unknown.add(step if s["unknown"] == "no op registry is read for it" else f"{step} ({s['unknown']})")
        if gaps:  # only what changes the order is worth a line of its own
            out.append(f"{target}: {'; '.join(gaps)}; first route {' → '.join(entry['route'] or [])}")
        else:
            clear.append(target)
        for step, s in entry["steps"].items():
            if s.get("delegates", {}).get("portable"):
                out.append(f"{target}: {step}: XNNPACK has no partitioner config for "
                           f"{', '.join(s['delegates']['portable'])} (the runtime's portable kernels run them)")
    if clear:
        who = ", ".join(clear) if len(clear) <= 4 else f"{'every' if len(clear) == len(data['targets']) else 'the other'} " \
            f"{len(clear)} target(s)"
        out.append(f"{who}: no converter whose op table is read lacks an op")
    if unknown:
        out.append(f"no op table is read for {', '.join(sorted(unknown))} (their refusals still find rewrites)")
    return out
