"""Step budgets (buildsys/budget): how close a normal build comes to them, and how fast a runaway is stopped.

1. `--example`: the shipped example (`deploy.yaml.example`) built cold from a fresh copy (as
   benchmarks/cold_build.py makes it), then, from the build record, every node's wall time against its time
   budget and its worker's peak resident memory (with children) against its ceiling: the largest ratios say
   how much room the default budgets leave a normal build.
2. `--runaway`: a process that writes 32 MB every 10 ms (about 3 GB/s, faster than any converter grows) watched
   with ceilings of 1 and 2 GB: how far past the ceiling it got before the watchdog killed it, and how long the
   stop took (the stack dump included).

    PYTHONPATH=. python benchmarks/step_budgets.py --example --runaway

Results: benchmarks/results/step_budgets.json, quoted in docs/performance.md ("Step budgets").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "step_budgets.json"
sys.path.insert(0, str(REPO))

from benchmarks.cold_build import checkout  # noqa: E402
from tests.running.test_budget import RUNAWAY  # noqa: E402  (the script the watchdog's tests stop)


def example(jobs: int) -> dict[str, Any]:
    """Build the example cold; per node its seconds / budget and peak RSS / ceiling."""
    work = Path(tempfile.mkdtemp(prefix="mb-budgets-"))
    try:
        checkout(work)
        env = {**os.environ, "MODELBUILD_CACHE": str(work / "cache"), "NO_COLOR": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "buildsys", "-f", "deploy.yaml.example", "build", "-j", str(jobs)],
                              cwd=work, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        record = json.loads((work / ".modelbuild" / "deploy.record.json").read_text())
        nodes = {}
        for name, entry in sorted(record["nodes"].items()):
            built = entry.get("built", {})
            budget = built.get("budget")
            if not budget:
                continue  # a bench node kept in the record from elsewhere, or a restored one
            nodes[name] = {"seconds": built["seconds"], "budget_s": budget["seconds"], "peak_mb": round(
                built.get("peak_rss", 0) / 1e6), "ceiling_mb": round(budget["memory"] / 1e6)}
        worst_time = max(nodes.items(), key=lambda kv: kv[1]["seconds"] / kv[1]["budget_s"])
        worst_memory = max(nodes.items(), key=lambda kv: kv[1]["peak_mb"] / kv[1]["ceiling_mb"])
        return {"rc": proc.returncode, "wall_s": round(wall, 1), "nodes": len(nodes),
                "failed": [line for line in proc.stdout.splitlines() if line.strip().startswith("failed")],
                "largest_time_share": {"node": worst_time[0], **worst_time[1],
                                       "share": round(worst_time[1]["seconds"] / worst_time[1]["budget_s"], 4)},
                "largest_memory_share": {"node": worst_memory[0], **worst_memory[1],
                                         "share": round(worst_memory[1]["peak_mb"] / worst_memory[1]["ceiling_mb"], 4)},
                "per_node": nodes}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def runaway(ceiling: int) -> dict[str, Any]:
    """Watch the growing script with `ceiling` bytes: overshoot and stop time."""
    from buildsys.running.watchdog import Watchdog

    work = Path(tempfile.mkdtemp(prefix="mb-runaway-"))
    try:
        (work / "runaway.py").write_text(RUNAWAY)
        log = work / "step.log"
        with open(log, "ab") as err:
            proc = subprocess.Popen([sys.executable, str(work / "runaway.py"), "grow"], stdout=err, stderr=err)
        dog = Watchdog(proc.pid, 600, ceiling)
        while (limit := dog.over()) is None:
            time.sleep(dog.next_wait())
        t0 = time.perf_counter()
        stop = dog.stop(limit, log, root=work)
        took = time.perf_counter() - t0
        proc.wait(timeout=10)
        return {"ceiling_mb": round(ceiling / 1e6), "peak_mb": round(dog.peak / 1e6),
                "overshoot_mb": round((dog.peak - ceiling) / 1e6), "stop_s": round(took, 2), "line": stop.line()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", action="store_true")
    parser.add_argument("--runaway", action="store_true")
    parser.add_argument("--jobs", type=int, default=1)
    a = parser.parse_args()
    out: dict[str, Any] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_1min": round(os.getloadavg()[0], 1)}
    if a.runaway:
        out["runaway"] = [runaway(c) for c in (10**9, 2 * 10**9)]
        print(json.dumps(out["runaway"], indent=1), flush=True)
    if a.example:
        out["example"] = example(a.jobs)
        print(json.dumps({k: v for k, v in out["example"].items() if k != "per_node"}, indent=1), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
