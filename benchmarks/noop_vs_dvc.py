"""No-op benchmark against DVC: modelbuild's no-op `plan` / `build` and DVC's no-op `repro`, one run.

Uses the 20 × 4 project of benchmarks/noop.py (2 GB of weights, 80 targets, 180 nodes) and mirrors
it as a DVC pipeline: 80 stages, one per target, each depending on the factory code and its
model's 100 MB weights (hard links to the same 2 GB) and writing one small output. Once both are
built and a first no-op has run (for modelbuild, that run writes the no-op snapshot), the script
alternates the commands and times each as a whole process (Python start-up included):

- `python -m buildsys plan` and `build`: the fast path (buildsys/cli/noop.py);
- the same with MODELBUILD_NO_FASTPATH=1: the full CLI, as before the fast path;
- `dvc repro` (the dvc executable from $DVC or PATH; "dvc: not run (not installed)" without one).

modelbuild's package is byte-compiled first (`python -m compileall -q buildsys`): with
PYTHONDONTWRITEBYTECODE=1, as on some machines, every run would otherwise compile what it imports.

    python benchmarks/noop_vs_dvc.py --runs 10
    DVC=/tmp/dvcvenv/bin/dvc python benchmarks/noop_vs_dvc.py --dir /tmp/mb-bench/proj

Results go to benchmarks/results/noop_vs_dvc.json and are quoted in docs/performance.md.
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from noop import MODELS, generate  # the 20 × 4 project of benchmarks/noop.py

FORMATS = ("ts", "onnx", "fp16", "int8")


def dvc_project(root: Path, dvc_root: Path, dvc: str) -> None:
    """The DVC mirror of the modelbuild project: same weights (hard links), 80 stages."""
    (dvc_root / "weights").mkdir(parents=True, exist_ok=True)
    for src in sorted((root / "weights").glob("*.pt")):
        dst = dvc_root / "weights" / src.name
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    shutil.copy2(root / "benchnet.py", dvc_root / "benchnet.py")
    stages = []
    for i in range(MODELS):
        m = f"m{i:02d}"
        for fmt in FORMATS:
            stages += [f"  {m}-{fmt}:",
                       f"    cmd: mkdir -p out && wc -c weights/{m}.pt > out/{m}-{fmt}.txt && echo {fmt} >> out/{m}-{fmt}.txt",
                       f"    deps: [benchnet.py, weights/{m}.pt]",
                       f"    outs: [out/{m}-{fmt}.txt]"]
    text = "stages:\n" + "\n".join(stages) + "\n"
    if not (dvc_root / ".dvc").exists():
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=dvc_root, check=True)
        subprocess.run([dvc, "config", "core.analytics", "false"], cwd=dvc_root, check=True)
        subprocess.run([dvc, "config", "core.check_update", "false"], cwd=dvc_root, check=False)
    if not (dvc_root / "dvc.yaml").exists() or (dvc_root / "dvc.yaml").read_text() != text:
        (dvc_root / "dvc.yaml").write_text(text)


def timed(cmd: list[str], cwd: Path, env: dict[str, str], expect: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or expect not in proc.stdout + proc.stderr:
        raise SystemExit(f"{' '.join(cmd)} (in {cwd}) exited {proc.returncode} without '{expect}':\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def find_dvc() -> str | None:
    dvc = os.environ.get("DVC") or shutil.which("dvc")
    return dvc if dvc and Path(dvc).exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=HERE / "results" / "work", help="The modelbuild project.")
    parser.add_argument("--dvc-dir", type=Path, help="The DVC project (default: DIR-dvc).")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    root = args.dir.resolve()
    dvc_root = (args.dvc_dir or root.with_name(root.name + "-dvc")).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELBUILD_")}
    slow_env = {**env, "MODELBUILD_NO_FASTPATH": "1"}
    dvc_env = {**env, "DVC_NO_ANALYTICS": "1"}
    mb = [sys.executable, "-m", "buildsys"]

    generate(root)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "buildsys")], check=True)
    t0 = time.perf_counter()
    subprocess.run([*mb, "build", "-j", str(args.jobs)], cwd=root, env=env, check=True, capture_output=True)
    print(f"modelbuild: build brought up to date in {time.perf_counter() - t0:.1f} s")
    commands: dict[str, tuple[list[str], Path, dict[str, str], str]] = {
        "modelbuild_plan": (mb + ["plan"], root, env, "Everything is fresh"),
        "modelbuild_build": (mb + ["build"], root, env, "Nothing to do"),
        "modelbuild_plan_no_fastpath": (mb + ["plan"], root, slow_env, "Everything is fresh"),
        "modelbuild_build_no_fastpath": (mb + ["build"], root, slow_env, "Nothing to do"),
    }
    dvc = find_dvc()
    if dvc:
        dvc_project(root, dvc_root, dvc)
        t0 = time.perf_counter()
        subprocess.run([dvc, "repro", "-q"], cwd=dvc_root, env=dvc_env, check=True)
        print(f"dvc: repro brought up to date in {time.perf_counter() - t0:.1f} s")
        commands["dvc_repro"] = ([dvc, "repro"], dvc_root, dvc_env, "up to date")
        version = subprocess.run([dvc, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    else:
        print("dvc: not run (not installed; set $DVC or put dvc on PATH)")
        version = "not run (not installed)"
    # The first no-op of each command writes modelbuild's snapshot; check that the fast path answers.
    for name, (cmd, cwd, cenv, expect) in commands.items():
        timed(cmd, cwd, cenv, expect)
    for _ in range(5):  # a package installed or a modelbuild file edited meanwhile makes one more slow no-op
        trace = {name: subprocess.run(mb + [name], cwd=root, env={**env, "MODELBUILD_TRACE_FASTPATH": "1"},
                                      capture_output=True, text=True, check=False).stderr for name in ("plan", "build")}
        if all("fast path: hit" in t for t in trace.values()):
            break
        time.sleep(1)
    else:
        raise SystemExit(f"the no-op plan/build was not answered by the fast path: {trace}")
    load_before = os.getloadavg()
    results: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):  # interleaved, so that load from other processes hits all alike
        for name, (cmd, cwd, cenv, expect) in commands.items():
            results[name].append(timed(cmd, cwd, cenv, expect))
    load_after = os.getloadavg()
    medians = {name: statistics.median(v) for name, v in results.items()}
    summary = {
        "project": f"{MODELS} models × {len(FORMATS)} targets, "
                   f"{sum(p.stat().st_size for p in (root / 'weights').glob('*.pt')) / 1e9:.2f} GB of weights",
        "host": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "bytecode": "python -m compileall -q buildsys before timing",
        "dvc": version,
        **{f"{k}_s": {"min": round(min(v), 3), "median": round(statistics.median(v), 3), "max": round(max(v), 3)}
           for k, v in results.items()},
        "runs": args.runs,
    }
    if "dvc_repro" in medians:
        for name in ("modelbuild_plan", "modelbuild_build"):
            summary[f"dvc_repro_over_{name}"] = round(medians["dvc_repro"] / medians[name], 1)
    out = HERE / "results" / "noop_vs_dvc.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
