"""LLM generation benchmark: time to first token and decode tokens/s per runtime, beside PyTorch eager.

Builds the tiny trained models of the tests (tests/helpers/llm.py: a Llama-style and a GPT-2-style
decoder, 2 layers, hidden 64, trained for a few seconds on tests/data/llm/tiny.txt, byte-level BPE
tokenizer so that ONNX Runtime GenAI's own tokenizer agrees) for every LLM format there is (ONNX Runtime,
ONNX Runtime GenAI, ExecuTorch fp32 / int8 dynamic / int8 weight-only / int4 8da4w, OpenVINO fp32 / fp16 /
int8 / int4, LiteRT fp32 / int8; Core ML is listed as not run off macOS), checks them, then times each
artifact in its runtime through the same generation loop the checks use (formats/llm/generate.py;
GenAI's own generator for llm-genai), with the peak resident memory the load and the run added, next to
PyTorch eager with transformers' own KV cache (the usual `generate` path) and the no-cache eager
reference. Figures are medians over prompts and repeats; they describe dispatch overhead at this
size far more than arithmetic, and are not a model of a real LLM's speed.

    python benchmarks/llm_generation.py [--dir /tmp/llm-bench] [--repeats 5] [--new-tokens 32]

Results: benchmarks/results/llm_generation.json and the table printed (copied into docs/llm.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: label: (format family, precision, options of that member's step)
TARGETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "onnxruntime": ("llm-onnx", "fp32", {}),
    "onnxruntime-genai": ("llm-genai", "fp32", {}),
    "executorch": ("llm-executorch", "fp32", {}),
    "executorch int8": ("llm-executorch", "int8", {}),
    "executorch int8 weight-only": ("llm-executorch", "int8", {"scheme": "weight-only"}),
    "executorch int4 8da4w": ("llm-executorch", "int4", {"group_size": 32}),
    "openvino": ("llm-openvino", "fp32", {}),
    "openvino fp16": ("llm-openvino", "fp16", {}),
    "openvino int8": ("llm-openvino", "int8", {}),
    "openvino int4": ("llm-openvino", "int4", {"group_size": 32}),  # the tiny models are 64 wide
    "litert": ("llm-tflite", "fp32", {}),
    "litert int8": ("llm-tflite", "int8", {}),
}
#: Formats not built nor timed by this script, with the reason (a row says so).
NOT_TIMED = {"coreml": ("llm-coreml", "Core ML execution needs macOS; its Linux stand-in, the MIL reference "
                                      "interpreter, runs at NumPy's speed, which is not Core ML's")}


def _target_yaml(arch: str, label: str, fmt: str, prec: str, options: dict[str, Any]) -> str:
    opts = f", options: {{{fmt}-{prec}: {json.dumps(options)}}}" if options else ""
    return f"  {arch}-{label.replace(' ', '-')}: {{model: {arch}, format: {fmt}, precision: {prec}{opts}}}\n"


def timed(load: Any, batch: Any, repeats: int) -> dict[str, Any]:
    """Load a session (`load()`), warm it up, time `repeats` passes over the prompts; with the peak RSS added.

    The memory is the kernel's high-water mark of this process, reset before the load (buildsys.nodes.timing.RssMeter):
    what loading and running this artifact added on top of what the process held, libraries already imported.
    """
    from buildsys.nodes.timing import RssMeter

    with RssMeter() as meter:
        session = load()
        try:
            session.run(batch.inputs)  # warm-up: first-call allocation and kernel setup stay out of the figures
            session.timings = {"ttft_s": [], "decode_tokens_per_s": []}
            for _ in range(repeats):
                session.run(batch.inputs)
        finally:
            session.close()
    return {"ttft_ms": round(statistics.median(session.timings["ttft_s"]) * 1e3, 3),
            "decode_tokens_per_s": round(statistics.median(session.timings["decode_tokens_per_s"]), 1),
            "peak_rss_mb": meter.increase_mb, "rss_method": meter.method}


EAGER = {"eager-kv": "PyTorch eager (transformers KV cache)", "eager-ref": "PyTorch eager, no cache (the reference)"}


def _goal(label: str) -> str:
    fmt, prec, _ = TARGETS[label]
    return fmt if prec == "fp32" else f"{fmt}-{prec}"


def measure_row(root: Path, arch: str, label: str, repeats: int, new_tokens: int) -> dict[str, Any]:
    """One row, in this (fresh) process: the runtime's libraries imported first, then load + generation timed,
    with the peak resident memory they added and the process's lifetime peak (imports included)."""
    import resource

    import torch

    # One intra-op thread for eager PyTorch: at this size a second thread only adds hand-off cost, and on a
    # shared host torch's spinning pool turned medians into 300 ms outliers. ONNX Runtime, GenAI, ExecuTorch,
    # OpenVINO and LiteRT keep their defaults (what an app gets).
    torch.set_num_threads(1)
    from buildsys.config.load import load
    from buildsys.formats import get_format, get_runtime
    from buildsys.formats.llm.decoder import load_lm
    from buildsys.formats.llm.generate import GenerationSession
    from buildsys.formats.llm.prompts import prompt_batch
    from buildsys.formats.llm.runtime import KvCacheEagerDecoder

    model = load(root / "deploy.yaml").project.models[arch]
    assert model.generation is not None
    batch = prompt_batch(model, root)
    if label == "eager-kv":
        import transformers  # noqa: F401  (imported before the meter: a library is not the model's memory)

        row = timed(lambda: GenerationSession(KvCacheEagerDecoder(load_lm(model, root, arch, "bench"),
                                                                  model.generation.max_seq_len), new_tokens),
                    batch, repeats)
    elif label == "eager-ref":
        import transformers  # noqa: F401,F811

        row = timed(lambda: get_runtime("llm-pytorch").load(None, model, root),  # type: ignore[arg-type]
                    batch, repeats)
    else:
        goal = _goal(label)
        runtime = get_runtime(get_format(goal).runtime or "")
        runtime.preimport()
        path = root / "artifacts" / f"{arch}-{label.replace(' ', '-')}" / get_format(goal).filename
        row = timed(lambda: runtime.load(path, model, root), batch, repeats)
    row["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/llm-bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--row", nargs=2, metavar=("ARCH", "LABEL"), help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    root = args.dir
    if args.row:
        print("ROW " + json.dumps(measure_row(root, args.row[0], args.row[1], args.repeats, args.new_tokens)))
        return

    import subprocess

    import modelbuild
    from buildsys.formats import get_format
    from tests.helpers.llm import ARCHS, make_project

    if not (root / "deploy.yaml").exists():
        make_project(root, steps=120, byte_level=True)
    text = (root / "deploy.yaml").read_text().replace("new_tokens: 12", f"new_tokens: {args.new_tokens}")
    targets = "".join(_target_yaml(arch, label, *spec) for arch in ARCHS for label, spec in TARGETS.items())
    (root / "deploy.yaml").write_text(text.split("targets:")[0] + "targets:\n" + targets)
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    record = json.loads(next((root / ".modelbuild").glob("*.record.json")).read_text())
    nodes = record.get("nodes", record)

    def child(arch: str, label: str) -> dict[str, Any]:
        """Each row in a fresh process: memory freed by an earlier runtime cannot hide a later one's peak."""
        proc = subprocess.run([sys.executable, __file__, "--dir", str(root), "--repeats", str(args.repeats),
                               "--new-tokens", str(args.new_tokens), "--row", arch, label],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")), None)
        if line is None:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        return dict(json.loads(line[4:]))

    rows: list[dict[str, Any]] = []
    for arch in ARCHS:
        for key, name in EAGER.items():
            rows.append({"model": arch, "runtime": name, **child(arch, key)})
        for label in TARGETS:
            target = f"{arch}-{label.replace(' ', '-')}"
            check = nodes.get(f"verify:{target}", {}).get("metrics", {})
            goal = _goal(label)
            path = root / "artifacts" / target / get_format(goal).filename
            if not path.exists():
                rows.append({"model": arch, "runtime": label, "error": "not built"})
                continue
            tokens = check.get("outputs", {}).get("tokens", {})
            rows.append({"model": arch, "runtime": label, "format": goal, **child(arch, label),
                         "token_agreement": tokens.get("token_agreement", {}).get("observed"),
                         "first_divergence": tokens.get("first_divergence"),
                         "prefill_logits_max_abs": check.get("outputs", {}).get("prefill_logits", {})
                         .get("max_abs", {}).get("observed"),
                         "nll_delta": check.get("outputs", {}).get("nll", {}).get("max_abs", {}).get("observed"),
                         "check_passed": check.get("passed"),
                         "bytes": sum(f.stat().st_size for f in path.parent.rglob("*") if f.is_file()
                                      and f.name != "llm.json" and not f.name.startswith("tokenizer")
                                      and "tokenizer" not in f.parts[-2:])})
        for label, (fmt, reason) in NOT_TIMED.items():
            rows.append({"model": arch, "runtime": label, "format": fmt, "not_run": reason})
    out = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_threads": 1, "load_avg_after": round(os.getloadavg()[0], 2)},
           "new_tokens": args.new_tokens, "repeats": args.repeats, "build_ok": report.ok, "rows": rows}
    results = REPO / "benchmarks" / "results" / "llm_generation.json"
    results.write_text(json.dumps(out, indent=2) + "\n")
    print("| model | runtime | TTFT ms | decode tokens/s | peak RSS MB (added / process) | token agreement | prefill logits max abs | NLL delta | bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = (lambda v, f: "—" if v is None else format(v, f))
        if r.get("not_run") or r.get("error"):
            print(f"| {r['model']} | {r['runtime']} | not run: {r.get('not_run') or r.get('error')} | | | | | | |")
            continue
        print(f"| {r['model']} | {r['runtime']} | {fmt(r.get('ttft_ms'), '.3f')} | {fmt(r.get('decode_tokens_per_s'), '.0f')} "
              f"| {fmt(r.get('peak_rss_mb'), '.1f')} / {fmt(r.get('process_peak_rss_mb'), '.0f')} "
              f"| {fmt(r.get('token_agreement'), '.3f')} | {fmt(r.get('prefill_logits_max_abs'), '.2e')} "
              f"| {fmt(r.get('nll_delta'), '.2e')} | {fmt(r.get('bytes'), 'd')} |")


if __name__ == "__main__":
    main()
