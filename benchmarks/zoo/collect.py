"""Collects per model x target: check status, size, conversion seconds (sum over the target's own
conversion nodes, from .modelbuild/deploy.record.json), min cosine / max abs error, and for failures
the first error line from the build log. Prints a Markdown table."""
import json
import os
import re
import sys

ZOO = os.path.dirname(os.path.abspath(__file__))
MODELS = sys.argv[1:] or ["minilm", "silero_vad", "voice_encoder", "mobilenet_v2", "mtcnn_pnet"]
TARGETS = ["onnx", "tflite", "tflite-int8", "coreml-fp16", "executorch", "executorch-int8"]
# conversion nodes each target's artifact needs beyond the shared reference (seconds summed)
CHAIN = {"onnx": ["onnx"], "tflite": ["onnx", "saved_model", "tflite"], "tflite-int8": ["onnx", "saved_model", "tflite-int8"],
         "coreml-fp16": ["torchscript", "coreml-fp16"], "executorch": ["pt2", "executorch"],
         "executorch-int8": ["pt2", "executorch-int8"]}


def size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def fmt_size(b):
    return f"{b / 1e6:.2f} MB" if b >= 1e6 else f"{b / 1e3:.1f} KB"


def first_error(model, node):
    log = os.path.join(ZOO, model, ".modelbuild", "logs", f"{model}__{node}.log")
    text = open(log).read() if os.path.exists(log) else ""
    blog = open(os.path.join(ZOO, "logs", f"{model}.build.log")).read()
    # the build summary line for the failed node, e.g. "  FAILED   model/node  ... : message"
    for line in blog.splitlines():
        if f"{model}/{node}" in line and ("fail" in line.lower() or "error" in line.lower()):
            msg = re.sub(r"^(failed|skipped)?\s*\S+\s+([\d.]+ s)?\s*", "", line.strip())
            return msg.replace("Please feel free to request support or submit a pull request on PyTorch GitHub: https://github.com/pytorch/pytorch/issues ", "")[:260]
    m = re.findall(r"^\w*(?:Error|Exception)[^\n]*", text, re.M)
    return m[-1] if m else ""


def check_misses(model, target):
    """The MISS lines of the last '✗ verify:<target>: acceptance not met' block in the build log."""
    lines = open(os.path.join(ZOO, "logs", f"{model}.build.log")).read().splitlines()
    starts = [i for i, l in enumerate(lines) if l.startswith(f"✗ verify:{target}:")]
    if not starts:
        return "check failed (see log)"
    out = []
    for l in lines[starts[-1] + 1:]:
        if l.startswith("✗") or l.startswith("build failed") or not l.strip():
            break
        if l.rstrip().endswith("MISS"):
            out.append(" ".join(l.split()[:3]))
    if not out:  # a structural problem rather than a metric table
        out = [lines[starts[-1] + 1].strip()]
    return "acceptance: " + "; ".join(out)


rows = []
for model in MODELS:
    rec_path = os.path.join(ZOO, model, ".modelbuild", "deploy.record.json")
    nodes = json.load(open(rec_path))["nodes"] if os.path.exists(rec_path) else {}
    for t in TARGETS:
        v = nodes.get(f"verify:{t}")
        secs = [nodes[f"{model}/{n}"]["built"]["seconds"] for n in CHAIN[t] if f"{model}/{n}" in nodes]
        secs_s = f"{sum(secs):.1f}" if len(secs) == len(CHAIN[t]) else "-"
        last = nodes.get(f"{model}/{CHAIN[t][-1]}")
        sz = fmt_size(last["metrics"]["bytes"]) if last and "bytes" in last.get("metrics", {}) else "-"
        if v is None:
            missing = [n for n in CHAIN[t] if f"{model}/{n}" not in nodes]
            if not missing:
                rows.append((model, t, "FAIL (check)", sz, secs_s, "", check_misses(model, t)))
                continue
            rows.append((model, t, "FAIL", sz, secs_s, "", f"not built: {', '.join(missing)} — " + first_error(model, missing[0] if missing else t)))
            continue
        met = v["metrics"]
        if met.get("not_run"):
            probs = met.get("structure", {}).get("problems", [])
            rows.append((model, t, "structure ok, numeric not run" if not probs else "structure problems", sz, secs_s, "", "; ".join(map(str, probs))))
            continue
        cos = [o["cosine"]["observed"] for o in met.get("outputs", {}).values() if "cosine" in o]
        mabs = [o["max_abs"]["observed"] for o in met.get("outputs", {}).values() if "max_abs" in o]
        top1 = [o["top1_agreement"]["observed"] for o in met.get("outputs", {}).values() if "top1_agreement" in o]
        failed = [f"{on}.{k}: {mv['observed']:.4g} (allowed {mv['op']} {mv['allowed']})" for on, o in met.get("outputs", {}).items()
                  for k, mv in o.items() if isinstance(mv, dict) and mv.get("ok") is False]
        q = f"cos≥{min(cos):.4f}, max_abs {max(mabs):.3g}" + (f", top1 {min(top1):.3f}" if top1 else "") if cos else ""
        rows.append((model, t, "pass" if met.get("passed") else "FAIL (check)", sz, secs_s, q, "; ".join(failed)))

print("| model | target | result | size | convert s | numerics (min cos / max abs / top-1) | failure |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(str(x).replace("|", "\\|") for x in r) + " |")
