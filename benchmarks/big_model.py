"""Big-model benchmark: a model whose ONNX export is over 2 GB, built through ONNX (external data),
ORT optimization, fp16, int8 and their checks, then bundled and verified; seconds and peak RSS per step.

Seconds per node come from the build record (.modelbuild/*.record.json). Peak RSS per node is
sampled (psutil, every 50 ms) over the build's process tree while that node runs (`-j 1`: one node
at a time; the running node is the one whose log was opened last); each command's overall peak is
getrusage's high-water mark of its processes, which no sampling can miss.

    python benchmarks/big_model.py [--width 16384 --layers 2] [--dir /tmp/bigmodel] [--keep]

The default model (2 × Linear(16384, 16384) + a head) has 2.15 GB of float32 weights. The run
needs about 24 GB of free disk and 10-20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.test_big_model import _MEASURE, make_big_project, side_files


def run(config: Path, *args: str) -> tuple[float, int, dict[str, int]]:
    """Run a CLI command; return its seconds, its getrusage peak RSS and sampled peaks per node."""
    logs = config.parent / ".modelbuild" / "logs"
    peaks: dict[str, int] = {}
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", _MEASURE, sys.executable, "-m", "buildsys", "-f", str(config),
                             *args], cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        cpu: dict[int, float] = {}
        while not done.is_set():
            rss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    with p.oneshot():
                        used = sum(p.cpu_times()[:2])
                        if used > cpu.get(p.pid, -1.0):  # busy since the last sample: an idle worker's
                            rss = max(rss, p.memory_info().rss)  # memory belongs to an earlier node
                        cpu[p.pid] = used
            except psutil.Error:
                pass
            node = _running(logs, start) or args[0]
            peaks[node] = max(peaks.get(node, 0), rss)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    seconds = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"modelbuild {' '.join(args)} failed:\n{out}\n{err}")
    return seconds, int(err.strip().splitlines()[-1]), peaks


def _running(logs: Path, since: float) -> str:
    """The node whose log was opened last in this run ('big__onnx.log' → big/onnx, 'verify_fp16.log' → verify:fp16)."""
    opened = [p for p in logs.glob("*.log") if p.stat().st_mtime >= since] if logs.is_dir() else []
    if not opened:
        return ""
    stem = max(opened, key=lambda p: p.stat().st_ctime).stem
    return stem.replace("__", "/") if "__" in stem else stem.replace("_", ":", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/modelbuild-bigmodel"))
    parser.add_argument("--keep", action="store_true", help="keep the project directory afterwards")
    opts = parser.parse_args()
    shutil.rmtree(opts.dir, ignore_errors=True)
    print(f"free disk under {opts.dir.parent}: {shutil.disk_usage(opts.dir.parent).free / 1e9:.0f} GB")
    config = make_big_project(opts.dir, opts.width, opts.layers)
    try:
        build_s, build_peak, node_peaks = run(config, "build", "-j", "1")
        record = json.loads(next((opts.dir / ".modelbuild").glob("*.record.json")).read_text())["nodes"]
        sides = side_files(opts.dir)
        export = record["big/onnx"]["metrics"]["bytes"]
        bundle = opts.dir / "artifacts/bundles/release-1.0.0.tar.gz"
        bundle_s, bundle_peak, _ = run(config, "bundle", "release")
        bundle_gb = bundle.stat().st_size / 1e9
        verify_s, verify_peak, _ = run(config, "bundle", "verify", str(bundle))
    finally:
        if not opts.keep:
            shutil.rmtree(opts.dir, ignore_errors=True)
    largest = max(export, *sides.values())
    print(f"\nmodel: {opts.layers} x Linear({opts.width}, {opts.width}) + head; ONNX export {export / 1e9:.2f} GB "
          f"(external data); largest weight file {largest / 1e9:.2f} GB\n")
    print("| step | seconds | peak RSS (GB) | × largest weight file |\n|---|---:|---:|---:|")
    for node, entry in record.items():
        peak = node_peaks.get(node)
        cells = (f"{peak / 1e9:.2f}", f"{peak / largest:.2f}") if peak else ("—", "—")
        print(f"| {node} | {entry['built']['seconds']:.1f} | {cells[0]} | {cells[1]} |")
    for name, seconds, peak in (("build (all processes)", build_s, build_peak),
                                (f"bundle ({bundle_gb:.2f} GB tar.gz)", bundle_s, bundle_peak),
                                ("bundle verify (unpack + 3 checks)", verify_s, verify_peak)):
        print(f"| {name} | {seconds:.1f} | {peak / 1e9:.2f} | {peak / largest:.2f} |")


if __name__ == "__main__":
    main()
