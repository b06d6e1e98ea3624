"""The run loop both coverage matrices share: rows (models) × families (targets), built in chunks, resumable.

Rows are split into chunks of `chunk` models; each chunk is one generated project (its directory named by a
digest of its row keys, so the same selection finds its project, cache and lock again) built with one
`modelbuild build -k --json`. After each chunk the results JSON is saved, so a killed run loses at most one
chunk. A cell already in the results is not built again unless `fresh` is set.

The results hold, per row key: `cells` (family → projects.Cell as a dict) and `node_seconds` (node → [event,
seconds]), and a `builds` list with one entry per chunk build (targets, wall seconds, exit code).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.coverage import projects


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
    if fresh:
        for row in rows:
            cells.pop(row.key, None)
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
        targets = {f"{row.key}.{family}": {"model": row.key, **spec}
                   for row in group for family, spec in families.items() if not measured(cells.get(row.key, {}).get(family))}
        projects.write_deploy(root, {row.key: row.model for row in group}, targets)
        began = time.strftime("%H:%M:%S")
        outcome = projects.run_build(root, sorted(targets), jobs=settings.jobs, step_timeout=settings.step_timeout,
                                     worker_memory=settings.worker_memory, wall_timeout=settings.wall_timeout,
                                     extra_path=settings.extra_path)
        rows_of = {t: spec["model"] for t, spec in targets.items()}
        verified = 0
        for target, model in rows_of.items():
            family = target[len(model) + 1:]
            cell = projects.cell_of(outcome.summary.get("targets", {}).get(target), outcome, target, model)
            cells.setdefault(model, {})[family] = cell.as_dict()
            verified += cell.status == "verified"
        for model, nodes in projects.node_seconds(outcome.events, rows_of).items():
            seconds.setdefault(model, {}).update(nodes)
        builds.append({"project": root.name, "started": began, "targets": len(targets), "verified": verified,
                       "wall_s": outcome.wall_s, "returncode": outcome.returncode})
        save(out, results)
        log(f"{root.name}: {verified}/{len(targets)} verified in {outcome.wall_s:.0f} s (exit {outcome.returncode}); "
            f"{min(start + chunk, len(todo))}/{len(todo)} rows done")
