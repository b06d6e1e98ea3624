"""Cold build benchmark: the shipped example built from a fresh copy with an empty cache.

Copies what a fresh clone needs for `deploy.yaml.example` (the file, recipes/, examples/) into a new
temporary directory, points MODELBUILD_CACHE at an empty directory there, runs
`python -m buildsys -f deploy.yaml.example build [-j N]` with this checkout's code first on the path,
and while it runs samples the process tree with psutil. Reports per run:

- wall time of the command (Python start-up included);
- node-seconds: the sum of `built.seconds` over the build record's nodes (time each node spent in
  its worker, including waiting for the worker to start and import its toolchain);
- worker starts per toolchain (`python -m buildsys.running.worker` children; their toolchain comes from the
  MODELBUILD_WORKER_TOOLCHAIN variable the pool sets);
- peak total RSS of the build and all its descendants (sampled every 0.2 s; RSS counts shared pages
  once per process, so this is an upper bound on what the tree holds).

    PYTHONPATH=. python benchmarks/cold_build.py --runs 3            # default -j
    PYTHONPATH=. python benchmarks/cold_build.py --runs 1 --jobs 1 --label before

Results are appended to benchmarks/results/cold_build.json and quoted in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "cold_build.json"
FRESH_CLONE = ("deploy.yaml.example", "recipes", "examples")


def checkout(root: Path) -> None:
    for name in FRESH_CLONE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", ".modelbuild"))
        else:
            shutil.copy(src, root / name)


class TreeSampler:
    """Samples a process tree: peak total RSS and every worker process seen (pid → toolchain)."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.workers: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                    if p.pid not in self.workers and p is not self.root and "buildsys.running.worker" in " ".join(p.cmdline()):
                        self.workers[p.pid] = p.environ().get("MODELBUILD_WORKER_TOOLCHAIN", "?")
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, total)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def one_run(jobs: int | None, keep: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mb-cold-"))
    try:
        checkout(work)
        env = {**os.environ, "MODELBUILD_CACHE": str(work / "cache"), "NO_COLOR": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        args = [sys.executable, "-m", "buildsys", "-f", "deploy.yaml.example", "build"]
        if jobs is not None:
            args += ["-j", str(jobs)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = TreeSampler(proc.pid)
        out, _ = proc.communicate()
        wall = time.perf_counter() - t0
        sampler.stop()
        record = json.loads((work / ".modelbuild" / "deploy.record.json").read_text())
        seconds = [n.get("built", {}).get("seconds", 0.0) for n in record.get("nodes", {}).values()]
        starts = Counter(sampler.workers.values())
        return {"rc": proc.returncode, "wall_s": round(wall, 1), "node_seconds": round(sum(seconds), 1),
                "nodes": len(seconds), "worker_starts": dict(sorted(starts.items())),
                "worker_starts_total": sum(starts.values()), "peak_rss_mb": round(sampler.peak_rss / 2**20),
                "tail": out.strip().splitlines()[-3:] if proc.returncode else []}
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=None, help="-j to pass (default: the CLI's default)")
    parser.add_argument("--label", default="", help="a name for this series in the results file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project directories")
    parser.add_argument("--no-save", action="store_true")
    a = parser.parse_args()
    runs = []
    for i in range(a.runs):
        r = one_run(a.jobs, a.keep)
        print(f"run {i + 1}: {json.dumps(r)}", flush=True)
        runs.append(r)
    ok = [r for r in runs if r["rc"] == 0] or runs
    summary = {
        "label": a.label, "jobs": a.jobs if a.jobs is not None else "default", "runs": len(runs),
        "median_wall_s": round(statistics.median(r["wall_s"] for r in ok), 1),
        "median_node_seconds": round(statistics.median(r["node_seconds"] for r in ok), 1),
        "median_peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in ok)),
        "cpus": len(os.sched_getaffinity(0)), "available_mb": round(psutil.virtual_memory().available / 2**20),
        "python": platform.python_version(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "all": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "all"}))
    if not a.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
        history.append(summary)
        RESULTS.write_text(json.dumps(history, indent=1) + "\n")


if __name__ == "__main__":
    main()
