"""Failed node-seconds of a cold build with and without op coverage ordering the routes (docs/rewrites.md, "Op
coverage"): the spotter (torch.stft) and the recommender (nn.EmbeddingBag) of tests/test_rewrite_routes.py to
Core ML, ExecuTorch and TFLite through litert-torch, each built from nothing with `build -k -j 1 --json`,
once with MODELBUILD_OP_COVERAGE=0 (the routes in their default order) and once with it on (the op analysis
first, its seconds counted). Writes benchmarks/results/op_coverage.json.

    python benchmarks/op_coverage.py
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
sys.path.insert(0, str(REPO / "tests"))

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
        project = Project(Path(tmp), TARGETS)
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


def main() -> None:
    results = [run(False), run(True)]
    out = REPO / "benchmarks/results/op_coverage.json"
    out.write_text(json.dumps({"targets": TARGETS.splitlines(), "runs": results}, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
