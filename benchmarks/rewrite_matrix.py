"""Before/after matrix of the op rewrites: which converters take the keyword spotter and the recommender.

For each model (tests/helpers/rewrite_models.py) as written ("before") and with its rewrites applied
(`buildsys.rewrites.apply`, "after"), each converter runs in its own subprocess (a crash or a hang
costs one cell) and the artifact is run where a runtime exists on Linux, against the PyTorch output:

- onnx-legacy: torch.onnx.export(dynamo=False, opset 17) → ONNX Runtime
- onnx-dynamo: torch.onnx.export(dynamo=True) → ONNX Runtime
- coreml:      torch.jit.trace → ct.convert(convert_to="mlprogram") → the MIL reference interpreter
               (buildsys.formats.coreml.mil: NumPy, not Apple's runtime)
- coreml-export: torch.export(strict=False).run_decompositions() → ct.convert → the MIL reference interpreter
- executorch:  torch.export(strict=False) → to_edge_transform_and_lower(XnnpackPartitioner) → .pte →
               Runtime.get().load_program → forward
- litert:      litert_torch.convert → .tflite → LiteRT interpreter
- openvino:    openvino.convert_model(the onnx-dynamo file, else the onnx-legacy one) → CPU plugin
- onnx2tf:     onnx2tf on the onnx-legacy file → float32 .tflite → LiteRT interpreter

    python benchmarks/rewrite_matrix.py                    # all cells; JSON to benchmarks/results/rewrite_matrix.json
    python benchmarks/rewrite_matrix.py --ops --out benchmarks/results/rewrite_ops.json   # one-op modules
    python benchmarks/rewrite_matrix.py --cell --model spotter --variant before --converter coreml   # one cell

A cell is "ok" when the artifact was made and (where a runtime ran) its max abs error against PyTorch is
within 1e-4 x max|reference| + 1e-5; the error text of a refusal is kept whole (the refusal tests use it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.rewrite_converters import RUNNERS, nchw  # noqa: E402

MODELS = ("spotter", "recommender")
#: The one-op modules of tests/helpers/rewrite_ops.py (--ops): which converters refuse each removed op.
OPS = ("stft", "complex", "embedding-bag", "diff", "roll", "unfold", "fold", "sdpa", "fft-filter", "fft2", "istft",
       "complex-einsum", "scatter-add", "scatter-reduce", "index-add", "index-put", "index-copy", "gru", "lstm", "rnn",
       "lstm-cell", "cdist", "pdist", "pairwise-distance", "triu")
VARIANTS = ("before", "after")
CONVERTERS = ("onnx-legacy", "onnx-dynamo", "coreml", "coreml-export", "executorch", "litert", "openvino", "onnx2tf")
REWRITES = {"spotter": ("stft", "complex"), "recommender": ("embedding-bag",)}


def _model(name: str, variant: str) -> tuple[Any, tuple[Any, ...]]:
    from tests.helpers import rewrite_models as rm
    from tests.helpers.rewrite_ops import cases

    rewrite_names = REWRITES.get(name)
    if name in OPS:
        module, args, _, rewrite = cases()[name]
        rewrite_names = (rewrite,)
    else:
        module, args = (rm.KeywordSpotter(), rm.spotter_inputs()) if name == "spotter" else \
            (rm.Recommender(), rm.recommender_inputs())
    module = module.eval()
    if variant == "after":
        from buildsys import rewrites
        module = rewrites.apply(module, rewrite_names or ())
    return module, args


def cell(model: str, variant: str, converter: str) -> dict[str, Any]:
    """Run one converter on one model variant here; a dict with status, error text, max abs error, seconds."""
    import warnings

    import numpy as np
    import torch

    warnings.simplefilter("ignore")
    module, args = _model(model, variant)
    with torch.no_grad():
        want = module(*args).numpy()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = RUNNERS[converter](module, args, Path(tmp))[0]
        except Exception as exc:
            return {"status": "refused", "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc()[-4000:], "seconds": round(time.perf_counter() - started, 1)}
    try:
        got = nchw(got, want.shape)
    except ValueError:
        return {"status": "wrong", "error": f"output shape {list(np.shape(got))}, PyTorch's {list(want.shape)}",
                "max_abs_err": float("inf"), "seconds": round(time.perf_counter() - started, 1)}
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    allowed = 1e-4 * float(np.max(np.abs(want))) + 1e-5
    return {"status": "ok" if err <= allowed else "wrong", "max_abs_err": err, "allowed": allowed,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS + OPS, action="append")
    parser.add_argument("--ops", action="store_true", help="the one-op modules instead of the two models")
    parser.add_argument("--variant", choices=VARIANTS, action="append")
    parser.add_argument("--converter", choices=CONVERTERS, action="append")
    parser.add_argument("--cell", action="store_true", help="run exactly one cell in this process, print its JSON")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rewrite_matrix.json")
    opts = parser.parse_args()
    if opts.cell:
        print("CELL " + json.dumps(cell(opts.model[0], opts.variant[0], opts.converter[0])))
        return
    results: dict[str, Any] = json.loads(opts.out.read_text()) if opts.out.exists() else {}
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for model in opts.model or (OPS if opts.ops else MODELS):
        for variant in opts.variant or VARIANTS:
            for converter in opts.converter or CONVERTERS:
                cmd = [sys.executable, __file__, "--cell", "--model", model, "--variant", variant, "--converter", converter]
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
                    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("CELL ")), "")
                    result = json.loads(line[5:]) if line else {
                        "status": "crashed", "error": f"exit {done.returncode}: {done.stderr[-3000:]}"}
                except subprocess.TimeoutExpired:
                    result = {"status": "crashed", "error": "timed out after 900 s"}
                results.setdefault(model, {}).setdefault(variant, {})[converter] = result
                print(f"{model:12} {variant:7} {converter:12} {result['status']:8} "
                      f"{result.get('max_abs_err', '')} {result.get('error', '')[:160]!r}", flush=True)
                opts.out.parent.mkdir(parents=True, exist_ok=True)
                opts.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(ops_table(results) if opts.ops else table(results))


def _mark(result: dict[str, Any] | None) -> str:
    if result is None:
        return "·"
    return {"ok": "ok", "wrong": "wrong", "refused": "refused", "crashed": "crashed"}.get(result["status"], "?")


def ops_table(results: dict[str, Any]) -> str:
    """The one-op modules as a Markdown grid: a row per op, a column per converter, "before → after"."""
    rows = ["| op (rewrite) | " + " | ".join(CONVERTERS) + " |", "|---|" + "---|" * len(CONVERTERS)]
    from tests.helpers.rewrite_ops import cases

    known = cases()
    for name, variants in results.items():
        if name not in known:
            continue
        cells = []
        for converter in CONVERTERS:
            before, after = (variants.get(v, {}).get(converter) for v in VARIANTS)
            cells.append(_mark(before) if after is None else f"{_mark(before)} → {_mark(after)}")
        rows.append(f"| {name} ({known[name][3]}) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def table(results: dict[str, Any]) -> str:
    """The Markdown before/after table."""
    rows = ["| model | converter | before | after |", "|---|---|---|---|"]
    for model, variants in results.items():
        for converter in CONVERTERS:
            cells = []
            for variant in VARIANTS:
                r = variants.get(variant, {}).get(converter)
                if r is None:
                    cells.append("—")
                elif r["status"] in ("ok", "wrong"):
                    cells.append(f"{r['status']} (max err {r['max_abs_err']:.1e})")
                else:
                    cells.append(f"{r['status']}: {r['error'].splitlines()[0][:90]}")
            rows.append(f"| {model} | {converter} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
