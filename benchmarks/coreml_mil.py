"""Core ML numerics without a Mac: every Core ML deliverable of the example and of the zoo, run through the MIL reference interpreter.

Builds (in scratch copies) the shipped example's `ios` target plus its fp32 / int8 / palettized
variants for both example models, and each zoo model's Core ML fp16 / fp32 / int8 / 4-bit palette
targets; then runs every delivered .mlpackage through the `coreml-mil` runtime on the check's own
reference inputs and compares with the PyTorch reference under the check's resolved tolerance.
Writes benchmarks/results/coreml_mil.json (the numbers behind the table in the report).

    python benchmarks/coreml_mil.py                         # build what is missing in /tmp/mb-coreml-mil, measure
    python benchmarks/coreml_mil.py --models example minilm  # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "benchmarks" / "zoo"
RESULTS = REPO / "benchmarks" / "results" / "coreml_mil.json"
ZOO_MODELS = ("mtcnn_pnet", "silero_vad", "voice_encoder", "mobilenet_v2", "minilm")
EXAMPLE_TARGETS = {  # the shipped `ios` target, and the other Core ML presets on both example models
    "ios": "platform: ios", "ios-fp32": "recipe: ios-fp32", "ios-int8": "recipe: ios-int8",
    "ios-palettized": "recipe: ios-palettized", "har-ios": "platform: ios", "har-ios-fp32": "recipe: ios-fp32",
    "har-ios-int8": "recipe: ios-int8", "har-ios-palettized": "recipe: ios-palettized"}
ZOO_TARGETS = {"coreml-fp16": "precision: fp16", "coreml-fp32": "precision: fp32", "coreml-int8": "precision: int8",
               "coreml-palettized": "precision: int8\n    options: {coreml-int8: {weight_compression: palettize4}}"}


def prepare_example(root: Path) -> tuple[Path, list[str]]:
    if not root.exists():
        root.mkdir(parents=True)
        for name in ("deploy.yaml.example", "recipes", "examples"):
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, root / name)
        extra = "".join(f"  {t}:\n    model: {'har' if t.startswith('har') else 'digits'}\n    {body}\n"
                        for t, body in EXAMPLE_TARGETS.items() if t != "ios")
        text = (root / "deploy.yaml.example").read_text()
        (root / "deploy.yaml.example").write_text(text.replace("\nbundles:", "\n" + extra + "\nbundles:", 1))
    return root / "deploy.yaml.example", list(EXAMPLE_TARGETS)


def prepare_zoo(model: str, root: Path) -> tuple[Path, list[str]]:
    if not root.exists():
        sys.path.insert(0, str(ZOO))
        import records  # benchmarks/zoo/records.py: the scratch copy with its data

        records.prepare(model, root)
        head = (root / "deploy.yaml").read_text().split("targets:")[0]
        body = "".join(f"  {t}:\n    model: {model}\n    format: coreml\n    {p}\n" for t, p in ZOO_TARGETS.items())
        (root / "deploy.yaml").write_text(head + "targets:\n" + body)
    return root / "deploy.yaml", list(ZOO_TARGETS)


def build(deploy: Path, targets: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "buildsys", "-f", deploy.name, "build", "-j", "1", "-k", *targets],
                   cwd=deploy.parent, env=env, check=False, stdout=subprocess.DEVNULL)


def measure(deploy: Path, targets: list[str]) -> dict[str, Any]:
    """Each delivered Core ML package through coreml-mil, compared like the check compares."""
    import numpy as np

    from buildsys.config.load import load
    from buildsys.config.data import Batch
    from buildsys.formats import get_runtime
    from buildsys.formats.precision import format_name
    from buildsys.comparison import compare

    root = deploy.parent
    project = load(deploy).project
    lock = json.loads((root / "deploy.lock").read_text())
    rows: dict[str, Any] = {}
    for name in targets:
        package = root / "artifacts" / name / "model.mlpackage"
        check = lock["nodes"].get(f"verify:{name}")
        if not package.is_dir() or check is None:
            rows[name] = {"delivered": False}
            continue
        target = project.targets[name]
        model = project.models[target.model]
        reference = next(n for n in lock["nodes"].values() if n.get("tree") == check["components"]["inputs"]["reference"])
        digest = reference["files"][0][1]
        with np.load(root / ".modelbuild" / "cas" / digest[:2] / digest[2:]) as ref:
            inputs = {i.name: ref[f"input:{i.name}"] for i in model.inputs}
            expected = {o.name: ref[f"output:{o.name}"] for o in model.outputs}
            labels = ref["labels"] if "labels" in ref.files else None
        started = time.perf_counter()
        with get_runtime("coreml-mil").load(package, model, root) as session:
            observed = session.run_all(Batch(inputs, labels, "reference"))
            diagnostics = session.diagnostics()
        seconds = time.perf_counter() - started
        tolerances = check["components"]["acceptance"]["outputs"]
        outputs = {o.name: compare(o.name, o.kind, expected[o.name], got, tolerances.get(o.name), labels)
                   for o, got in zip(model.outputs, observed)}
        rows[name] = {
            "delivered": True, "format": format_name(target.format, target.precision),
            "passed": all(bool(r) for r in outputs.values()), "samples": len(next(iter(inputs.values()))),
            "seconds": round(seconds, 2), "ops": diagnostics["ops"], "compute": diagnostics["compute_precision"],
            "fp16_findings": [f["text"] for f in diagnostics["fp16_findings"]],
            "outputs": {n: {m.name: m.observed for m in r.metrics} | ({"problem": r.problem} if r.problem else {})
                        for n, r in outputs.items()}}
        print(name, json.dumps(rows[name]["outputs"]), "passed" if rows[name]["passed"] else "MISSED", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mb-coreml-mil"))
    parser.add_argument("--models", nargs="*", default=["example", *ZOO_MODELS])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for model in args.models:
        deploy, targets = (prepare_example(args.dir / "example") if model == "example"
                           else prepare_zoo(model, args.dir / model))
        build(deploy, targets)
        print(f"== {model}", flush=True)
        results[model] = measure(deploy, targets)
    import coremltools
    import numpy

    results["_host"] = {"platform": platform.platform(), "python": platform.python_version(),
                        "coremltools": coremltools.__version__, "numpy": numpy.__version__}
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
