"""Time `.ci/run` the way CI runs it: a fresh clone of a commit, `../shared` beside it, nothing cached.

    python benchmarks/ci_time.py [--rev HEAD] [--coverage] [--keep]

Clones `--rev` of this repository into a new temporary directory, copies `../shared` beside the clone
(read-only, as CI lays it), and runs `bash .ci/run` there with `CI=true`, a fresh `XDG_CACHE_HOME` (so no
pip cache, no modelbuild cache and no web runtime directory survive from earlier runs) and a fresh npm
cache. The log goes to `benchmarks/results/work/ci-<rev>-<n>.log`; the stage times that `.ci/run` prints
at its end, the pytest summary line of each tier and the slowest tests are read from it and appended to
`benchmarks/results/ci_time.json`, which docs/performance.md quotes. `--coverage` sets
MODELBUILD_CI_COVERAGE=1 (line coverage of buildsys/ over the three tiers; slower, so its times are an upper
bound of a plain run's) and keeps the combined coverage data beside the log for comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STAGE = re.compile(r"^stage (\S+)\s+(\d+) s(?:\s+\(exit (\d+)\))?$")
SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed).*) in ([\d.]+)s")
SLOWEST = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$")
COVERAGE = re.compile(r"^coverage total (\d+(?:\.\d+)?)$")


def parse(log: str) -> dict:
    """The stage times, each tier's pytest summary and slowest tests, and the coverage total of a .ci/run log."""
    stages: dict[str, int] = {}
    failed: list[str] = []
    tiers: list[dict] = []
    slowest: list[list] = []  # of the tier being read: a tier's list ends at its summary line
    coverage = None
    for line in log.splitlines():
        if m := STAGE.match(line):
            stages[m[1]] = int(m[2])
            if m[3]:
                failed.append(m[1])
        elif m := SUMMARY.match(line):
            tiers.append({"summary": m[1], "seconds": float(m[2]), "slowest": sorted(slowest, reverse=True)[:30]})
            slowest = []
        elif m := SLOWEST.match(line):
            slowest.append([float(m[1]), m[2], m[3]])
        elif m := COVERAGE.match(line):
            coverage = float(m[1])
    if slowest:  # a tier stopped before its summary
        tiers.append({"summary": "stopped", "seconds": None, "slowest": sorted(slowest, reverse=True)[:30]})
    return {"stages": stages, "failed_stages": failed, "tiers": tiers, "coverage": coverage}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--coverage", action="store_true", help="measure line coverage too (MODELBUILD_CI_COVERAGE=1)")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = ap.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="ci-time-"))
    clone = scratch / "main"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        shutil.copytree(shared, scratch / "shared", symlinks=True)
        subprocess.run(["chmod", "-R", "a-w", str(scratch / "shared")], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PIP_", "MODELBUILD_", "PYTEST_"))}
    env.update(CI="true", XDG_CACHE_HOME=str(scratch / "cache"), npm_config_cache=str(scratch / "npm-cache"),
               PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.venv/" not in p))
    if args.coverage:
        env["MODELBUILD_CI_COVERAGE"] = "1"
    work = RESULTS / "work"
    work.mkdir(parents=True, exist_ok=True)
    n = len(list(work.glob(f"ci-{rev}-*.log"))) + 1
    log_path = work / f"ci-{rev}-{n}.log"
    load = os.getloadavg()[0]
    started = time.time()
    with log_path.open("w") as log:
        proc = subprocess.run(["bash", ".ci/run"], cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT)
    wall = time.time() - started
    found = parse(log_path.read_text())
    if args.coverage and (clone / ".coverage").exists():
        shutil.copy(clone / ".coverage", work / f"coverage-{rev}-{n}.sqlite")
    entry = {"rev": rev, "run": n, "exit": proc.returncode, "wall_s": round(wall), "coverage_run": args.coverage,
             "load_1min_at_start": round(load, 1), "load_1min_at_end": round(os.getloadavg()[0], 1),
             "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)), "log": str(log_path.relative_to(REPO)),
             **found}
    out = RESULTS / "ci_time.json"
    runs = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*runs, entry], indent=1) + "\n")
    print(json.dumps({k: entry[k] for k in ("rev", "exit", "wall_s", "stages", "tiers", "coverage")}, indent=1))
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        subprocess.run(["chmod", "-R", "u+w", str(scratch)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
