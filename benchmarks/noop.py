"""No-op benchmark: how long `plan` and an up-to-date `build` take on a big project.

Generates 20 models × 4 targets whose weight files total 2 GB (each model a 5000×5000 linear
layer, 100 MB of float32), builds it once, then times `modelbuild plan` and a no-op
`modelbuild build` as whole commands (Python start-up included), several times each. After the
first run they are answered by the no-op fast path (buildsys/cli/noop.py); benchmarks/noop_vs_dvc.py
times them with and without it, next to DVC.

    python benchmarks/noop.py --fresh          # generate, cold build, time, write results
    python benchmarks/noop.py --runs 20 --dir /tmp/mb-bench

Results go to benchmarks/results/noop.json and are quoted in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS, WIDTH = 20, 5000  # 20 × 5000² × 4 bytes = 2.0 GB of weights

FACTORY = '''\
"""Benchmark model: one wide linear layer (100 MB of weights)."""
import torch


def build(width: int = 5000) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(width, width))
'''


def generate(root: Path) -> None:
    """Write the factory, 20 distinct 100 MB state dicts and a deploy.yaml with 80 targets."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    (root / "benchnet.py").write_text(FACTORY)
    lines = ["models:"]
    for i in range(MODELS):
        weights = root / f"weights/m{i:02d}.pt"
        if not weights.exists():
            weights.parent.mkdir(exist_ok=True)
            g = torch.Generator().manual_seed(i)
            state = {"0.weight": torch.randn(WIDTH, WIDTH, generator=g) * 0.01, "0.bias": torch.zeros(WIDTH)}
            torch.save(state, weights)
        lines += [f"  m{i:02d}:", "    source: {factory: 'benchnet:build', weights: " + f"weights/m{i:02d}.pt" + "}",
                  f"    inputs: [{{name: x, shape: [batch, {WIDTH}]}}]", "    outputs: [{name: y}]", "    samples: 4"]
    lines.append("targets:")
    for i in range(MODELS):
        m = f"m{i:02d}"
        lines += [f"  {m}-ts: {{model: {m}, format: torchscript}}",
                  f"  {m}-onnx: {{model: {m}, format: onnx}}",
                  f"  {m}-fp16: {{model: {m}, format: onnx, precision: fp16}}",
                  f"  {m}-int8: {{model: {m}, format: onnx, precision: int8}}"]
    (root / "deploy.yaml").write_text("\n".join(lines) + "\n")


def timed(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"modelbuild {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=HERE / "results" / "work")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="Delete cache, lock and artifacts first (a cold build).")
    args = parser.parse_args()
    generate(args.dir)
    if args.fresh:
        import shutil

        for path in (args.dir / ".modelbuild", args.dir / "artifacts"):
            shutil.rmtree(path, ignore_errors=True)
        (args.dir / "deploy.lock").unlink(missing_ok=True)
    first, _ = timed(args.dir, "build", "-j", str(args.jobs))
    print(f"first build ({'cold' if args.fresh else 'incremental'}): {first:.1f} s")
    results: dict[str, list[float]] = {"plan": [], "plan_new_config": [], "noop_build": []}
    expansion = args.dir / ".modelbuild" / "expansion.pickle"
    for _ in range(args.runs):
        expansion.unlink(missing_ok=True)  # as after an edit of deploy.yaml: the DAG is expanded again
        # The no-op snapshot (buildsys/cli/noop.py) does not cover the expansion cache: an edit would
        # also invalidate the snapshot, so this run takes the full path like the edit would.
        results["plan_new_config"].append(timed(args.dir, "plan", env={"MODELBUILD_NO_FASTPATH": "1"})[0])
        results["plan"].append(timed(args.dir, "plan")[0])
        seconds, out = timed(args.dir, "build")
        assert "Nothing to do" in out, out
        results["noop_build"].append(seconds)
    weights = sum(p.stat().st_size for p in (args.dir / "weights").glob("*.pt"))
    summary = {
        "project": f"{MODELS} models × 4 targets, {weights / 1e9:.2f} GB of weights",
        "host": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        ("cold_build_s" if args.fresh else "incremental_build_s"): round(first, 1),
        **{f"{k}_s": {"min": round(min(v), 3), "median": round(statistics.median(v), 3), "max": round(max(v), 3)}
           for k, v in results.items()},
        "runs": args.runs,
    }
    out = HERE / "results" / "noop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
