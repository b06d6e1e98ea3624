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
