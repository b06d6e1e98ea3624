"""Models built on ops exporters reject, built cold to every float target: delivered, routes, failed node-seconds.

The models (benchmarks/coverage/op_models.py) are small real architectures of the kinds that stop converters:
grid_sample, FFTs and complex weights, cdist, index_add / scatter_add, scans, sort, stft / istft, a recurrent
layer, bucketize. None is named by a rewrite or a test. Each goes to the six target families of the op matrix at
float precision (server ONNX Runtime, android TFLite, ios Core ML (the MIL reference off macOS), ExecuTorch,
intel OpenVINO, web ONNX Runtime Web); one cold `build -k --json` with an empty cache.

    PYTHONPATH=. python benchmarks/op_models.py [--jobs N]

Writes benchmarks/results/op_models.json; docs/coverage.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = REPO / "benchmarks" / "coverage" / "op_models.py"
#: The op matrix's families, as deploy.yaml target fields.
FAMILIES = {"server": "format: onnx", "android": "format: tflite", "ios": "format: coreml",
            "executorch": "format: executorch", "intel": "format: openvino", "web": "format: web"}


def shapes() -> dict[str, list[tuple[str, list[int]]]]:
    """SHAPES of the models file, read without importing torch (a literal assignment)."""
    import ast

    tree = ast.parse(MODELS.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "SHAPES")
    return ast.literal_eval(node.value)  # type: ignore[arg-type]


def write_project(root: Path) -> list[str]:
    shutil.copyfile(MODELS, root / "op_models.py")
    lines, names = ["models:"], []
    for model, inputs in shapes().items():
        lines += [f"  {model}:", f"    source: {{factory: 'op_models:build', kwargs: {{name: {model}}}}}", "    inputs:"]
        lines += [f"      - {{name: {name}, shape: [batch, {', '.join(map(str, shape))}], dtype: float32}}"
                  for name, shape in inputs]
        lines += ["    outputs:", "      - {name: out, kind: values}"]
    lines.append("targets:")
    for model in shapes():
        for family, fields in FAMILIES.items():
            names.append(f"{model}-{family}")
            lines.append(f"  {model}-{family}: {{model: {model}, {fields}}}")
    (root / "deploy.yaml").write_text("\n".join(lines) + "\n")
    return names


def run(jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = write_project(root)
        env = {**os.environ, "NO_COLOR": "1", "MODELBUILD_CACHE": str(root / ".modelbuild"),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "buildsys", "build", "-k", "-j", str(jobs), "--json"], cwd=root,
                              capture_output=True, text=True, env=env, timeout=7200)
        wall = time.perf_counter() - start
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    summary = events[-1] if events and events[-1].get("event") == "summary" else {"targets": {}}
    failed = [e for e in events if e.get("event") == "failed" and e.get("seconds")]
    ran = [e for e in events if e.get("event") in ("built", "failed") and e.get("seconds")]
    rows = {}
    for name in names:
        got = summary.get("targets", {}).get(name, {})
        route = got.get("route")
        rows[name] = {"status": got.get("status"), "delivered": str(got.get("status", "")).startswith("passed"),
                      "route": " → ".join(route) if route else None,
                      "dropped": [f"{' → '.join(d['route'])}: {d['reason']}" for d in got.get("dropped", [])]}
    node_s = sum(e["seconds"] for e in ran)
    failed_s = sum(e["seconds"] for e in failed)
    return {"jobs": jobs, "returncode": proc.returncode, "wall_s": round(wall, 1), "targets": len(names),
            "delivered": sum(r["delivered"] for r in rows.values()), "node_s": round(node_s, 1),
            "failed_nodes": len(failed), "failed_node_s": round(failed_s, 1),
            "failed_share": round(failed_s / node_s, 3) if node_s else None, "by_target": rows,
            "host": f"{platform.machine()}, {os.cpu_count()} CPUs", "stderr_tail": proc.stderr[-2000:]}


def _code() -> str:
    """The commit measured (with -dirty for uncommitted changes)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout
    return head.strip() + ("-dirty" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    out = REPO / "benchmarks/results/op_models.json"
    result = {"code": _code(), **run(args.jobs)}
    if out.exists():  # the last measurement, kept beside this one for the page's before/after line
        last = json.loads(out.read_text())
        keep = ("code", "delivered", "targets", "node_s", "failed_node_s")
        result["previous"] = {k: last[k] for k in keep} if last.get("code") != result["code"] else \
            last.get("previous")
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    from benchmarks.coverage import render

    render.write(REPO / "docs" / "coverage.md")
    print(json.dumps({k: v for k, v in result.items() if k not in ("stderr_tail", "by_target")}, indent=1))
    for name, row in result["by_target"].items():
        if not row["delivered"]:
            print(f"{name}: {row['status']}", *row["dropped"][-1:], sep="\n  ")


if __name__ == "__main__":
    main()
