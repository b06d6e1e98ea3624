"""Dask benchmark: the 20 × 4 no-op project's cold build on a 2-worker LocalCluster vs `-j 2` locally.

The project is benchmarks/noop.py's (20 models with 100 MB of weights each, 4 targets per model:
TorchScript, ONNX, ONNX fp16, ONNX int8, each verified). Both builds start cold (no cache, no lock,
no artifacts) and run as whole commands:

- local: `modelbuild build -j 2` (two worker processes per toolchain at most, no remote cache);
- dask:  `modelbuild build --executor dask --scheduler ADDR -j 2` on a
  `LocalCluster(n_workers=2, processes=True, threads_per_worker=1)` started beforehand (its start-up
  is timed separately), with a file:// remote cache that every artifact travels through.

    python benchmarks/dask_build.py                 # generate if needed, both builds, write results
    python benchmarks/dask_build.py --dir /data/mb-dask --keep   # default: $TMPDIR/mb-dask-bench

Results go to benchmarks/results/dask_build.json and are quoted in docs/performance.md. The builds
need about 25 GB of free disk at their peak (store, artifacts, remote, worker stores); everything
but the generated project is deleted afterwards unless --keep.
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from noop import generate  # benchmarks/noop.py: the same 20 × 4 project


def clean(root: Path) -> None:
    for path in (root / ".modelbuild", root / "artifacts", root / "remote"):
        shutil.rmtree(path, ignore_errors=True)
    (root / "deploy.lock").unlink(missing_ok=True)


def timed_build(root: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "buildsys", "build", *args], cwd=root, capture_output=True,
                          check=False, text=True, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env})
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"modelbuild build {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return elapsed, proc.stdout


def counts(out: str) -> dict[str, int]:
    """How many nodes each outcome got, from the build's event lines ("  built    tiny/onnx  1.2 s")."""
    found: dict[str, int] = {}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("  ") and words and words[0] in ("built", "cached", "failed", "skipped", "restored"):
            found[words[0]] = found.get(words[0], 0) + 1
    return found


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_local(root: Path, jobs: int) -> dict:
    clean(root)
    seconds, out = timed_build(root, {"MODELBUILD_REMOTE": "off"}, "-j", str(jobs))
    print(f"local -j {jobs}: {seconds:.1f} s {counts(out)}", flush=True)
    return {"seconds": round(seconds, 1), "nodes": counts(out), "load_average": round(os.getloadavg()[1], 2)}


def run_dask(root: Path, jobs: int) -> dict:
    from distributed import Client, LocalCluster

    clean(root)
    remote = root / "remote"
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster:
        startup = time.perf_counter() - t0
        seconds, out = timed_build(root, {"MODELBUILD_REMOTE": remote.as_uri()}, "--executor", "dask", "--scheduler",
                                   cluster.scheduler_address, "-j", str(jobs))
        with Client(cluster.scheduler_address, set_as_default=False) as client:
            addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
    record = json.loads((root / ".modelbuild" / "deploy.record.json").read_text())["nodes"]
    per_worker: dict[str, int] = {}
    for entry in record.values():
        worker = entry.get("built", {}).get("worker", "?")
        per_worker[worker] = per_worker.get(worker, 0) + 1
    print(f"dask 2 workers: {seconds:.1f} s (+{startup:.1f} s cluster start) {counts(out)}", flush=True)
    return {"seconds": round(seconds, 1), "cluster_start_s": round(startup, 1), "nodes": counts(out),
            "nodes_per_worker": [per_worker.get(a, 0) for a in addresses], "remote_bytes": du(remote),
            "load_average": round(os.getloadavg()[1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mb-dask-bench")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="Pairs of builds; the order alternates (local first, then dask first) against drift.")
    parser.add_argument("--keep", action="store_true", help="Keep caches, artifacts and the remote afterwards.")
    args = parser.parse_args()
    root = args.dir.resolve()
    generate(root)
    runs: dict[str, list[dict]] = {"local": [], "dask": []}
    for i in range(args.rounds):
        for kind in (("local", "dask") if i % 2 == 0 else ("dask", "local")):
            runs[kind].append((run_local if kind == "local" else run_dask)(root, args.jobs))
    if not args.keep:
        clean(root)

    weights = sum(p.stat().st_size for p in (root / "weights").glob("*.pt"))
    local = round(statistics.median(r["seconds"] for r in runs["local"]), 1)
    dask = round(statistics.median(r["seconds"] for r in runs["dask"]), 1)
    summary = {
        "project": f"20 models × 4 targets, {weights / 1e9:.2f} GB of weights, 180 nodes",
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "local_median_s": local, "dask_median_s": dask, "dask_vs_local": round(dask / local, 2),
        "runs": runs,
    }
    out_path = HERE / "results" / "dask_build.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(summary, indent=2) + "\n")
    moved = runs["dask"][0]["remote_bytes"] / 1e9
    start = statistics.median(r["cluster_start_s"] for r in runs["dask"])
    print(f"\n{'cold build, 80 targets / 180 nodes':<36} {'median s':>9} {'runs s':>16} {'cluster start':>14} {'via remote':>11}")
    print(f"{'local -j ' + str(args.jobs) + ' (process pool)':<36} {local:>9} "
          f"{', '.join(str(r['seconds']) for r in runs['local']):>16} {'-':>14} {'-':>11}")
    print(f"{'dask LocalCluster 2 × 1 thread':<36} {dask:>9} "
          f"{', '.join(str(r['seconds']) for r in runs['dask']):>16} {start:>12} s {moved:>8.2f} GB")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
