"""docs/coverage.md's section on architectures no matrix named, before and after the changes made for them, from
benchmarks/results/unseen_windows.json (benchmarks/unseen_windows.py; a list of runs, each labelled)."""

from __future__ import annotations

from typing import Any

#: Each set's rule, as benchmarks/unseen_windows.py fixed it before its first run.
SETS = {
    "windows": ("Window-attention families timm holds and the model matrix does not",
                "timm's Swin v2 CR, DaViT, EfficientViT-M and Swin-S3 at small widths (GC ViT and NesT refused the "
                "small-width arguments), to `platform: ios` (Core ML fp16, MIL reference)"),
    "video": ("A video transformer", "torchvision's video Swin (SwinTransformer3d at a small width, rank-8 windows) "
              "to server ONNX, ios, ExecuTorch, TFLite and OpenVINO"),
}
COMMAND = "PYTHONPATH=. python benchmarks/unseen_windows.py [--video] --label after   # --code DIR: an older checkout"


def _cell(target: dict[str, Any] | None) -> str:
    if not target:
        return "—"
    status = str(target.get("status") or "")
    if not status.startswith("passed"):
        return f"**{status or 'not run'}**"
    tries = len(target.get("dropped") or [])
    fixed = "static shapes" in str(target.get("route", ""))
    return "verified" + (f", after {tries} failed route(s)" if tries else ", first route") + \
        (", fixed batch" if fixed else "")


def _totals(run: dict[str, Any]) -> str:
    targets = run.get("targets", {})
    verified = sum(1 for t in targets.values() if str(t.get("status", "")).startswith("passed"))
    first = sum(1 for t in targets.values() if str(t.get("status", "")).startswith("passed") and not t.get("dropped"))
    share = run["failed_node_seconds"] / run["node_seconds"] if run.get("node_seconds") else 0.0
    return (f"{verified} of {len(targets)} verified, {first} on their first route; node-seconds "
            f"{run.get('node_seconds')}, failed {run.get('failed_node_seconds')} ({share:.0%}); wall {run.get('wall_s', 0):.0f} s")


def unseen_lines(history: list[dict[str, Any]]) -> list[str]:
    """Per set: each target before (its first run labelled 'before') and after (its last labelled 'after')."""
    out: list[str] = []
    for name, (title, rule) in SETS.items():
        runs = [r for r in history if r.get("set", "windows") == name]
        before = next((r for r in runs if str(r.get("label", "")).startswith("before")), None)
        after = next((r for r in reversed(runs) if str(r.get("label", "")).startswith("after")), None)
        if before is None or after is None:
            continue
        targets = sorted(set(before.get("targets", {})) | set(after.get("targets", {})))
        out += [f"### Never seen before: {title.lower()}", "",
                f"The rule, fixed before the first run: {rule}. Cold, `-j 1`, one host; the runs: {before['label']} and "
                f"{after['label']} (`benchmarks/results/unseen_windows.json`; `{COMMAND}`).", "",
                "| target | before | after |", "|---|---|---|"]
        out += [f"| {t} | {_cell(before['targets'].get(t))} | {_cell(after['targets'].get(t))} |" for t in targets]
        out += ["", f"Before: {_totals(before)}. After: {_totals(after)}.", ""]
    return out


#: How many architectures the rule picks (benchmarks/coverage/zoo.py, `UNSEEN`; not imported: it imports torch).
RULE_SIZE = 25


def _only(results: dict[str, Any], rows: list[str]) -> dict[str, Any]:
    """`results` with only the cells and node-seconds of `rows` (the architectures measured before and after)."""
    return {**results, "cells": {k: v for k, v in results.get("cells", {}).items() if k in rows},
            "node_seconds": {k: v for k, v in results.get("node_seconds", {}).items() if k in rows}}


#: How the unseen architectures' matrix re-runs (benchmarks/coverage/zoo.py's UNSEEN holds the rule).
MATRIX_COMMAND = ("PYTHONPATH=. python benchmarks/model_matrix.py --unseen --targets server,android,ios,executorch,"
                  "intel --out benchmarks/results/model_matrix_unseen.json --work /tmp/unseen --doc -")


def _verified(results: dict[str, Any], family: str) -> tuple[int, int]:
    rows = [row for row in results.get("cells", {}).values() if family in row]
    return sum(row[family]["status"] == "verified" for row in rows), len(rows)


def _seconds(results: dict[str, Any]) -> str:
    failed = total = 0.0
    for nodes in results.get("node_seconds", {}).values():
        for event, seconds in nodes.values():
            total += seconds
            failed += seconds if event == "failed" else 0.0
    return f"{failed:.0f} of {total:.0f} node-seconds in nodes that failed ({failed / total:.0%})" if total else "—"


def matrix_lines(before: dict[str, Any], after: dict[str, Any], failed: list[dict[str, Any]]) -> list[str]:
    """The unseen architectures' matrix (zoo.UNSEEN): verified per target before (the code the rule was measured
    on first) and after, and every cell still failing after with its class and reason (`failed`: render.classified
    of `after`)."""
    if not before.get("cells") or not after.get("cells"):
        return []
    families = list(after.get("families") or before.get("families") or {})
    measured = sorted(set(before["cells"]) & set(after["cells"]))
    before, after = _only(before, measured), _only(after, measured)
    failed = [f for f in failed if f["row"] in measured]
    out = [f"### Never seen before: {len(measured)} of {RULE_SIZE} architectures by a rule fixed before the first run",
           "",
           "The rule (benchmarks/coverage/zoo.py, `UNSEEN`): timm's model modules no zoo model comes from, those whose "
           "smallest model holds at most 15 M parameters, every second by name, that smallest model at its own "
           "input size; torchvision's video and optical-flow builders of at most 15 M parameters at small inputs "
           "(mc3_18, raft_small) and its two smallest classifiers; transformers' Longformer, PatchTST and EnCodec at "
           "small configs. Five target families as a user writes them (server ONNX, android TFLite int8, ios Core ML "
           "fp16, ExecuTorch fp32, intel OpenVINO int8), cold, `-j 2`, one host "
           f"(`{MATRIX_COMMAND}`; before: `benchmarks/results/model_matrix_unseen_before.json`).", "",
           "| target | before | after |", "|---|---|---|"]
    for family in families:
        b, a = _verified(before, family), _verified(after, family)
        out.append(f"| {family} | {b[0]}/{b[1]} | {a[0]}/{a[1]} |")
    b = [sum(x) for x in zip(*(_verified(before, f) for f in families))]
    a = [sum(x) for x in zip(*(_verified(after, f) for f in families))]
    out += [f"| all | {b[0]}/{b[1]} ({b[0] / b[1]:.0%}) | {a[0]}/{a[1]} ({a[0] / a[1]:.0%}) |", "",
            f"Before: {_seconds(before)}. After: {_seconds(after)}.", ""]
    if failed:
        out += ["Cells still failing after, with their class (benchmarks/coverage/classify.py):", "",
                "| model | target | class | reason (first line) |", "|---|---|---|---|"]
        out += [f"| {f['row']} | {f['family']} | {f['class']} | {' '.join(str(f['reason']).split())[:200]} |"
                for f in sorted(failed, key=lambda f: (f["class"], f["row"], f["family"]))]
        out.append("")
    return out
