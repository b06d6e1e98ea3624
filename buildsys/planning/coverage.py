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
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from buildsys.formats.registry import op_tables
from buildsys.planning.coverage_probe import VERSION
from buildsys.planning.ordering import route_tables
from buildsys.records import Event
from buildsys.rewrites.base import op_base
from buildsys.storage import keys
from buildsys.storage.hashing import digest_json

if TYPE_CHECKING:
    from buildsys.planning.planner import Planner
    from buildsys.planning.routes import Route
    from buildsys.records import Event

#: What a step's converter reads of the model (`Step.accepts_ops[1]`): the graph as torch.export traced it, after
#: the core ATen decompositions, as torch.jit.trace records it, or as exported with each op the table lacks
#: counted when its core decomposition is covered (an exporter that decomposes what it cannot translate).
READS = ("exported", "core", "traced", "decomposed")

#: model → {"table:reads" → the ops the model holds that the table lacks}: what expansion orders routes by.
Gaps = dict[str, dict[str, list[str]]]


#: Ops torch.export records to check its own assumptions (a dtype, a shape, a value's range) and debugging prints:
#: they compute nothing and survive the core decompositions, and every converter drops them (ExecuTorch's edge
#: passes, the ONNX exporter's torchlib, litert-torch), so no op table lists them and none blocks a route.
ASSERTIONS = frozenset({
    "_assert_async", "_assert_scalar", "_assert_tensor_metadata", "_functional_assert_async",
    "_functional_sym_constrain_range", "_functional_sym_constrain_range_for_size", "_print",
    "sym_constrain_range", "sym_constrain_range_for_size",
})

#: The op table of what PyTorch's decomposition tables lower (formats/torch/op_table.py): information, no converter.
DECOMPOSABLE = "decomposable"
#: The model's ops that some step unrolls (`Step.unrolls`): routes through such a step go after the others.
UNROLLED = "unrolled"
#: torch.export's refusal of the model's dynamic axes (a constraint its code specialises), as the probe recorded it:
#: routes that export it get the static export first where the formats after it have fixed shapes anyway.
DYNAMIC_REFUSED = "dynamic-refused"


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
        has = lambda op: (op in have or op in ASSERTIONS or f"{op}_copy" in have  # noqa: E731
                          or (op.endswith("_") and op[:-1] in have))
        if reads != "decomposed":  # the core graph's ops also by rank, where a kernel runs only some
            return [op for op in inventory[reads] if not has(op)] + \
                (self._outside_ranks(model, table) if reads == "core" else [])
        # An op the table lacks still counts when every op of its decomposition does: the exporter decomposes it.
        parts: dict[str, list[str]] = inventory.get("decomposed", {})
        return [op for op in inventory["exported"] if not has(op) and not (op in parts and all(map(has, parts[op])))]

    def _outside_ranks(self, model: str, table: str) -> list[str]:
        """The ops `model` calls at a rank the table's kernel for them does not run (`OpTable.ranks`), each by the
        name the model calls it at that rank (`conv3d`): the core inventory names them by the op the kernel is for."""
        declared = op_tables().get(table)
        ranks: dict[str, list[int]] = self.ops.get(model, {}).get("ranks") or {}
        return [op_base(called) for op, runs, called in (declared.ranks if declared else ())
                if any(rank not in runs for rank in ranks.get(op, ()))]

    def qat(self) -> dict[str, str]:
        """model → the QAT flow its graph showed ('pt2e', 'eager'; '' for none), for the analysed models and those
        whose analysis failed ('': nothing recognised, the calibration rule stands): buildsys.formats.torch.qat."""
        out = {model: str(entry.get("qat_flow") or "") for model, entry in self.ops.items()}
        return {**{m: "" for m, why in self.not_analysed.items() if not why.startswith("not analysed")}, **out}

    def gaps(self) -> Gaps:
        """Per model, "table:reads" → the ops that table lacks, `DECOMPOSABLE` → the model's ops PyTorch's tables
        decompose (what a decomposition route can lower: planning.ordering), `UNROLLED` → its ops a step writes out,
        and `DYNAMIC_REFUSED` → torch.export's refusal of its dynamic axes."""
        out: Gaps = {}
        for model in self.ops:
            for table in (t for t in self.tables if t != DECOMPOSABLE):  # a converter's table, not PyTorch's
                for reads in READS:
                    lacking = self.lacks(model, (table, reads))
                    if lacking:
                        out.setdefault(model, {})[f"{table}:{reads}"] = lacking
            exported = self.ops[model].get("exported") or []
            if DECOMPOSABLE in self.tables and model in out:
                out[model][DECOMPOSABLE] = sorted(set(exported) & set(self.tables[DECOMPOSABLE]))
            unrolled = sorted(set(exported) & _unrolled_anywhere())
            if unrolled:  # a converter writes these out op by op where another keeps a fused kernel
                out.setdefault(model, {})[UNROLLED] = unrolled
            if self.ops[model].get("dynamic_refused"):
                out.setdefault(model, {})[DYNAMIC_REFUSED] = [str(self.ops[model]["dynamic_refused"])]
        return out


def _unrolled_anywhere() -> set[str]:
    from buildsys.formats import steps

    return {op for step in steps().values() for op in step.unrolls}


def _dir(planner: "Planner") -> Path:
    return planner.store.dir / "ops"


def _model_key(planner: "Planner", model: str) -> str | None:

    spec = planner.config.project.models[model]
    if spec.source.format != "pytorch":
        return None  # a TorchScript, .pt2 or ONNX file: no module to export here
    return digest_json([VERSION, planner.source_inputs(model), spec.model_dump(mode="json", include={"source", "inputs"}),
                        keys.toolchain(["torch", *planner.source_packages(model)])])


def _table_key(name: str) -> str:

    table = op_tables()[name]
    # a table at version 1 keeps the key it had before tables had versions
    return digest_json([VERSION, name, keys.toolchain(list(table.packages))] + ([table.version] if table.version > 1
                                                                                 else []))


def _project(planner: "Planner") -> tuple[list[str], list[str]]:
    """The project's models that are PyTorch factories, every table a step declares, and `decomposable` (what a
    refusal's decomposition answer can lower: Step.answers)."""
    from buildsys.formats import steps

    tables = sorted({t for s in steps().values() for t in s.accepts_any()}
                    | {s.delegates_ops[0] for s in steps().values() if s.delegates_ops} | {"decomposable"})
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


def missing(cov: Coverage, wanted: Sequence[tuple[str, Sequence["Route"], Mapping[str, Any]]],
            every_model: bool = False) -> tuple[list[str], list[str]]:
    """The models and tables the cache lacks for `wanted` targets (each as its model, candidate routes and options
    by format): a model is needed where its routes pass a step that declares `accepts_ops`, or, with
    `every_model` (`plan --ops`), always."""

    models: set[str] = set()
    tables: set[str] = set()
    for model, routes, options in wanted:
        needed = route_tables(routes, options)
        if (needed or every_model) and cov.not_analysed.get(model, "").startswith("not analysed"):
            models.add(model)
        tables |= {t for t in needed if t not in cov.tables and t not in cov.unknown}
    return sorted(models), sorted(tables)


def enabled() -> bool:
    """Whether `build` analyses ops before it runs anything (MODELBUILD_OP_COVERAGE=0 turns it off)."""
    return os.environ.get("MODELBUILD_OP_COVERAGE", "1").lower() not in ("0", "off", "false", "no")


def analyse(planner: "Planner", models: Sequence[str], tables: Sequence[str], timeout: float = 600,
            on_event: Callable[[Event], None] | None = None, jobs: int = 1) -> Coverage:
    """Make the inventories of `models` and the `tables` in a worker subprocess per model (the tables with the
    first), up to `jobs` at once (a build's `-j`: each probe is one torch.export in its own process), cache them,
    then read the cache back. A probe that crashes or times out leaves its entries missing: "not analysed yet",
    never a guess. `on_event` hears each probe start ("started") and end ("analysed", or "failed" with why), as
    node `ops:<model>` (or `ops:converters`) of kind "analysis"."""
    from concurrent.futures import ThreadPoolExecutor

    probes: list[tuple[str | None, list[str]]] = [(m, list(tables) if i == 0 else []) for i, m in enumerate(models)] \
        or ([(None, list(tables))] if tables else [])
    out_dir = _dir(planner)
    out_dir.mkdir(parents=True, exist_ok=True)
    heard = threading.Lock()  # one event at a time reaches the handler (the console's progress lines)

    def tell(event: Event) -> None:
        if on_event:
            with heard:
                on_event(event)

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(probes) or 1))) as pool:
        list(pool.map(lambda probe: _probe(planner, probe[0], probe[1], out_dir, timeout, tell), probes))
    return read(planner)


def _probe(planner: "Planner", model: str | None, wanted: list[str], out_dir: Path, timeout: float,
           tell: Callable[[Event], None]) -> None:
    """One probe subprocess: `model`'s inventory (if any) and the `wanted` tables, written to the cache."""
    from buildsys.running.watchdog import run_watched  # the process watch steps run under (no planning in it)

    name = f"ops:{model or 'converters'}"
    what = ([f"op coverage: the ops of model '{model}'"] if model else []) \
        + ([f"the op tables of {', '.join(wanted)}"] if wanted else [])
    tell(Event("started", name, "analysis", reasons=what))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=planner.store.dir) as tmp:
        request, answer = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        request.write_text(json.dumps({"deploy": str(planner.config.path), "model": model, "tables": wanted,
                                       "out": str(answer)}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(planner.config.root),
                                                                       os.environ.get("PYTHONPATH", "")) if p)}
        stopped = run_watched([sys.executable, "-m", "buildsys.planning.coverage_probe", str(request)],
                              planner.config.root, env, timeout)  # under the steps' memory ceiling too
        result = {} if stopped else (_load(answer) or {})
        lacking = (model and "ops" not in result) or any(t not in result.get("tables", {}) for t in wanted)
        tell(Event("failed" if lacking else "analysed", name, "analysis", seconds=round(time.monotonic() - started, 3),
                   error="not analysed (the probe crashed or timed out): routes keep their order" if lacking else ""))
        if model and "ops" in result:
            _write(out_dir / f"model-{_model_key(planner, model)}.json", result["ops"])
        for table, entry in result.get("tables", {}).items():
            _write(out_dir / f"table-{table}-{_table_key(table)}.json", entry)


def _write(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    tmp.replace(path)


