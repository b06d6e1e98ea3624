"""Failed node-seconds of a cold build with and without op coverage ordering the routes (docs/rewrites.md, "Op
coverage"): the spotter (torch.stft) and the recommender (nn.EmbeddingBag) of tests/rewrites/test_rewrite_routes.py to
Core ML, ExecuTorch and TFLite through litert-torch, each built from nothing with `build -k -j 1 --json`,
once with MODELBUILD_OP_COVERAGE=0 (the routes in their default order) and once with it on (the op analysis
first, its seconds counted). Also (`plan`, alone with --plan-only) what `plan --ops` costs on the same models
with ONNX targets added, so that every table is read: its wall time cold (both models analysed, the five
registries and XNNPACK's configs read) and warm (all cached), each table's size and the seconds its registry
takes to read in a fresh process (its imports included). Writes benchmarks/results/op_coverage.json.

    python benchmarks/op_coverage.py [--plan-only]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "rewrites"))  # for test_rewrite_routes

TARGETS = """\
ios: {model: spotter, format: coreml}
et: {model: spotter, format: executorch}
lite: {model: spotter, format: tflite, via: [pt2]}
rec-ios: {model: recsys, format: coreml}
rec-et: {model: recsys, format: executorch}
rec-lite: {model: recsys, format: tflite, via: [pt2]}
"""


def run(coverage: bool) -> dict:
    from test_rewrite_routes import Project

    with tempfile.TemporaryDirectory() as tmp:
        Project(Path(tmp), TARGETS)  # writes the project into tmp
        env = {**os.environ, "MODELBUILD_OP_COVERAGE": "1" if coverage else "0", "NO_COLOR": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "buildsys", "build", "-k", "-j", "1", "--json"], cwd=tmp,
                              capture_output=True, text=True, env=env, timeout=3000)
        wall = time.perf_counter() - start
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        failed = [e for e in events if e.get("event") == "failed" and e.get("seconds")]
        built = [e for e in events if e.get("event") == "built" and e.get("seconds")]
        lock = json.loads((Path(tmp) / "deploy.lock").read_text()) if (Path(tmp) / "deploy.lock").exists() else {}
        return {"coverage": coverage, "returncode": proc.returncode, "wall_s": round(wall, 1),
                "failed_nodes": len(failed), "failed_node_s": round(sum(e["seconds"] for e in failed), 1),
                "built_node_s": round(sum(e["seconds"] for e in built), 1),
                "failed": {e["node"]: round(e["seconds"], 1) for e in failed},
                "routes": {t: v.get("route") for t, v in lock.get("targets", {}).items()}}


#: The plan measurement's targets: the build's, and both models to ONNX (the two exporters' tables).
PLAN_TARGETS = TARGETS + "server: {model: spotter, format: onnx}\nrec-server: {model: recsys, format: onnx}\n"


def plan() -> dict:
    from test_rewrite_routes import Project

    from buildsys.formats.registry import op_tables

    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        Project(Path(tmp), PLAN_TARGETS)
        walls = []
        for _ in range(2):  # cold, then warm
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "buildsys", "plan", "--ops", "--json"], cwd=tmp,
                                  capture_output=True, text=True, env=env, timeout=1200)
            walls.append(round(time.perf_counter() - start, 1))
        coverage = json.loads(proc.stdout)["coverage"]
        sizes = {f.stem[len("table-"):].rsplit("-", 1)[0]: len(json.loads(f.read_text()).get("accepts", []))
                 for f in sorted((Path(tmp) / ".modelbuild/ops").glob("table-*.json"))}  # table-NAME-KEY.json
    reads = {}
    for name in op_tables():  # each in a fresh process: the registry's imports are most of it
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"from buildsys.formats.registry import op_tables; op_tables()[{name!r}].read()"],
                       cwd=REPO, capture_output=True, env=env, timeout=600, check=True)
        reads[name] = round(time.perf_counter() - start, 1)
    lacks = {t: {s: e.get("lacks", e.get("unknown")) for s, e in v["steps"].items()} for t, v in coverage["targets"].items()}
    return {"targets": PLAN_TARGETS.splitlines(), "plan_ops_cold_s": walls[0], "plan_ops_warm_s": walls[1],
            "table_sizes": sizes, "table_read_s": reads, "lacks": lacks}


def main() -> None:
    out = REPO / "benchmarks/results/op_coverage.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    if "--plan-only" in sys.argv:
        results = {**previous, "plan": plan()}
    else:
        results = {"targets": TARGETS.splitlines(), "runs": [run(False), run(True)], "plan": plan()}
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
