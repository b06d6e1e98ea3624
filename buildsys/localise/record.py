"""A missed check's localisation kept for `explain` (the lock holds only what passed), and its table as
text: standard library only, for the orchestrator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from buildsys.storage.store import atomic_write


def miss_path(store_dir: Path, node: str, key: str | None) -> Path:
    """Where a miss of `node` under `key` is kept: beside its log, under the cache's logs/ (one file per
    key, so a route that failed keeps its table after the build moved on to the next route)."""
    return store_dir / "logs" / (node.replace("/", "__").replace(":", "_") + f".{(key or 'nokey')[:16]}.miss.json")


def save_miss(store_dir: Path, node: str, key: str | None, metrics: dict[str, Any]) -> None:
    """Keep what a check that missed found (its failures and localisation) under its key."""
    if "localisation" not in metrics:
        return
    path = miss_path(store_dir, node, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"key": key, "failures": metrics.get("failures", []), "localisation": metrics["localisation"]}
    atomic_write(path, json.dumps(body, sort_keys=True, indent=2) + "\n")


def last_miss(store_dir: Path, node: str, key: str | None) -> dict[str, Any] | None:
    """The kept miss of `node` while its key is still `key` (a changed artifact or tolerance voids it)."""
    try:
        body = json.loads(miss_path(store_dir, node, key).read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) and body.get("key") == key else None


def table_lines(localisation: dict[str, Any]) -> list[str]:
    """The per-layer table as aligned text: module, its class, the artifact's op, the error, a mark."""
    if localisation.get("not_available"):
        return [str(localisation["not_available"])]
    metric = localisation.get("metric", "error")
    rows = [("module", "type", "op", metric, "")]
    for row in localisation.get("rows", []):
        mark = ("FIRST" if row["module"] == localisation.get("first") else "fused away" if row.get("absent")
                else "ok" if row["ok"] else "miss")
        if row["module"] == localisation.get("worst") and mark != "FIRST":
            mark += ", largest step"
        rows.append((row["module"], row.get("module_type", ""), row.get("op", ""), f"{row['error']:.3g}", mark))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + f"  {r[4]}" for r in rows]
    shown, total = len(rows) - 1, localisation.get("layers_compared", len(rows) - 1)
    if total > shown:
        lines.append(f"({shown} of {total} layers shown)")
    return [line.rstrip() for line in lines]
