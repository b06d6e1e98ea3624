"""Refusals and their lowering answers (docs/lowering.md), measured: each model to a target as written, then with the
answer the step's classifier (`Step.answers`) picks from that refusal set in deploy.yaml.

    python benchmarks/lowering_answers.py [--field] [--out benchmarks/results/lowering_answers.json]

The tests' models (tests/helpers/lowering_models.py) always; with `--field`, public architectures from the package
directory /work/matrix-site (ultralytics' YOLO11n, transformers' wav2vec2 and Swin from small configs; no
downloads), put on the workers' PYTHONPATH after this checkout, torchvision's two ops declared before any import.
One project, `build -k -j 1 --json`; per target: delivered or not, the check's verdict and largest error, the refusal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from buildsys.storage.lock import Lock  # noqa: E402
SITE = Path("/work/matrix-site")

FIELD = '''\
import torch


def _declare():
    try:
        torch.ops.torchvision.nms
    except Exception:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        _declare.lib = lib


class First(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        out = self.m(x)
        return out[0] if isinstance(out, (list, tuple)) else out


class Hidden(torch.nn.Module):
    def __init__(self, m, key):
        super().__init__()
        self.m, self.key = m, key

    def forward(self, x):
        return self.m(**{self.key: x}).last_hidden_state


def yolo11n():
    _declare()
    from ultralytics.nn.tasks import DetectionModel
    torch.manual_seed(0)
    return First(DetectionModel("yolo11n.yaml", verbose=False)).eval()


def wav2vec2():
    _declare()
    import transformers as T
    torch.manual_seed(0)
    cfg = T.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                           num_conv_pos_embedding_groups=2)
    return Hidden(T.Wav2Vec2Model(cfg), "input_values").eval()


def swin():
    _declare()
    import transformers as T
    torch.manual_seed(0)
    cfg = T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)
    return Hidden(T.SwinModel(cfg), "pixel_values").eval()

'''

MODELS = {
    "warp": ("lowering_models:warp", "[batch, 3, 16, 16]"),
    "scorer": ("lowering_models:per_sample", "[batch, 6]"),
    "har": ("lowering_models:gru_har", "[batch, 9, 90]"),
    "audio": ("lowering_models:audio_frontend", "[batch, 400]"),
    "points": ("lowering_models:point_cloud", "[batch, 32, 3]"),
}
FIELD_MODELS = {
    "yolo": ("field:yolo11n", "[batch, 3, 64, 64]"),
    "w2v": ("field:wav2vec2", "[batch, 400]"),
    "swin": ("field:swin", "[batch, 3, 32, 32]"),
}

#: (target, model, format, how the target is pinned, the answer's options or None as written)
CASES: list[tuple[str, str, str, str, dict[str, Any] | None]] = [
    ("warp-coreml-pt2", "warp", "coreml", "via: [pt2]", {"pt2": {"decompose": ["grid_sampler_2d"]}}),
    ("points-coreml", "points", "coreml", "routes: [[]]", {"torchscript": {"decompose": ["cdist"]}}),
    ("points-tflite", "points", "tflite", "routes: [[]]", None),
    ("points-litert", "points", "tflite", "via: [pt2]", {}),
    ("scorer-pt2", "scorer", "pt2", "routes: [[]]", None),
    ("scorer-et", "scorer", "executorch", "routes: [[]]", {"pt2": {"static_fallback": True}}),
    ("har-tflite", "har", "tflite", "routes: [[]]", {"saved_model": {"enable_rnn_unroll": True}}),
    ("audio-coreml", "audio", "coreml", "routes: [[]]", {"coreml": {"static_shapes": True}}),
    ("audio-coreml-pt2", "audio", "coreml", "via: [pt2]", {"coreml": {"static_shapes": True}}),
]
FIELD_CASES: list[tuple[str, str, str, str, dict[str, Any] | None]] = [
    ("yolo-pt2", "yolo", "pt2", "routes: [[]]", None),
    ("yolo-et", "yolo", "executorch", "routes: [[]]", {"pt2": {"static_fallback": True}}),
    ("yolo-coreml", "yolo", "coreml", "routes: [[]]", None),
    ("yolo-coreml-pt2", "yolo", "coreml", "via: [pt2]", {"pt2": {"static_fallback": True},
                                                        "coreml": {"static_shapes": True}}),
    ("yolo-tflite", "yolo", "tflite", "routes: [[]]", None),
    ("yolo-litert", "yolo", "tflite", "via: [pt2]", {"pt2": {"static_fallback": True}}),
    ("w2v-coreml", "w2v", "coreml", "routes: [[]]", {"coreml": {"static_shapes": True}}),
    ("w2v-coreml-pt2", "w2v", "coreml", "via: [pt2]", {"coreml": {"static_shapes": True}}),
    ("swin-coreml-pt2", "swin", "coreml", "via: [pt2]", {"coreml": {"static_shapes": True}}),
]


def deploy(models: dict[str, tuple[str, str]], cases: list[tuple[str, str, str, str, dict[str, Any] | None]]) -> str:
    """deploy.yaml: every model, and each case as written (`NAME`) and, where it has one, answered (`NAME-answered`)."""
    lines = ["models:"]
    for name, (factory, shape) in models.items():
        lines += [f"  {name}:", f"    source: {{factory: '{factory}'}}", f"    inputs: [{{name: x, shape: {shape}}}]",
                  "    outputs: [{name: y}]"]
    lines.append("targets:")
    for target, model, fmt, pin, answer in cases:
        lines.append(f"  {target}: {{model: {model}, format: {fmt}, {pin}, rewrites: []}}")
        if answer:
            lines.append(f"  {target}-answered: {{model: {model}, format: {fmt}, {pin}, rewrites: [], "
                         f"options: {json.dumps(answer)}}}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--field", action="store_true", help="also the public architectures of /work/matrix-site")
    parser.add_argument("--only", nargs="*", default=None, help="just the cases whose target starts with one of these")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lowering_answers.json")
    args = parser.parse_args(argv)
    models, cases = dict(MODELS), list(CASES)
    env = {**os.environ, "MODELBUILD_OP_COVERAGE": "0", "MODELBUILD_WORKER_MEMORY": "3G",
           "PYTHONPATH": str(REPO)}
    if args.field:
        if not (SITE / "ultralytics").is_dir():
            sys.exit(f"--field needs ultralytics in {SITE}: pip install --no-deps --target {SITE} ultralytics==8.4.190 "
                     "opencv-python-headless (transformers comes with the main install)")
        models.update(FIELD_MODELS)
        cases += FIELD_CASES
        env["PYTHONPATH"] += os.pathsep + str(SITE)
    if args.only:
        cases = [c for c in cases if c[0].startswith(tuple(args.only))]
        models = {m: models[m] for m in {c[1] for c in cases}}
    with tempfile.TemporaryDirectory(prefix="lowering-") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "tests" / "helpers" / "lowering_models.py", root / "lowering_models.py")
        (root / "field.py").write_text(FIELD)
        (root / "deploy.yaml").write_text(deploy(models, cases))
        plan = subprocess.run([sys.executable, "-m", "buildsys", "plan", "--json"], cwd=root, env=env,
                              capture_output=True, text=True)
        nodes = json.loads(plan.stdout)["nodes"]
        deps = {n["node"]: n["deps"] for n in nodes}  # each target's nodes (pinned routes: known before the build)
        step_of = {n["node"]: n.get("step") for n in nodes}
        proc = subprocess.run([sys.executable, "-m", "buildsys", "build", "-k", "-j", "1", "--timeout", "900", "--json"],
                              cwd=root, env=env, capture_output=True, text=True)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        checks = Lock.read(root / "deploy.lock").nodes  # with the build record's metrics
    from buildsys.formats import steps
    from buildsys.lowering.decompose import decomposable_ops

    table = set(decomposable_ops())
    failures: dict[str, str] = {}
    for event in events:  # a node's first failure: a later target's "failed earlier in this build: …" repeats it
        if event.get("event") == "failed":
            failures.setdefault(event["node"], event["error"])
    summary: dict[str, Any] = next((e["targets"] for e in events if e.get("event") == "summary"), {})
    if not summary:
        sys.exit(f"the build gave no summary:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows = []
    for target, entry in sorted(summary.items()):
        check = checks.get(f"verify:{target}", {})
        outputs = (check.get("metrics") or {}).get("outputs") or {}
        errors = [m["max_abs"]["observed"] for m in outputs.values() if isinstance(m.get("max_abs"), dict)]
        chain, todo = [], [f"verify:{target}"]
        while todo:  # the target's nodes, its check first
            chain.append(todo.pop(0))
            todo += [d for d in deps.get(chain[-1], []) if d not in chain]
        refused = [node for node in reversed(chain) if node in failures]
        answers = [a.label for a in steps()[step_of[refused[0]]].answers(failures[refused[0]], decomposable=table)] \
            if refused and step_of.get(refused[0]) in steps() else []
        rows.append({"target": target, "status": entry["status"], "route": entry["route"],
                     "caveats": [c["what"] for c in entry.get("caveats", [])],
                     "max_abs": max(errors) if errors else None,
                     "refusal": f"{refused[0]}: {failures[refused[0]]}" if refused else None, "answers": answers})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"field": args.field, "targets": rows}, indent=1) + "\n")
    for row in rows:
        print(f"{row['target']:26} {row['status'][:14]:14} {row['max_abs'] if row['max_abs'] is not None else '':<12} "
              f"{(row['refusal'] or '; '.join(row['caveats']))[:150]}" + (f" → {row['answers']}" if row['answers'] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
