"""docs/coverage.md from benchmarks/results/op_matrix.json and model_matrix.json (either may be missing).

The page opens with the summary per target (cells verified, and for the op matrix the best single converter of
the family on the same modules), then the failure classes (benchmarks/coverage/classify.py) with counts and
examples, then the per-op and per-model tables and every failed cell with its reason and failing node.

    PYTHONPATH=. python -m benchmarks.coverage.render        # re-render from the JSON files alone
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from benchmarks.coverage import anchors, classify
from benchmarks.coverage.render_perf import perf_lines
from benchmarks.coverage.render_unseen import matrix_lines, unseen_lines

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
OP_FAMILIES = ("server", "android", "ios", "executorch", "intel", "web")
#: The model matrix's families and what each one's preset makes.
MODEL_FAMILIES = {"server": "ONNX fp32", "android": "TFLite int8 (platform preset)",
                  "ios": "Core ML fp16 (platform preset)", "executorch": "ExecuTorch fp32",
                  "executorch-int8": "ExecuTorch int8 (PT2E)", "intel": "OpenVINO int8 (platform preset)",
                  "web": "ONNX Runtime Web fp32"}
MODEL_PRECISIONS = {"android": "int8", "ios": "fp16", "executorch-int8": "int8", "intel": "int8"}
def _cell_text(text: str, limit: int = 180) -> str:
    text = " ".join(text.split())
    return (text[: limit - 1] + "…" if len(text) > limit else text).replace("|", "\\|")


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f} %" if d else "—"


def classified(results: dict[str, Any], families: tuple[str, ...], precisions: dict[str, str],
               decomposable: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Every failed cell with its class and the single converters of its family that delivered its row."""
    out = []
    cases = results.get("cases", {})
    for key, row in sorted(results.get("cells", {}).items()):
        for family in families:
            cell = row.get(family)
            if cell is None or cell.get("status") == "verified":
                continue
            case = cases.get(key, {})
            single = classify.single_converters(results.get("anchors", {}).get(key, {}), family, anchors.CONVERTERS)
            name = classify.classify(cell, family, case_ops=case.get("aten", []), single=single,
                                     decomposable=case.get("decomposes", decomposable), precisions=precisions)
            out.append({"row": key, "op": case.get("op", key), "family": family, "class": name, "single": single,
                        "reason": cell.get("reason", ""), "node": cell.get("node", ""), "status": cell["status"]})
    return out


def op_summary(results: dict[str, Any]) -> list[str]:
    """The op matrix's summary table: verified per target, and the best single converter on the same rows."""
    cells, anchor = results.get("cells", {}), results.get("anchors", {})
    lines = ["| target | verified | % | best single converter (same modules) | any single converter of the family |",
             "|---|---|---|---|---|"]
    for family in OP_FAMILIES:
        rows = [k for k in cells if family in cells[k]]
        if not rows:
            continue
        ok = sum(cells[k][family]["status"] == "verified" for k in rows)
        converters = [c for c, f in anchors.CONVERTERS.items() if f == (family if family != "web" else "server")]
        judged = [k for k in rows if all(c in anchor.get(k, {}) for c in converters)]
        best = ""
        if judged and converters:
            counts = {c: sum(anchor[k][c].get("status") == "verified" for k in judged) for c in converters}
            top = max(counts, key=counts.__getitem__)
            union = sum(any(anchor[k][c].get("status") == "verified" for c in converters) for k in judged)
            mine = sum(cells[k][family]["status"] == "verified" for k in judged)
            note = " (in ONNX Runtime on the CPU, not the browser)" if family == "web" else ""
            best = (f"{top}: {counts[top]}/{len(judged)} ({_pct(counts[top], len(judged))}){note}; "
                    f"modelbuild on these {mine}/{len(judged)} | {union}/{len(judged)} ({_pct(union, len(judged))})")
        else:
            best = "not run | not run"
        lines.append(f"| {family} | {ok}/{len(rows)} | {_pct(ok, len(rows))} | {best} |")
    return lines


def model_summary(results: dict[str, Any]) -> list[str]:
    """The model matrix's summary table: verified per target with its preset, and node-seconds."""
    cells = results.get("cells", {})
    lines = ["| target | artifact | verified | % |", "|---|---|---|---|"]
    for family, what in MODEL_FAMILIES.items():
        rows = [k for k in cells if family in cells[k]]
        if rows:
            ok = sum(cells[k][family]["status"] == "verified" for k in rows)
            lines.append(f"| {family} | {what} | {ok}/{len(rows)} | {_pct(ok, len(rows))} |")
    return lines + zero_lines(cells)


def zero_lines(cells: dict[str, dict[str, Any]]) -> list[str]:
    """The verified cells whose check compared zeros (every value of the reference float32-subnormal: the check's
    "<output> checked at zero" caveat, nodes/verify.py), said beside the table: they count, but prove less."""
    zero = sorted({model for model, row in cells.items() for cell in row.values() if cell["status"] == "verified"
                   and any(str(c).endswith("checked at zero") for c in cell.get("caveats") or [])})
    if not zero:
        return []
    count = sum(any(str(c).endswith("checked at zero") for c in cell.get("caveats") or [])
                for model in zero for cell in cells[model].values())
    return ["", f"Of the verified cells, {count} ({', '.join(f'`{m}`' for m in zero)}) compared zeros: every value of "
            "their reference is a float32 subnormal (seeded weights shrink the signal to nothing), which the check "
            "flushes to zero as the runtimes do, so it passes a faithful artifact and says \"checked at zero\" "
            "(docs/repair.md)."]


def node_seconds(results: dict[str, Any], rows: Any = None) -> dict[str, float]:
    """Node-seconds by what the node did (built, failed, analysed: the op analysis) and in all, over `rows`
    (default: every row)."""
    sums: dict[str, float] = collections.defaultdict(float)
    for key, nodes in results.get("node_seconds", {}).items():
        if rows is None or key in rows:
            for event, seconds in nodes.values():
                sums[event] += seconds
                sums["all"] += seconds
    return dict(sums)


def _seconds_line(sums: dict[str, float]) -> str:
    total = sums.get("all", 0.0)
    return (f"{sums.get('failed', 0.0):.0f} s in nodes that failed, {sums.get('analysed', 0.0):.0f} s of op analysis, "
            f"{sums.get('built', 0.0):.0f} s in nodes built: {_pct(int(sums.get('failed', 0.0)), int(total))} of "
            f"{total:.0f} node-seconds failed")


def class_table(op_failed: list[dict[str, Any]], model_failed: list[dict[str, Any]]) -> list[str]:
    lines = ["| class | mechanism that answers it | op cells | model cells | examples |", "|---|---|---|---|---|"]
    op_counts = collections.Counter(f["class"] for f in op_failed)
    model_counts = collections.Counter(f["class"] for f in model_failed)
    for name, mechanism in classify.MECHANISMS.items():
        if not op_counts[name] and not model_counts[name]:
            continue
        examples = [f for f in op_failed if f["class"] == name][:2] + \
            [f for f in model_failed if f["class"] == name][:1]
        shown = "; ".join(f"{e['op']} → {e['family']}: {_cell_text(e['reason'], 110)}" for e in examples)
        lines.append(f"| {name} | {mechanism} | {op_counts[name]} | {model_counts[name]} | {shown} |")
    return lines


def op_rows(results: dict[str, Any], failed: list[dict[str, Any]]) -> list[str]:
    """One row per op: per target, verified samples / samples, and the classes of the failed ones."""
    by_op: dict[str, list[str]] = collections.defaultdict(list)
    for key, case in results.get("cases", {}).items():
        if key in results.get("cells", {}):
            by_op[case["op"]].append(key)
    cls = {(f["row"], f["family"]): f["class"] for f in failed}
    lines = ["| op | " + " | ".join(OP_FAMILIES) + " |", "|---|" + "---|" * len(OP_FAMILIES)]
    for op in sorted(by_op):
        keys = by_op[op]
        marks = []
        for family in OP_FAMILIES:
            done = [k for k in keys if family in results["cells"][k]]
            ok = sum(results["cells"][k][family]["status"] == "verified" for k in done)
            bad = sorted({cls[(k, family)] for k in done if (k, family) in cls})
            marks.append("—" if not done else "✓" if ok == len(done) else f"{ok}/{len(done)} {', '.join(bad)}")
        lines.append(f"| `{op}` | " + " | ".join(marks) + " |")
    return lines


def model_rows(results: dict[str, Any], failed: list[dict[str, Any]]) -> list[str]:
    cls = {(f["row"], f["family"]): f["class"] for f in failed}
    families = tuple(MODEL_FAMILIES)
    lines = ["| model | category | package | " + " | ".join(families) + " | failed / all node-s |",
             "|---|---|---|" + "---|" * (len(families) + 1)]
    for key, row in sorted(results.get("cells", {}).items()):
        info = results.get("models", {}).get(key, {})
        marks = ["—" if f not in row else "✓" if row[f]["status"] == "verified" else f"✗ {cls.get((key, f), '')}"
                 for f in families]
        sums = node_seconds(results, {key})
        lines.append(f"| {key} | {info.get('category', '')} | {info.get('package', '')} | " + " | ".join(marks) +
                     f" | {sums.get('failed', 0.0):.0f} / {sums.get('all', 0.0):.0f} |")
    return lines


def failed_rows(failed: list[dict[str, Any]], label: str) -> list[str]:
    lines = [f"| {label} | target | class | single converter delivers | failing node | reason (first line) |",
             "|---|---|---|---|---|---|"]
    for f in sorted(failed, key=lambda f: (f["class"], f["row"], f["family"])):
        lines.append(f"| {f['row']} | {f['family']} | {f['class']} | {', '.join(f['single']) or '—'} | "
                     f"{_cell_text(f['node'], 60)} | {_cell_text(f['reason'])} |")
    return lines


def decomposable_ops(op_results: dict[str, Any]) -> dict[str, list[str]]:
    """ATen op → what its decomposition leaves, over every op case measured (what the model matrix reuses)."""
    out: dict[str, list[str]] = {}
    for case in op_results.get("cases", {}).values():
        out.update(case.get("decomposes", {}))
    return out


#: Labels of a route stop that say a refusal was answered (planning.routes: rewrites, decompositions, switches).
ANSWERED = ("(rewrite ", "(decompose ", "(switch ", "; rewrite ", "; decompose ", "; switch ")


def answered_lines(results: dict[str, Any]) -> list[str]:
    """How many verified cells an answered route delivered (a rewrite family, a decomposition, a converter switch),
    by kind: what the refusal-driven routes add over the converters' default paths."""
    kinds: collections.Counter[str] = collections.Counter()
    for row in results.get("cells", {}).values():
        for cell in row.values():
            route = str(cell.get("route") or "")
            if cell.get("status") == "verified" and any(a in route for a in ANSWERED):
                kinds.update({k for k in ("rewrite", "decompose", "switch") if f"({k} " in route or f"; {k} " in route})
    total = sum(1 for row in results.get("cells", {}).values() for c in row.values()
                if c.get("status") == "verified" and any(a in str(c.get("route") or "") for a in ANSWERED))
    if not total:
        return []
    return [f"Delivered by an answered route (docs/lowering.md, docs/rewrites.md): {total} verified cells "
            f"({', '.join(f'{kinds[k]} {k}' for k in ('rewrite', 'decompose', 'switch') if kinds[k])}).", ""]


def previous_lines(results: dict[str, Any]) -> list[str]:
    """The same sample measured on earlier code, per target, where `previous` in the JSON says (label, counts)."""
    before = results.get("previous")
    if not before:
        return []
    now = {row[0]: row[1] for row in _verified_by_target(results)}
    rows = [f"| {t} | {c}/{before['cells']} | {now.get(t, '?')}/{before['cells']} |" for t, c in before["verified"].items()]
    return [f"The same sample on earlier code ({before['label']}):", "", "| target | then | now |", "|---|---|---|",
            *rows, ""]


def code_lines(results: dict[str, Any]) -> list[str]:
    """Which modelbuild commit the cells were built on (each cell's `code`, environment.code_version)."""
    codes = collections.Counter(cell.get("code") for row in results.get("cells", {}).values() for cell in row.values())
    if not codes:
        return []
    if len(codes) == 1 and None not in codes:
        return [f"Every cell built on modelbuild commit `{next(iter(codes))}`.", ""]
    return ["Cells by the modelbuild commit they were built on: " + ", ".join(
        f"`{code}` {n}" if code else f"{n} from before commits were recorded" for code, n in codes.most_common())
        + ".", ""]


def remeasured_lines(meta: dict[str, Any], what: str = "samples") -> list[str]:
    """Where some rows were rebuilt on later code than the rest (`--only … --fresh`), which and why."""
    again = meta.get("remeasured")
    if not again:
        return []
    return [f"{len(again['cases'])} {again.get('what', what)} were measured again {again['label']}: "
            f"{', '.join(f'`{c}`' for c in again['cases'])}.", ""]


def _verified_by_target(results: dict[str, Any]) -> list[tuple[str, int]]:
    counts: collections.Counter[str] = collections.Counter()
    for row in results.get("cells", {}).values():
        for family, cell in row.items():
            counts[family] += cell.get("status") == "verified"
    return sorted(counts.items())


def op_model_lines(results: dict[str, Any]) -> list[str]:
    """The op-models benchmark (benchmarks/op_models.py): delivered per target family, failed node-seconds, the
    targets not delivered, and the earlier measurement it keeps."""
    if not results.get("by_target"):
        return []
    families: dict[str, list[bool]] = collections.defaultdict(list)
    models: dict[str, list[bool]] = collections.defaultdict(list)
    for name, row in results["by_target"].items():
        model, _, family = name.rpartition("-")
        families[family].append(row["delivered"])
        models[model].append(row["delivered"])
    out = [f"### Models built on ops exporters reject: {len(models)} models, float precision", "",
           "Small real architectures of the kinds that stop converters, written for the benchmark and named by no "
           "rewrite (benchmarks/coverage/op_models.py: a spatial transformer, a Fourier neural operator, a "
           "prototypical network, a graph convolution, causal linear attention, a k-NN point model, an STFT / iSTFT "
           "speech enhancer, a frame interpolator, sort pooling, a bidirectional GRU, bucketised features, a complex "
           "filter bank), one cold build to the op matrix's six targets (benchmarks/op_models.py).", "",
           "| target | delivered and verified |", "|---|---|"]
    out += [f"| {family} | {sum(ok)}/{len(ok)} |" for family, ok in families.items()]
    out += ["", f"{results['delivered']} of {results['targets']} targets delivered; node-seconds: "
                f"{results['failed_node_s']:.0f} s in nodes that failed of {results['node_s']:.0f} s "
                f"({100 * results['failed_node_s'] / results['node_s']:.1f} %); wall {results['wall_s']:.0f} s, "
                f"`-j {results['jobs']}`."]
    before = results.get("previous")
    if before:
        out += ["", f"On earlier code ({before['code']}): {before['delivered']} of {before['targets']} delivered, "
                    f"{before['failed_node_s']:.0f} of {before['node_s']:.0f} node-seconds failed."]
    missed = [(n, r) for n, r in results["by_target"].items() if not r["delivered"]]
    if missed:
        out += ["", "| target | status | last route dropped |", "|---|---|---|"]
        out += [f"| {n} | {r['status']} | {_cell_text(r['dropped'][-1]) if r['dropped'] else '—'} |" for n, r in missed]
    return out + [""]


#: How the mixed project's architectures were chosen (benchmarks/results/model_matrix_mixed.json).
MIXED_RULE = "the first architecture of each category of the model matrix, in zoo order"


#: The later op samples (`op_matrix.py --offset F`, each disjoint from the first): results file → what it is.
HELD_OUT = {
    "op_matrix_holdout.json": ("A second op sample", "spread with `--offset 0.5`, so no op of it is in the sample "
                               "above; first measured before any change for it was made, as a new user's ops would "
                               "be; the changes it led to were each made for a class of ops (docs/rewrites.md), then "
                               "it was measured again"),
    "op_matrix_third.json": ("A third op sample", "spread with `--offset 0.25`, disjoint from both; first measured "
                             "after the changes the second sample led to, before any change for it; the classes it "
                             "showed were then fixed (docs/rewrites.md) and the rows they touch measured again"),
}


def holdout_lines(results: dict[str, Any], decomposable: dict[str, list[str]], title: str, how: str) -> list[str]:
    """A later op sample: per target (and, where `previous` says, as first measured), each failed cell classed."""
    if not results.get("cells"):
        return []
    cells = results["cells"]
    failed = classified(results, OP_FAMILIES, {}, decomposable)
    ops = sorted({c["op"] for k, c in results.get("cases", {}).items() if k in cells})
    return [f"### {title}: {len(ops)} other ops, held out", "",
            f"The same selection {how}. Ops: {', '.join(f'`{o}`' for o in ops)}.", "", *code_lines(results)] + \
        op_summary(results) + ["", f"Node-seconds: {_seconds_line(node_seconds(results))}.", ""] + \
        previous_lines(results) + \
        ([f"Failed cells of the {title[2:].lower()}:", ""] + failed_rows(failed, "op sample") + [""] if failed else [])


def mixed_lines(results: dict[str, Any]) -> list[str]:
    """A cold build of a mixed project (`model_matrix.py --only … --fresh --out …model_matrix_mixed.json`): its rows,
    verified cells and failed node-seconds."""
    if not results.get("cells"):
        return []
    rows = sorted(results["cells"])
    ok = sum(c["status"] == "verified" for row in results["cells"].values() for c in row.values())
    total = sum(len(row) for row in results["cells"].values())
    latest = {b["project"]: b for b in results.get("builds", [])}  # a --fresh re-run replaces the project's build
    wall = sum(b.get("wall_s", 0.0) for b in latest.values())
    return ["### A cold build of a mixed project", "",
            f"{len(rows)} architectures, {MIXED_RULE} ({', '.join(f'`{r}`' for r in rows)}), every target family, "
            f"built from an empty cache in one project (`--fresh`, two nodes at a time): {ok}/{total} verified in "
            f"{wall:.0f} s. Node-seconds: {_seconds_line(node_seconds(results))}.", "",
            *code_lines(results)]


#: The size and latency run: a sample of the model matrix built cold on code whose summary carries both.
PERF_COMMAND = ("PYTHONPATH=. python benchmarks/model_matrix.py --sample 8 --chunk 2 --fresh --out "
                "benchmarks/results/model_matrix_perf.json --work /tmp/perf --doc -")


def page(op_results: dict[str, Any], model_results: dict[str, Any], op_models: dict[str, Any] | None = None,
         mixed: dict[str, Any] | None = None, held_out: dict[str, dict[str, Any]] | None = None,
         perf: dict[str, Any] | None = None, unseen: list[dict[str, Any]] | None = None,
         unseen_matrix: tuple[dict[str, Any], dict[str, Any]] = ({}, {})) -> str:
    decomposable = decomposable_ops(op_results)
    op_failed = classified(op_results, OP_FAMILIES, {}, decomposable)
    model_failed = classified(model_results, tuple(MODEL_FAMILIES), MODEL_PRECISIONS, decomposable)
    meta = op_results.get("meta") or model_results.get("meta") or {}
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    selection = op_results.get("selection", {})
    out = ["# Coverage: PyTorch's op suite and public architectures to every target", "",
           "Generated by `benchmarks/coverage/render.py` from `benchmarks/results/op_matrix.json`, "
           "`benchmarks/results/op_matrix_holdout.json`, `benchmarks/results/op_matrix_third.json`, "
           "`benchmarks/results/model_matrix.json`, `benchmarks/results/model_matrix_mixed.json`, "
           "`benchmarks/results/model_matrix_perf.json`, `benchmarks/results/unseen_windows.json`, "
           "`benchmarks/results/model_matrix_unseen.json` (and its `_before`) and "
           "`benchmarks/results/op_models.json`; do not edit by hand. "
           "Re-run:", "", "```sh",
           "PYTHONPATH=. nice -n 15 python benchmarks/op_matrix.py       # resumable; --sample N, --only PAT, --fresh",
           "PYTHONPATH=. nice -n 15 python benchmarks/op_matrix.py --sample 60 --per-op 1 --offset 0.5 --out "
           "benchmarks/results/op_matrix_holdout.json --no-anchors   # the second sample (0.25: the third)",
           "PYTHONPATH=. nice -n 15 python benchmarks/model_matrix.py    # needs the package directory of "
           "benchmarks/coverage/site_packages.py",
           "PYTHONPATH=. nice -n 15 python benchmarks/model_matrix.py --fresh --only resnet18 --only yolo11n "
           "--only yolo11n-seg --only hf-wav2vec2 --only hf-bert --only hf-gpt2 --out "
           "benchmarks/results/model_matrix_mixed.json --work /tmp/mixed   # the mixed project, cold",
           "PYTHONPATH=. python benchmarks/op_models.py                 # twelve models on ops exporters reject",
           f"{PERF_COMMAND}   # size and latency, cold",
           "PYTHONPATH=. python -m benchmarks.coverage.render            # this page from the JSON alone", "```", "",
           f"Measured {meta.get('date', '?')} on {meta.get('host', '?')}; {versions}.", "", *remeasured_lines(meta),
           "A cell is **verified** when modelbuild delivered the artifact and its check passed numerically against "
           "PyTorch in the artifact's runtime (ONNX Runtime, LiteRT, ExecuTorch, OpenVINO's CPU plugin, ONNX Runtime "
           "Web in headless Chromium); Core ML off macOS is computed by the MIL reference interpreter, not Apple's "
           "runtime (docs/coreml-reference.md).", ""]
    if op_results.get("cells"):
        cells = op_results["cells"]
        out += ["## Summary", "",
                f"### Op matrix: {len({c['op'] for k, c in op_results.get('cases', {}).items() if k in cells})} ops, "
                f"{len(cells)} samples, float precision", "",
                f"The OpInfos of `op_db` (torch {selection.get('torch', '?')}) with float32 samples an exported "
                f"inference graph can hold, up to {selection.get('per_op', '?')} small samples each "
                f"(benchmarks/coverage/opdb.py); {len(selection.get('left_out', {}))} ops left out, listed below. "
                "Targets: server `format: onnx`, android `tflite`, ios `coreml` (fp32), executorch, intel `openvino`, "
                "web `web`. The anchor: each converter alone with its default call on the same modules, judged by the "
                "same comparison (benchmarks/coverage/anchors.py).", "", *code_lines(op_results)] + \
            op_summary(op_results) + [
                "", f"Node-seconds: {_seconds_line(node_seconds(op_results))}.", ""] + answered_lines(op_results) \
            + previous_lines(op_results) + [line for name, (title, how) in HELD_OUT.items()
                                            for line in holdout_lines((held_out or {}).get(name, {}), decomposable,
                                                                      title, how)]
    if not model_results.get("cells"):
        out += ["### Model matrix: not run on this code", "", "benchmarks/results/model_matrix.json is absent: run "
                "`benchmarks/model_matrix.py` (above) to measure it.", ""]
    if model_results.get("cells"):
        out += [f"### Model matrix: {len(model_results['cells'])} public architectures, platform presets", "",
                "timm, transformers (small configs, `from_config`), ultralytics (model yaml) and torchvision "
                "builders with seeded weights, small inputs, seeded calibration and validation data "
                "(benchmarks/coverage/zoo.py, benchmarks/model_matrix.py).", "",
                *code_lines(model_results),
                *remeasured_lines(model_results.get("meta", {}), "cells")] + model_summary(model_results) + [
                "", f"Node-seconds: {_seconds_line(node_seconds(model_results))}.", ""]
    out += mixed_lines(mixed or {})
    out += unseen_lines(unseen or [])
    out += matrix_lines(*unseen_matrix, classified(unseen_matrix[1], tuple(unseen_matrix[1].get("families", {})),
                                                    MODEL_PRECISIONS, decomposable))
    out += perf_lines(perf or {}, list(MODEL_FAMILIES), PERF_COMMAND)
    out += op_model_lines(op_models or {})
    if op_failed or model_failed:
        out += ["## Failure classes", "", "Each failed cell under the mechanism that would answer it "
                "(benchmarks/coverage/classify.py); 'single converter delivers' in the tables below says where a "
                "converter alone made a verified artifact that modelbuild did not.", ""] + \
            class_table(op_failed, model_failed) + [""]
    if op_results.get("cells"):
        reasons = collections.defaultdict(list)
        for op, why in sorted(selection.get("left_out", {}).items()):
            reasons[why].append(op)
        out += ["## Op matrix", "", "### Ops left out, and why", "", "| reason | ops |", "|---|---|"] + \
            [f"| {why} | {len(ops)}: {', '.join(f'`{o}`' for o in ops)} |" for why, ops in sorted(reasons.items())] + \
            ["", "### Per op", "", "✓: every sample verified; otherwise verified/samples and the classes of the "
             "failures.", ""] + op_rows(op_results, op_failed) + \
            ["", "### Failed cells", ""] + failed_rows(op_failed, "op sample") + [""]
    if model_results.get("cells"):
        out += ["## Model matrix", "", "### Per model", ""] + model_rows(model_results, model_failed) + \
            ["", "### Failed cells", ""] + failed_rows(model_failed, "model") + [""]
    return "\n".join(out)


def write(doc: Path, op_json: Path = RESULTS / "op_matrix.json",
          model_json: Path = RESULTS / "model_matrix.json", op_models_json: Path = RESULTS / "op_models.json",
          mixed_json: Path = RESULTS / "model_matrix_mixed.json", held_out: Path = RESULTS,
          perf_json: Path = RESULTS / "model_matrix_perf.json") -> None:
    """Render both matrices' JSON, the mixed project's cold build, the op-models benchmark's and the later op
    samples' (HELD_OUT, in the directory `held_out`; where present) into `doc`."""

    def load(path: Path) -> dict[str, Any]:
        return dict(json.loads(path.read_text())) if path.exists() else {}

    unseen = RESULTS / "unseen_windows.json"
    doc.write_text(page(load(op_json), load(model_json), load(op_models_json), load(mixed_json),
                        {name: load(held_out / name) for name in HELD_OUT}, load(perf_json),
                        json.loads(unseen.read_text()) if unseen.exists() else [],
                        (load(RESULTS / "model_matrix_unseen_before.json"), load(RESULTS / "model_matrix_unseen.json"))))


if __name__ == "__main__":
    write(REPO / "docs" / "coverage.md")
