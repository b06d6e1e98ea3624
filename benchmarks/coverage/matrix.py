"""The run loop both coverage matrices share: rows (models) × families (targets), built in chunks, resumable.

Rows are split into chunks of `chunk` models; each chunk is one generated project (its directory named by a
digest of its row keys, so the same selection finds its project, cache and lock again) built with one
`modelbuild build -k --json`. After each chunk the results JSON is saved, so a killed run loses at most one
chunk. A cell already in the results is not built again unless `fresh` is set.

The results hold, per row key: `cells` (family → projects.Cell as a dict) and `node_seconds` (node → [event,
seconds]), and a `builds` list with one entry per chunk build (targets, wall seconds, exit code).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.coverage import anchors, environment, projects

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    """One model of a matrix: its deploy.yaml mapping and what writes its files into a project."""

    key: str
    model: dict[str, Any]
    write_files: Callable[[Path], None]


@dataclass
class BuildSettings:
    """How each chunk is built."""

    jobs: int = 2
    step_timeout: float = 120.0
    worker_memory: str = "3G"
    wall_timeout: float = 4 * 3600.0
    extra_path: tuple[str, ...] = ()


def load(path: Path) -> dict[str, Any]:
    """The results JSON at `path`, or an empty one."""
    return json.loads(path.read_text()) if path.exists() else {}


def save(path: Path, results: dict[str, Any]) -> None:
    """Write the results JSON (sorted keys, one level of indentation) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(path)


def measured(cell: dict[str, Any] | None) -> bool:
    """Whether a cell holds a result (a build that ended before reporting its target is no measurement)."""
    return cell is not None and cell.get("status") != "no result"


def pending(rows: list[Row], families: dict[str, dict[str, Any]], results: dict[str, Any]) -> list[Row]:
    """The rows with at least one family not yet measured."""
    cells = results.get("cells", {})
    return [r for r in rows if any(not measured(cells.get(r.key, {}).get(f)) for f in families)]


def chunk_dir(work: Path, rows: list[Row]) -> Path:
    """The project directory of a chunk: named by its row keys, so a re-run finds it again."""
    digest = hashlib.sha1("\n".join(r.key for r in rows).encode()).hexdigest()[:10]
    return work / f"chunk-{digest}"


def build_rows(rows: list[Row], families: dict[str, dict[str, Any]], results: dict[str, Any], out: Path, *,
               work: Path, chunk: int, settings: BuildSettings, project_files: Callable[[Path], None],
               fresh: bool = False, log: Callable[[str], None] = print) -> None:
    """Build every pending cell of `rows` × `families` in chunks and record it in `results` (saved to `out`)."""
    cells = results.setdefault("cells", {})
    seconds = results.setdefault("node_seconds", {})
    builds = results.setdefault("builds", [])
    if fresh:  # the selected families' cells only (`--targets`); the row's node-seconds when it is rebuilt whole
        whole = set(families) >= {f for row in rows for f in cells.get(row.key, {})}
        for row in rows:
            for family in families:
                cells.get(row.key, {}).pop(family, None)
            if whole:
                seconds.pop(row.key, None)
    todo = pending(rows, families, results)
    log(f"{len(todo)} of {len(rows)} rows have cells to build, {chunk} per project")
    for start in range(0, len(todo), chunk):
        group = todo[start:start + chunk]
        root = chunk_dir(work, group)
        if fresh and root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        project_files(root)
        for row in group:
            row.write_files(root)
        targets = {f"{row.key}.{family}": {"model": row.key, **spec} for row in group
                   for family, spec in families.items() if not measured(cells.get(row.key, {}).get(family))}
        projects.write_deploy(root, {row.key: row.model for row in group}, targets)
        began, code = time.strftime("%Y-%m-%d %H:%M:%S"), environment.code_version()
        outcome = projects.run_build(root, sorted(targets), jobs=settings.jobs, step_timeout=settings.step_timeout,
                                     worker_memory=settings.worker_memory, wall_timeout=settings.wall_timeout,
                                     extra_path=settings.extra_path)
        rows_of = {t: spec["model"] for t, spec in targets.items()}
        verified = 0
        for target, model in rows_of.items():
            family = target[len(model) + 1:]
            cell = projects.cell_of(outcome.summary.get("targets", {}).get(target), outcome, target, model)
            cells.setdefault(model, {})[family] = cell.as_dict() | {"code": code}
            verified += cell.status == "verified"
        for model, nodes in projects.node_seconds(outcome.events, rows_of).items():
            seconds.setdefault(model, {}).update(nodes)
        builds.append({"project": root.name, "started": began, "code": code, "targets": len(targets),
                       "verified": verified, "wall_s": outcome.wall_s, "returncode": outcome.returncode})
        save(out, results)
        log(f"{root.name}: {verified}/{len(targets)} verified in {outcome.wall_s:.0f} s (exit {outcome.returncode}); "
            f"{min(start + chunk, len(todo))}/{len(todo)} rows done")


def add_arguments(parser: argparse.ArgumentParser, name: str, *, chunk: int, timeout: float, memory: str,
                  families: dict[str, dict[str, Any]]) -> None:
    """The options both matrices take; `name` (op_matrix, model_matrix) names the default results and work paths."""
    parser.add_argument("--sample", type=int, help="only N rows, evenly spaced over the selected ones")
    parser.add_argument("--offset", type=float, default=0.0,
                        help="shift the sample's picks by this share of their spacing (0 <= F < 1; another "
                             "offset gives a disjoint sample of the same size)")
    parser.add_argument("--only", action="append", default=[], help="names or fnmatch patterns (repeatable)")
    parser.add_argument("--targets", default=",".join(families), help="families, comma-separated")
    parser.add_argument("--converters", default=",".join(anchors.CONVERTERS), help="the anchor's converters")
    parser.add_argument("--chunk", type=int, default=chunk, help=f"models per generated project (default {chunk})")
    parser.add_argument("--jobs", type=int, default=2, help="modelbuild build -j (default 2)")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help=f"seconds one build step (and one anchor conversion) may take (default {timeout:.0f})")
    parser.add_argument("--worker-memory", default=memory, help=f"modelbuild's worker memory budget (default {memory})")
    parser.add_argument("--fresh", action="store_true", help="rebuild cells already in the JSON, from empty projects")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "work" / name)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / f"{name}.json")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "coverage.md", help="'-' to skip rendering")


def copy_factory(source: Path) -> Callable[[Path], None]:
    """What puts a factory module into a project (its text enters the models' keys)."""

    def copy(root: Path) -> None:
        target = root / source.name
        if not target.exists() or target.read_text() != source.read_text():
            shutil.copyfile(source, target)

    return copy


def anchor_requests(rows: list[Row], root: Path) -> dict[str, dict[str, Any]]:
    """The anchor's request per row, from its deploy.yaml model: factory, kwargs, validation data, input names."""
    requests = {}
    for row in rows:
        row.write_files(root)
        source, data = row.model["source"], row.model["data"]
        requests[row.key] = {"root": str(root), "factory": source["factory"], "kwargs": source.get("kwargs", {}),
                             "data": data.get("validation") or data["example"],
                             "inputs": [i["name"] for i in row.model["inputs"]]}
    return requests


def run(opts: argparse.Namespace, rows: list[Row], families: dict[str, dict[str, Any]], results: dict[str, Any], *,
        factory: Path, with_anchors: bool, rendered_as: str | None, extra_path: tuple[str, ...] = (),
        after_build: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Build the cells, then (with_anchors) each converter alone on the same rows; save the JSON and render the
    doc from it (`rendered_as`: render.write's argument it stands for, op_json or model_json; None: every file
    from benchmarks/results, the later op samples' by name)."""
    from benchmarks.coverage import render

    def log(message: str) -> None:
        print(message, flush=True)

    settings = BuildSettings(jobs=opts.jobs, step_timeout=opts.timeout, worker_memory=opts.worker_memory,
                             extra_path=extra_path)
    build_rows(rows, families, results, opts.out, work=opts.work, chunk=opts.chunk, settings=settings,
               project_files=copy_factory(factory), fresh=opts.fresh, log=log)
    if after_build is not None:
        after_build(results)
    save(opts.out, results)
    if with_anchors:
        files = opts.work / "anchors"
        files.mkdir(parents=True, exist_ok=True)
        copy_factory(factory)(files)
        anchors.run(anchor_requests(rows, files), opts.converters.split(","), results, lambda: save(opts.out, results),
                    timeout=opts.timeout, fresh=opts.fresh, extra_path=extra_path, log=log)
    save(opts.out, results)
    if str(opts.doc) != "-":
        render.write(opts.doc, **({rendered_as: opts.out} if rendered_as else {}))
        log(f"wrote {opts.doc}")


def spread(items: list[Any], sample: int | None, offset: float = 0.0) -> list[Any]:
    """`sample` of `items` evenly spaced, in order (all of them without a sample). `offset` (0 <= offset < 1)
    shifts every pick by that share of the spacing: where the spacing is 2 or more, samples of the same size
    at different offsets share no item (a second sample, disjoint from the first)."""
    if sample and sample < len(items):
        step = len(items) / sample
        return [items[int((i + offset) * step)] for i in range(sample)]
    return items
