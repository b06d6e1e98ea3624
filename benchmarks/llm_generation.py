"""LLM generation benchmark: time to first token and decode tokens/s per runtime, beside PyTorch eager.

Builds the tiny trained models of the tests (tests/helpers/llm.py: a Llama-style and a GPT-2-style
decoder, 2 layers, hidden 64, trained for a few seconds on tests/data/llm/tiny.txt) for every LLM
target there is (ONNX Runtime; ExecuTorch fp32, int8 dynamic, int8 weight-only and 8da4w), checks them, then times each artifact in
its runtime through the same generation loop the checks use (formats/llm/generate.py), next to
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
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: label: (format family, precision, options of the int8 step)
TARGETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "onnxruntime": ("llm-onnx", "fp32", {}), "executorch": ("llm-executorch", "fp32", {}),
    "executorch int8": ("llm-executorch", "int8", {}),
    "executorch int8 weight-only": ("llm-executorch", "int8", {"scheme": "weight-only"}),
    "executorch 8da4w": ("llm-executorch", "int8", {"scheme": "8da4w", "group_size": 32})}


def _target_yaml(arch: str, label: str, fmt: str, prec: str, options: dict[str, Any]) -> str:
    opts = f", options: {{{fmt}-{prec}: {json.dumps(options)}}}" if options else ""
    return f"  {arch}-{label.replace(' ', '-')}: {{model: {arch}, format: {fmt}, precision: {prec}{opts}}}\n"


class HfCacheDecoder:
    """PyTorch eager with transformers' DynamicCache: prefill once, then one token per call."""

    def __init__(self, lm: Any, max_chunk: int):
        self.lm, self.max_chunk, self.past = lm, max_chunk, None

    def reset(self) -> None:
        self.past = None

    def forward(self, ids: Any, start: int) -> Any:
        import torch

        with torch.inference_mode():
            out = self.lm(input_ids=torch.tensor([list(ids)]), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0].float().numpy()


def timed(session: Any, batch: Any, repeats: int) -> dict[str, float]:
    session.run(batch.inputs)  # warm-up: first-call allocation and kernel setup stay out of the figures
    session.timings = {"ttft_s": [], "decode_tokens_per_s": []}
    for _ in range(repeats):
        session.run(batch.inputs)
    return {"ttft_ms": round(statistics.median(session.timings["ttft_s"]) * 1e3, 3),
            "decode_tokens_per_s": round(statistics.median(session.timings["decode_tokens_per_s"]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/llm-bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch

    import modelbuild
    from buildsys.config.load import load

    # One intra-op thread for eager PyTorch: at this size a second thread only adds hand-off cost, and on a
    # shared host torch's spinning pool turned medians into 300 ms outliers. ONNX Runtime and ExecuTorch
    # keep their defaults (what an app gets).
    torch.set_num_threads(1)
    from buildsys.formats import get_format, get_runtime
    from buildsys.formats.llm.decoder import load_lm
    from buildsys.formats.llm.generate import GenerationSession
    from buildsys.formats.llm.prompts import prompt_batch
    from tests.helpers.llm import ARCHS, make_project

    root = args.dir
    if not (root / "deploy.yaml").exists():
        make_project(root, steps=120)
    text = (root / "deploy.yaml").read_text().replace("new_tokens: 12", f"new_tokens: {args.new_tokens}")
    targets = "".join(_target_yaml(arch, label, *spec) for arch in ARCHS for label, spec in TARGETS.items())
    (root / "deploy.yaml").write_text(text.split("targets:")[0] + "targets:\n" + targets)
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    record = json.loads(next((root / ".modelbuild").glob("*.record.json")).read_text())
    nodes = record.get("nodes", record)
    cfg = load(root / "deploy.yaml")
    rows: list[dict[str, Any]] = []
    for arch in ARCHS:
        model = cfg.project.models[arch]
        assert model.generation is not None
        batch = prompt_batch(model, root)
        lm = load_lm(model, root, arch, "bench")
        eager = {"PyTorch eager (transformers KV cache)": HfCacheDecoder(lm, model.generation.max_seq_len)}
        for label, decoder in eager.items():
            rows.append({"model": arch, "runtime": label, **timed(GenerationSession(decoder, args.new_tokens), batch,
                                                                   args.repeats)})
        reference = get_runtime("llm-pytorch").load(None, model, root)  # type: ignore[arg-type]
        rows.append({"model": arch, "runtime": "PyTorch eager, no cache (the reference)",
                     **timed(reference, batch, args.repeats)})
        for label, (fmt, prec, _) in TARGETS.items():
            target = f"{arch}-{label.replace(' ', '-')}"
            check = nodes.get(f"verify:{target}", {}).get("metrics", {})
            goal = fmt if prec == "fp32" else f"{fmt}-{prec}"
            path = root / "artifacts" / target / get_format(goal).filename
            if not path.exists():
                rows.append({"model": arch, "runtime": label, "error": "not built"})
                continue
            session = get_runtime(get_format(goal).runtime or "").load(path, model, root)
            tokens = check.get("outputs", {}).get("tokens", {})
            rows.append({"model": arch, "runtime": label, **timed(session, batch, args.repeats),
                         "token_agreement": tokens.get("token_agreement", {}).get("observed"),
                         "first_divergence": tokens.get("first_divergence"),
                         "prefill_logits_max_abs": check.get("outputs", {}).get("prefill_logits", {})
                         .get("max_abs", {}).get("observed"),
                         "nll_delta": check.get("outputs", {}).get("nll", {}).get("max_abs", {}).get("observed"),
                         "bytes": (path.stat().st_size)})
    out = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_threads": 1},
           "new_tokens": args.new_tokens, "repeats": args.repeats, "build_ok": report.ok, "rows": rows}
    results = REPO / "benchmarks" / "results" / "llm_generation.json"
    results.write_text(json.dumps(out, indent=2) + "\n")
    print("| model | runtime | TTFT ms | decode tokens/s | token agreement | prefill logits max abs | NLL delta | bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = (lambda v, f: "—" if v is None else format(v, f))
        print(f"| {r['model']} | {r['runtime']} | {fmt(r.get('ttft_ms'), '.3f')} | {fmt(r.get('decode_tokens_per_s'), '.0f')} "
              f"| {fmt(r.get('token_agreement'), '.3f')} | {fmt(r.get('prefill_logits_max_abs'), '.2e')} "
              f"| {fmt(r.get('nll_delta'), '.2e')} | {fmt(r.get('bytes'), 'd')} |")


if __name__ == "__main__":
    main()
