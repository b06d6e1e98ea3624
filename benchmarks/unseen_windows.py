"""Window-attention architectures no matrix, test or doc of modelbuild named, to Core ML (`platform: ios`).

The rule, fixed before the first run (issue 56): timm's window- or grid-attention families absent from the model
matrix (benchmarks/coverage/zoo.py), each at a small width from timm's own constructor (seeded, no download) —
Swin v2 CR, DaViT, EfficientViT-M (MSRA's cascaded group attention) and Swin-S3. GC ViT and NesT were in the rule
too and are left out: their constructors refuse the small-width arguments. Each model to `platform: ios` (Core ML
fp16, checked by the MIL reference off macOS) at [batch, 3, 224, 224], in one project, `build -k -j 1 --json`, with
the modelbuild checkout given by `--code` first on the path (a worktree of an older commit measures "before").

    PYTHONPATH=. python benchmarks/unseen_windows.py --label after
    git worktree add /tmp/before 0e828d9 && PYTHONPATH=. python benchmarks/unseen_windows.py --code /tmp/before --label before
    PYTHONPATH=. python benchmarks/unseen_windows.py --summarize DIR --label L   # a finished run's build.jsonl
    PYTHONPATH=. python benchmarks/unseen_windows.py --video --label after        # torchvision's video Swin, 5 formats

`--video`: torchvision's video Swin (SwinTransformer3d at a small width: its window partition is rank 8) at
[batch, 3, 8, 32, 32] to the five families a video model ships to (server ONNX, ios, ExecuTorch, TFLite, OpenVINO).

Needs timm from the matrix's package directory (/work/matrix-site; benchmarks/coverage/site_packages.py). Appends
to benchmarks/results/unseen_windows.json: per target the status, route, failed routes and size ratio; node-seconds,
failed node-seconds and wall time of the build.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("MODELBUILD_MATRIX_SITE", "/work/matrix-site"))
RESULTS = REPO / "benchmarks" / "results" / "unseen_windows.json"

FACTORY = '''\
import torch

try:
    torch.ops.torchvision.nms
except Exception:  # the matrix's torchvision has no compiled ops; timm imports it
    _lib = torch.library.Library("torchvision", "DEF")
    _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")

SPECS = {
    "swinv2_cr": ("swinv2_cr_tiny_ns_224", dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))),
    "davit": ("davit_tiny", dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8))),
    "efficientvit_m": ("efficientvit_m0", dict()),
    "swin_s3": ("swin_s3_tiny_224", dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))),
}


def video_swin():
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    torch.manual_seed(0)
    return SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                             window_size=[2, 4, 4], num_classes=10).eval()


def build(name):
    import timm

    torch.manual_seed(0)
    arch, kwargs = SPECS[name]
    return timm.create_model(arch, pretrained=False, num_classes=10, **kwargs).eval()
'''
MODELS = ("swinv2_cr", "davit", "efficientvit_m", "swin_s3")


VIDEO = """models:
  video_swin:
    source: {factory: 'windows:video_swin'}
    inputs: [{name: x, shape: [batch, 3, 8, 32, 32]}]
    outputs: [{name: y, kind: scores}]
targets:
  video_swin-server: {model: video_swin, format: onnx}
  video_swin-ios: {model: video_swin, platform: ios}
  video_swin-executorch: {model: video_swin, format: executorch}
  video_swin-tflite: {model: video_swin, format: tflite}
  video_swin-openvino: {model: video_swin, format: openvino}
"""


def deploy() -> str:
    lines = ["models:"]
    for name in MODELS:
        lines += [f"  {name}:", f"    source: {{factory: 'windows:build', kwargs: {{name: {name}}}}}",
                  "    inputs: [{name: x, shape: [batch, 3, 224, 224]}]", "    outputs: [{name: y, kind: scores}]"]
    lines.append("targets:")
    lines += [f"  {name}-ios: {{model: {name}, platform: ios}}" for name in MODELS]
    return "\n".join(lines) + "\n"


def summarize(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target and for the whole build, from `build --json`'s events."""
    timed = [e for e in events if e.get("event") in ("built", "failed", "analysed") and e.get("seconds")]
    summary = next((e for e in events if e.get("event") == "summary"), {})
    dropped: dict[str, list[str]] = {}
    for e in events:
        if e.get("event") == "rerouted" and e.get("target"):
            dropped.setdefault(e["target"], []).append(e.get("error", "")[:300])
    targets = {name: {"status": entry.get("status"), "route": " → ".join(entry.get("route") or []),
                      "size_ratio": entry.get("size_ratio"), "dropped": dropped.get(name, [])}
               for name, entry in (summary.get("targets") or {}).items()}
    return {"targets": targets, "node_seconds": round(sum(e["seconds"] for e in timed), 1),
            "failed_node_seconds": round(sum(e["seconds"] for e in timed if e["event"] == "failed"), 1),
            "wall_s": summary.get("seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="the modelbuild checkout to build with")
    parser.add_argument("--label", required=True)
    parser.add_argument("--summarize", type=Path, help="summarize a finished run's DIR/build.jsonl instead of running")
    parser.add_argument("--video", action="store_true", help="torchvision's video Swin to five families instead")
    args = parser.parse_args(argv)
    if args.summarize:
        lines = (args.summarize / "build.jsonl").read_text().splitlines()
    else:
        if not (SITE / "timm").is_dir():
            sys.exit(f"needs timm in {SITE} (benchmarks/coverage/site_packages.py says how to install it)")
        with tempfile.TemporaryDirectory(prefix="windows-") as tmp:
            root = Path(tmp)
            (root / "windows.py").write_text(FACTORY)
            (root / "deploy.yaml").write_text(VIDEO if args.video else deploy())
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.code), str(SITE)])}
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "buildsys", "build", "-k", "-j", "1", "--json"], cwd=root,
                                  env=env, capture_output=True, text=True)
            print(f"build exited {proc.returncode} after {time.perf_counter() - started:.0f} s", file=sys.stderr)
            lines = proc.stdout.splitlines()
    result = {"label": args.label, "set": "video" if args.video else "windows", "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
              **summarize([json.loads(line) for line in lines if line.startswith("{")])}
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([*history, result], indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
