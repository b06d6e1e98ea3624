"""Generated deploy.yaml projects for the coverage matrices: write one, build it, read every target's cell.

Both matrices (benchmarks/op_matrix.py, benchmarks/model_matrix.py) put many models into one project so that
one `modelbuild build --keep-going --json` reuses its warm workers for all of them, with a per-step time
budget (`--timeout`) and a worker memory budget. A project directory is kept between runs: modelbuild's own
cache and deploy.lock make a second run cheap, and the lock's failed routes are not retried.

A cell is one target (one model to one family) read from the build's summary: `verified` when its check
passed (numerically: Core ML by the MIL reference interpreter off macOS, which the status says), else why
not: the first line of the reason each route was dropped for, the failing node, every route tried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    """What one `modelbuild build --json` of a project did."""

    returncode: int
    wall_s: float
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    stderr_tail: str


def write_deploy(root: Path, models: dict[str, dict[str, Any]], targets: dict[str, dict[str, Any]]) -> Path:
    """deploy.yaml of `models` and `targets` (both as deploy.yaml mappings) in `root`. JSON is YAML."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "deploy.yaml"
    text = json.dumps({"models": models, "targets": targets}, indent=1, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:  # an unchanged file keeps the no-op fast path
        path.write_text(text)
    return path


def run_build(root: Path, targets: Iterable[str], *, jobs: int, step_timeout: float, worker_memory: str,
              wall_timeout: float, extra_path: Iterable[str] = ()) -> Outcome:
    """`modelbuild build -k --json` of `targets` in `root`; the events also go to root/events.jsonl."""
    env = {**os.environ, "NO_COLOR": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "MODELBUILD_WORKER_MEMORY": worker_memory,
           "PYTHONPATH": os.pathsep.join([str(REPO), *extra_path, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "buildsys", "build", "-k", "--json", "-j", str(jobs), "--timeout", str(step_timeout),
           *targets]
    started = time.perf_counter()
    events: list[dict[str, Any]] = []
    with open(root / "events.jsonl", "a") as log, open(root / "stderr.log", "w") as err:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.startswith("{"):
                    log.write(line)
                    log.flush()
                    events.append(json.loads(line))
                if time.perf_counter() - started > wall_timeout:
                    proc.kill()
                    break
        finally:
            returncode = proc.wait()
    stderr = (root / "stderr.log").read_text(errors="replace")
    summary: dict[str, Any] = next((e for e in reversed(events) if e.get("event") == "summary"), {})
    return Outcome(returncode, round(time.perf_counter() - started, 1), summary, events, stderr[-3000:])


def first_line(text: str | None) -> str:
    """The first non-empty line of an error, at most 300 characters."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


@dataclass
class Cell:
    """One target's result: verified or not, the route that delivered it or why every route failed."""

    status: str  # verified | failed | not run | no result
    verdict: str = ""
    route: str | None = None
    rewrites: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    reason: str = ""  # first line of the first dropped route's reason (the default route's)
    node: str = ""  # the node that failed on that route
    routes: list[dict[str, str]] = field(default_factory=list)  # every route dropped: route, node, reason
    measures: dict[str, Any] = field(default_factory=dict)  # a verified cell's size and latency (measures_of)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "", [])}


def route_failure(target: str, model: str, route: list[str], events: list[dict[str, Any]]) -> dict[str, str] | None:
    """The first failure of a node on `route` (`model/format`, `model/format~hash`, `verify:target`) in the
    build's events, for a target the summary reports not delivered without naming a dropped route (a target
    with a single route whose conversion failed)."""
    stops = set(route)
    for e in events:
        node = str(e.get("node", ""))
        fmt = node.split("/", 1)[1].split("~", 1)[0] if node.startswith(f"{model}/") else None
        if e.get("event") == "failed" and (fmt in stops or node == f"verify:{target}") and e.get("error"):
            return {"route": " → ".join(route), "node": node, "reason": first_line(str(e["error"]))}
    return None


def cell_of(row: dict[str, Any] | None, outcome: Outcome, target: str = "", model: str = "") -> Cell:
    """The cell of one target from the summary's row for it (None when the build never reported it)."""
    if row is None:
        why = first_line(outcome.stderr_tail.strip().splitlines()[-1] if outcome.stderr_tail.strip() else "")
        return Cell("no result", reason=f"modelbuild build exited {outcome.returncode} before reporting this "
                                        f"target: {why}")
    dropped = [{"route": " → ".join(d.get("route", [])), "node": d.get("node", ""),
                "reason": first_line(d.get("reason"))} for d in row.get("dropped", [])]
    verdict = str(row.get("verdict", ""))
    if verdict != "passed" and not dropped:
        found = route_failure(target, model, list(row.get("route") or []), outcome.events)
        dropped = [found] if found else []
    status = "verified" if verdict == "passed" else "not run" if verdict.startswith("not run") else "failed"
    caveats = [c if isinstance(c, str) else str(c.get("what", c)) for c in row.get("caveats", [])]
    cell = Cell(status, verdict=str(row.get("status", verdict)), caveats=caveats, routes=dropped,
                rewrites=list(row.get("rewrites") or []))
    if status == "verified":
        cell.route = " → ".join(row.get("route") or [])
        cell.measures = measures_of(row)
    elif dropped:
        telling = telling_route(dropped)
        cell.reason, cell.node = telling["reason"], telling["node"]
    else:
        cell.reason = first_line(str(row.get("status", "")))
    return cell


def measures_of(row: dict[str, Any]) -> dict[str, Any]:
    """What a verified target's entry in `build --json`'s summary says of its size and speed, for
    docs/coverage.md's size and latency tables: `bytes`; `vs_fp32` (the file against the model's parameters × 4) and `vs_ideal` (its weight bytes
    against parameters × the asked precision's bytes); `share` of the weights in the asked precision (`asked`);
    `ms` and `eager_ms`, the artifact's median batch-1 call in its runtime and PyTorch eager's, both at one
    intra-op thread (the fair figure on a shared host; `ms_all`, `eager_ms_all`: the best call with the
    runtime's own threads). A figure the build did not measure is left out."""
    weights = row.get("weights") or {}
    latency, eager = row.get("latency") or {}, row.get("eager_latency") or {}
    one, eager_one = latency.get("one_thread") or {}, eager.get("one_thread") or {}
    found = {"bytes": row.get("size_bytes"), "vs_fp32": row.get("size_ratio"), "vs_ideal": row.get("ideal_ratio"),
             "share": weights.get("observed"), "asked": weights.get("asked") or row.get("precision"),
             "ms": one.get("p50_ms"), "eager_ms": eager_one.get("p50_ms"),
             "ms_all": latency.get("min_ms"), "eager_ms_all": eager.get("min_ms")}
    return {k: v for k, v in found.items() if v is not None}


def telling_route(dropped: list[dict[str, str]]) -> dict[str, str]:
    """The route whose failure says why a cell failed: the first whose artifact was built and missed its check
    (`verify:` node), else the first tried. A refused dynamic export that its static re-export answered, say, is
    not why the re-exported artifact then missed its tolerance."""
    return next((d for d in dropped if d.get("node", "").startswith("verify:")), dropped[0])


def model_of(node: str, target_model: dict[str, str]) -> str | None:
    """The model a node belongs to: `ops:M`, `M/format~hash`, `verify:TARGET`, `bench:TARGET`."""
    kind, _, rest = node.partition(":")
    if rest and kind in ("verify", "bench"):
        return target_model.get(rest)
    if rest and kind == "ops":
        return rest
    return node.split("/", 1)[0] if "/" in node else None


def node_seconds(events: list[dict[str, Any]], target_model: dict[str, str]) -> dict[str, dict[str, list[Any]]]:
    """Per model: {node: [event, seconds]} of every node that ran (built, failed, or the op analysis `ops:M`:
    analysed), seconds summed over runs; a node that failed once counts as failed."""
    out: dict[str, dict[str, list[Any]]] = {}
    for e in events:
        if e.get("event") not in ("built", "failed", "analysed") or not e.get("seconds"):
            continue
        model = model_of(str(e.get("node", "")), target_model)
        if model is None:
            continue
        entry = out.setdefault(model, {}).setdefault(e["node"], [e["event"], 0.0])
        entry[0] = "failed" if "failed" in (entry[0], e["event"]) else e["event"]
        entry[1] = round(entry[1] + float(e["seconds"]), 3)
    return out
