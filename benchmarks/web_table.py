"""Browser table: the shipped digits CNN for ONNX Runtime Web (fp32, int8) next to TensorFlow.js, as Markdown.

Copies examples/digits into a scratch project, builds and verifies three targets with `modelbuild build`
(web, web-int8, tfjs), times them with `modelbuild bench` (batch 1 and batch 64: the check harness's
round trip, Python → page → Python, included), then opens each artifact in its runtime's headless
Chromium page and times the shipped loader's `predict()` inside the page (performance.now(), no
harness), and prints a Markdown table: artifact bytes, the library bytes a page downloads (raw and
gzip), conversion seconds of the format's own step, what the check measured against PyTorch and
the latencies.

    python benchmarks/web_table.py                        # build in /tmp/mb-web, print the table
    python benchmarks/web_table.py --fresh --dir /tmp/x   # delete the directory first (a cold build)

Needs the web and tfjs extras, tensorflowjs (--no-deps), Chromium and the npm packages
(python -m buildsys.formats.web.install).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from buildsys.config.load import load  # noqa: E402
from buildsys.formats import get_runtime  # noqa: E402
from buildsys.formats.tfjs import artifact as tfjs_artifact  # noqa: E402
from buildsys.formats.web import artifact as web_artifact  # noqa: E402
from buildsys.storage.lock import Lock  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from openvino_table import MODEL  # noqa: E402  (the digits model, as every example table declares it)

TARGETS = {  # target: (label, yaml of the target, the node of the format's own step)
    "web": ("ONNX Runtime Web 1.30.0 fp32 (wasm)", "format: web", "digits/web"),
    "web-int8": ("ONNX Runtime Web 1.30.0 int8 (static QDQ, per channel; wasm)",
                 "format: web\n    precision: int8\n    options:\n      onnx-int8: {method: static, per_channel: true}",
                 "digits/web-int8"),
    "tfjs": ("TensorFlow.js 4.22.0 fp32 (wasm backend)", "format: tfjs", "digits/tfjs"),
}
#: What each runtime's page downloads besides the artifact: onnxruntime-web's three files; tfjs's three
#: ES modules and the one wasm binary a page that is not cross-origin isolated fetches (SIMD, no threads).
LIBRARIES = {"web": lambda: [web_artifact.ort_web_dist() / n for n in web_artifact.ORT_FILES],
             "tfjs": lambda: [p for n, p in tfjs_artifact.site_sources().items()
                              if n.endswith(".js") or n == "tfjs-backend-wasm-simd.wasm"]}

#: Time the shipped loader's predict() in the page: `blocks` blocks of `calls` calls on a batch of `batch`
#: after `warmup` calls; returns ms per call of each block (a page that is not cross-origin isolated
#: sees performance.now() in 0.1 ms steps, so single calls of a small model cannot be timed alone).
#: A tfjs output is read back (data()) so its computation is inside the measurement, then disposed.
IN_PAGE = """async ({blocks, calls, warmup, batch}) => {
  const { predict } = await import("./model/model.js");
  const inputs = {};
  for (const s of window.model.signature.inputs) {
    const dims = s.shape.map((d) => (typeof d === "number" ? d : batch));
    inputs[s.name] = { data: new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(0.5), dims };
  }
  const once = async () => {
    const out = await predict(window.model, inputs);
    for (const t of Object.values(out)) if (typeof t.data === "function") { await t.data(); t.dispose(); }
  };
  for (let i = 0; i < warmup; i++) await once();
  const times = [];
  for (let b = 0; b < blocks; b++) {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) await once();
    times.push((performance.now() - t0) / calls);
  }
  return times;
}"""


def make_project(root: Path, batch: int) -> None:
    (root / "examples").mkdir(parents=True, exist_ok=True)
    if not (root / "examples/digits").exists():
        shutil.copytree(REPO / "examples/digits", root / "examples/digits",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(REPO / "examples/__init__.py", root / "examples/__init__.py")
    body = "".join(f"  {name}:\n    model: digits\n    {spec}\n    acceptance: {{bench_batch: {batch}}}\n"
                   for name, (_, spec, _) in TARGETS.items())
    (root / "deploy.yaml").write_text(MODEL + body)


def modelbuild(root: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "buildsys", *args, "-j", "1"], check=False, cwd=root,
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    print(proc.stdout[-3000:])
    if proc.returncode != 0:
        raise SystemExit(f"modelbuild {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def in_page(root: Path, target: str, runs: int) -> dict[int, float]:
    """Median ms per predict() call in the page over `runs` blocks, batch 1 and batch 64."""
    project = load(root / "deploy.yaml").project
    folder = root / "artifacts" / target
    main = folder / ("model.json" if target == "tfjs" else "model.onnx")
    runtime = get_runtime("tfjs-chromium" if target == "tfjs" else "ort-web-chromium")
    with runtime.load(main, project.models["digits"], root) as session:
        page = session.page  # type: ignore[attr-defined]
        return {b: statistics.median(page.evaluate(IN_PAGE, {"blocks": runs, "calls": 50 if b == 1 else 5,
                                                             "warmup": 10, "batch": b})) for b in (1, 64)}


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mb-web"))
    parser.add_argument("--fresh", action="store_true", help="delete --dir first")
    parser.add_argument("--runs", type=int, default=30, help="in-page timing blocks per batch size")
    args = parser.parse_args()
    if args.fresh and args.dir.exists():
        shutil.rmtree(args.dir)
    bench: dict[int, dict[str, float]] = {}
    for batch in (1, 64):  # bench_batch is part of the bench node's key: one bench run per batch size
        make_project(args.dir, batch)
        modelbuild(args.dir, "build")
        modelbuild(args.dir, "bench")
        nodes = Lock.read(args.dir / "deploy.lock").as_dict()["nodes"]
        bench[batch] = {t: nodes[f"bench:{t}"]["metrics"]["artifact"]["p50_ms"] for t in TARGETS}
    lock = Lock.read(args.dir / "deploy.lock").as_dict()
    record = json.loads((args.dir / ".modelbuild/deploy.record.json").read_text())["nodes"]
    host = lock["nodes"]["bench:web"]["metrics"].get("host", {})
    print(f"host: {host.get('cpu', platform.processor())}, {host.get('cpus', os.cpu_count())} cpus, "
          f"load {host.get('load_avg', '?')}\n")
    rows = ["| artifact | artifact size | library a page loads (gzip) | conversion | max abs err | top-1 agreement | "
            "predict() p50 batch 1 / 64 | check round trip p50 batch 1 / 64 |", "|---|---|---|---|---|---|---|---|"]
    for name, (label, _, node) in TARGETS.items():
        files = [f for f in lock["targets"][name]["files"] if not f[0].lower().startswith("model_card")]
        size = sum(f[2] for f in files)
        lib = LIBRARIES["tfjs" if name == "tfjs" else "web"]()
        raw = sum(p.stat().st_size for p in lib)
        packed = sum(len(gzip.compress(p.read_bytes(), 9)) for p in lib)
        out = lock["nodes"][f"verify:{name}"]["metrics"]["outputs"]["logits"]
        page = in_page(args.dir, name, args.runs)
        seconds = record.get(node, {}).get("built", {}).get("seconds")
        rows.append(f"| {label} | {_kb(size)} ({len(files)} files) | {_kb(raw)} ({_kb(packed)}) | "
                    f"{seconds if seconds is not None else '?'} s | {out['max_abs']['observed']:.3g} | "
                    f"{out['top1_agreement']['observed']:.2%} | {page[1]:.3f} / {page[64]:.2f} ms | "
                    f"{bench[1][name]:.2f} / {bench[64][name]:.2f} ms |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
