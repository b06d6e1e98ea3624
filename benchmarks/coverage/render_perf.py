"""docs/coverage.md's size and latency section: what each verified cell of a model-matrix run weighs and how fast it
runs, against its precision's ideal size and against PyTorch eager on the same host.

It reads the `measures` a cell carries (benchmarks/coverage/projects.measures_of): cells built before the build's
summary carried them have none and are counted as not measured, never guessed.

The limits are issue 55's: an int8 or fp16 file at most 1.3× its ideal (parameters × 1 or 2 bytes), an fp32 file
at most 1.1× parameters × 4; speed is PyTorch eager's median batch-1 call over the artifact's, both at one
intra-op thread (above 1: the artifact is faster).
"""

from __future__ import annotations

import statistics
from typing import Any

#: The largest size against the ideal each precision may ship at (int4's ideal is half a byte a weight).
SIZE_LIMITS = {"fp32": 1.1, "fp16": 1.3, "int8": 1.3, "int4": 1.3}


def size_limit(precision: str) -> float:
    return SIZE_LIMITS.get(precision, SIZE_LIMITS["fp32"])


def speed(measures: dict[str, Any]) -> float | None:
    """Eager's median over the artifact's, at one thread (None where either was not timed at one thread)."""
    ms, eager = measures.get("ms"), measures.get("eager_ms")
    return eager / ms if ms and eager else None


def _median(values: list[float], fmt: str) -> str:
    return fmt.format(statistics.median(values)) if values else "—"


def family_rows(results: dict[str, Any], families: list[str]) -> list[str]:
    """One table row per family: cells measured, median size against the ideal, cells over the limit, median
    speed against eager, and cells at least as fast as eager."""
    lines = ["| target | verified | measured | median × ideal size | over its size limit | median speed vs eager "
             "(1 thread) | at least as fast as eager |", "|---|---|---|---|---|---|---|"]
    for family in families:
        cells = [row[family] for row in results.get("cells", {}).values() if family in row]
        verified = [c for c in cells if c.get("status") == "verified"]
        measured = [c for c in verified if c.get("measures")]
        ratios = [c["measures"]["vs_ideal"] for c in measured if c["measures"].get("vs_ideal")]
        over = [c for c in measured if c["measures"].get("vs_ideal", 0) > size_limit(c["measures"].get("asked", ""))]
        speeds = [s for c in measured if (s := speed(c["measures"])) is not None]
        fast = sum(s >= 1 for s in speeds)
        lines.append(f"| {family} | {len(verified)}/{len(cells)} | {len(measured)} | {_median(ratios, '{:.2f}×')} | "
                     f"{len(over)} | {_median(speeds, '{:.1f}×')} | "
                     f"{f'{fast}/{len(speeds)}' if speeds else 'not timed'} |")
    return lines


def worst_rows(results: dict[str, Any], limit: int = 20) -> list[str]:
    """The cells over their size limit or slower than eager, the furthest off first, with the route that made
    them and the caveats their row carries (what the user would want to know about them)."""
    found = []
    for model, row in sorted(results.get("cells", {}).items()):
        for family, cell in sorted(row.items()):
            m = cell.get("measures") or {}
            ratio, fast, bound = m.get("vs_ideal"), speed(m), size_limit(m.get("asked", ""))
            badness = max((ratio or 0) / bound, 1 / fast if fast else 0)
            if badness > 1:
                found.append((badness, model, family, m, cell))
    found.sort(key=lambda f: -f[0])
    lines = ["| model | target | precision | × ideal size | speed vs eager | route | caveats |",
             "|---|---|---|---|---|---|---|"]
    for _, model, family, m, cell in found[:limit]:
        fast = speed(m)
        size = f"{m['vs_ideal']:.2f}×" if m.get("vs_ideal") else "—"
        timed = f"{fast:.2f}×" if fast is not None else "not timed"
        caveats = "; ".join(cell.get("caveats", [])) or "—"
        lines.append(f"| {model} | {family} | {m.get('asked', '')} | {size} | {timed} | {cell.get('route', '')} | "
                     f"{caveats} |")
    if len(found) > limit:
        lines.append(f"| … {len(found) - limit} more | | | | | | |")
    return lines if found else ["No cell is over its size limit or slower than eager."]


def perf_lines(results: dict[str, Any], families: list[str], command: str) -> list[str]:
    """The section: how it was measured, the per-family table and the worst cells (none where no run has
    measures)."""
    if not any(c.get("measures") for row in results.get("cells", {}).values() for c in row.values()):
        return []
    models = sorted(results["cells"])
    meta = results.get("meta", {})
    return ["### Size and latency of what ships", "",
            f"{len(models)} architectures of the model matrix ({', '.join(f'`{m}`' for m in models)}), built cold "
            f"on {meta.get('date', '?')} ({meta.get('host', '?')}) with `{command}`. "
            "Size: the artifact's weight bytes against parameters × the asked precision's bytes (4 / 2 / 1 / ½; "
            "docs/quantization.md); the limit is 1.3× for int8 and fp16, 1.1× for fp32. Speed: PyTorch eager's "
            "median batch-1 call over the artifact's in its runtime, both timed by the build at one intra-op "
            "thread on this desktop host (above 1×: faster than eager); Core ML off macOS has no runtime to time "
            "(its check runs the MIL reference interpreter), and the browser and HTTP runtimes keep their own "
            "threads, so those cells say 'not timed'.", "",
            *family_rows(results, families), "", "Cells over their size limit or slower than eager:", "",
            *worst_rows(results), ""]
