"""OpenVINO table: the shipped digits CNN as OpenVINO fp32/fp16/int8 next to ONNX Runtime fp32/int8, as Markdown.

Copies examples/digits into a scratch project, builds and verifies six targets with `modelbuild build`,
times every artifact with `modelbuild bench` (batch 1 and batch 64, one at a time, nothing beside it), and
prints a Markdown table from deploy.lock and its build record: size, what the check measured against the
PyTorch reference on the 359-sample validation set (max abs error, top-1 agreement, accuracy), and p50
latency.

    python benchmarks/openvino_table.py                       # build in /tmp/mb-openvino, print the table
    python benchmarks/openvino_table.py --fresh --dir /tmp/x  # delete the directory first (a cold build)

Needs the server and openvino extras.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from buildsys.storage.lock import Lock

TARGETS = {  # target: (label, yaml of the target)
    "onnx": ("ONNX Runtime fp32", "format: onnx"),
    "onnx-int8": ("ONNX Runtime int8 (static QDQ, per channel)",
                  "format: onnx\n    precision: int8\n    options:\n      onnx-int8: {method: static, per_channel: true}"),
    "ov": ("OpenVINO fp32", "format: openvino"),
    "ov-fp16": ("OpenVINO fp16 (compressed weights)", "format: openvino\n    precision: fp16"),
    "ov-int8": ("OpenVINO int8 (NNCF PTQ)", "format: openvino\n    precision: int8"),
    "ov-int8-ac": ("OpenVINO int8 (NNCF accuracy-aware, max drop 0.005)",
                   "format: openvino\n    precision: int8\n    options:\n      openvino-int8: {max_accuracy_drop: 0.005}"),
}

MODEL = """\
models:
  digits:
    source:
      factory: examples.digits.model:build
      weights: examples/digits/weights.pt
    inputs:
      - {name: image, shape: [batch, 1, 8, 8], dtype: float32, layout: NCHW}
    outputs:
      - {name: logits, kind: scores}
    data:
      example: examples/digits/data/example.npz
      calibration: examples/digits/data/calibration.npz
      validation: examples/digits/data/validation.npz
targets:
"""


def make_project(root: Path, batch: int) -> None:
    (root / "examples").mkdir(parents=True, exist_ok=True)
    if not (root / "examples/digits").exists():
        shutil.copytree(REPO / "examples/digits", root / "examples/digits",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(REPO / "examples/__init__.py", root / "examples/__init__.py")
    body = "".join(f"  {name}:\n    model: digits\n    {spec}\n    acceptance: {{bench_batch: {batch}}}\n"
                   for name, (_, spec) in TARGETS.items())
    (root / "deploy.yaml").write_text(MODEL + body)


def modelbuild(root: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "buildsys", *args], check=False, cwd=root, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    print(proc.stdout[-3000:])
    if proc.returncode != 0:
        raise SystemExit(f"modelbuild {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KB"


def table(root: Path, latencies: dict[int, dict[str, float]]) -> str:
    lock = Lock.read(root / "deploy.lock").as_dict()
    nodes = lock["nodes"]
    rows = ["| artifact | files | size | max abs err | top-1 agreement | accuracy (ref) | p50 batch 1 | p50 batch 64 |",
            "|---|---|---|---|---|---|---|---|"]
    for name, (label, _) in TARGETS.items():
        files = lock["targets"][name]["files"]
        size = sum(f[2] for f in files)
        out = nodes[f"verify:{name}"]["metrics"]["outputs"]["logits"]
        acc = out["accuracy"]["observed"]
        rows.append(f"| {label} | {', '.join(sorted(Path(f[0]).name for f in files))} | {_kb(size)} | "
                    f"{out['max_abs']['observed']:.3g} | {out['top1_agreement']['observed']:.2%} | "
                    f"{acc:.2%} ({out['reference_accuracy']:.2%}) | "
                    + " | ".join(f"{latencies[b][name]:.3f} ms" for b in sorted(latencies)) + " |")
    eager = {b: latencies[b]["eager"] for b in sorted(latencies)}
    rows.append("| PyTorch eager (reference) | | | | | | " + " | ".join(f"{v:.3f} ms" for v in eager.values()) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mb-openvino"))
    parser.add_argument("--fresh", action="store_true", help="delete --dir first")
    args = parser.parse_args()
    if args.fresh and args.dir.exists():
        shutil.rmtree(args.dir)
    latencies: dict[int, dict[str, float]] = {}
    for batch in (1, 64):  # bench_batch is part of the bench node's key: one bench run per batch size
        make_project(args.dir, batch)
        modelbuild(args.dir, "build")
        modelbuild(args.dir, "bench")
        nodes = Lock.read(args.dir / "deploy.lock").as_dict()["nodes"]
        latencies[batch] = {t: nodes[f"bench:{t}"]["metrics"]["artifact"]["p50_ms"] for t in TARGETS}
        latencies[batch]["eager"] = nodes["bench:onnx"]["metrics"]["eager"]["p50_ms"]
    host = nodes["bench:onnx"]["metrics"].get("host", {})
    print(f"host: {host.get('cpu', platform.processor())}, {host.get('cpus', os.cpu_count())} cpus, "
          f"load {host.get('load_avg', '?')}\n")
    print(table(args.dir, latencies))


if __name__ == "__main__":
    main()
