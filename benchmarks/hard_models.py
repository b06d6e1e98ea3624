"""Hard models, built cold: targets delivered, routes tried, seconds in failed nodes, repaired recipes.

The models are the test suite's own hard cases: the keyword spotter (a torch.stft log-mel frontend) and the
recommender (nn.EmbeddingBag with offsets, plus dense features) of tests/rewrites/test_rewrite_routes.py, and the
attention classifier of tests/planning/test_repair.py (a TinyViT whose outlier channel makes full int8 miss top-1
0.9). Each goes to the platforms users ask for: `server` (ONNX Runtime), `android` (TFLite), `ios` (Core ML,
checked by the MIL reference interpreter on Linux), ExecuTorch fp32 (and int8 for the ViT, which has
calibration data) and `intel` (OpenVINO; NNCF int8 for the ViT). One cold `build -k --json` with an empty
cache; then per target: delivered or not, the route that made it, every route tried before it and why it was
dropped, the repair recipe where one won, and the node-seconds spent in nodes that failed.

    PYTHONPATH=. python benchmarks/hard_models.py [--jobs N]

Writes benchmarks/results/hard_models.json; docs/mobile.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.planning.test_repair import DEPLOY as VIT_MODEL, VIT  # noqa: E402
from tests.rewrites.test_rewrite_routes import AUDIO, MODELS, RECSYS  # noqa: E402

#: The spotter and the recommender as tests/rewrites/test_rewrite_routes.py declares them, and the ViT of
#: tests/planning/test_repair.py.
DEPLOY = MODELS.replace("targets:\n", VIT_MODEL.removeprefix("models:\n"))

#: (model, target suffix, the target's fields). The ViT's int8 targets are where repair is needed.
TARGETS = [
    (model, name, fields)
    for model in ("spotter", "recsys", "vit")
    for name, fields in [
        ("server", "platform: server"),
        ("android", "format: tflite"),
        ("ios", "platform: ios"),
        ("executorch", "format: executorch"),
        ("intel", "format: openvino"),
    ]
] + [
    ("vit", "server-int8", "format: onnx, precision: int8, routes: [[onnx]], options: {onnx: {dynamo: false}, "
                           "onnx-int8: {method: static}}"),
    ("vit", "intel-int8", "format: openvino, precision: int8, options: {onnx: {dynamo: false}}"),
    ("vit", "executorch-int8", "format: executorch, precision: int8"),
    ("vit", "android-int8", "platform: android"),  # full int8 TFLite: the android preset with calibration data
]


def write_project(root: Path) -> list[str]:
    (root / "audio.py").write_text(AUDIO)
    (root / "recsys.py").write_text(RECSYS)
    (root / "vit.py").write_text(VIT)
    rng = np.random.default_rng(0)
    np.savez(root / "rec.npz", ids=rng.integers(0, 100, (8, 5)).astype("int64"),
             features=rng.standard_normal((8, 4)).astype("float32"))
    np.savez(root / "cal.npz", tokens=np.random.default_rng(0).standard_normal((64, 8, 16)).astype("float32"))
    np.savez(root / "val.npz", tokens=np.random.default_rng(1).standard_normal((64, 8, 16)).astype("float32"))
    names, lines = [], []
    for model, suffix, fields in TARGETS:
        name = f"{model}-{suffix}"
        names.append(name)
        lines.append(f"  {name}: {{model: {model}, {fields}}}\n")
    (root / "deploy.yaml").write_text(DEPLOY + "".join(lines))
    return names


def run(jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = write_project(root)
        env = {**os.environ, "NO_COLOR": "1", "MODELBUILD_CACHE": str(root / ".modelbuild"),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "buildsys", "build", "-k", "-j", str(jobs), "--json"], cwd=root,
                              capture_output=True, text=True, env=env, timeout=5400)
        wall = time.perf_counter() - start
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        from buildsys.storage.lock import Lock

        lock = Lock.read(root / "deploy.lock", root / ".modelbuild" / "deploy.record.json").as_dict()  # with the record
    failed = [e for e in events if e.get("event") == "failed" and e.get("seconds")]
    ran = [e for e in events if e.get("event") in ("built", "failed") and e.get("seconds")]
    rows = {}
    for name in names:
        delivered = lock.get("targets", {}).get(name)
        dropped = lock.get("routes", {}).get(name, {}).get("dropped", [])
        check = lock.get("nodes", {}).get(f"verify:{name}", {}).get("metrics", {})
        route = delivered["route"] if delivered else None
        rows[name] = {
            "delivered": bool(delivered), "route": " → ".join(route) if route else None,
            "routes_tried": len(dropped) + (1 if delivered else 0),
            "dropped": [f"{' → '.join(r['route'])}: {r['reason']}" for r in dropped],
            "repaired": next((stop for stop in route or [] if "repair" in stop), None),
            "runtime": check.get("runtime"), "caveats": [c["what"] for c in check.get("caveats", [])],
        }
    return {"jobs": jobs, "returncode": proc.returncode, "wall_s": round(wall, 1),
            "targets": len(names), "delivered": sum(r["delivered"] for r in rows.values()),
            "node_s": round(sum(e["seconds"] for e in ran), 1),
            "failed_nodes": len(failed), "failed_node_s": round(sum(e["seconds"] for e in failed), 1),
            "failed": {e["node"]: round(e["seconds"], 1) for e in failed}, "by_target": rows,
            "host": f"{platform.machine()}, {os.cpu_count()} CPUs", "stderr_tail": proc.stderr[-2000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    result = run(args.jobs)
    out = REPO / "benchmarks/results/hard_models.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "stderr_tail"}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
