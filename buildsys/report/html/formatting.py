"""Values as display text: sizes, errors, ratios, latencies and limits; HTML escaping; shortening."""

from __future__ import annotations

import html
import json
import math
from typing import Any


def esc(value: Any) -> str:
    """Text for HTML/SVG content and attribute values."""
    return html.escape(str(value), quote=True)


def fmt_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_err(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if value == 0:
        return "0"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.1e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3g}"


def fmt_ratio(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


def fmt_pct(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) else "—"


def fmt_ms(value: Any) -> str:
    """A latency with its natural unit: 5.48 µs, 0.473 ms, 12.3 ms, 1.25 s."""
    if not isinstance(value, (int, float)):
        return "—"
    if value < 1:
        return f"{value * 1000:.3g} µs"
    if value < 1000:
        return f"{value:.3g} ms"
    return f"{value / 1000:.3g} s"


def fmt_value(metric: str, value: Any) -> str:
    if metric.startswith("max_") or metric.endswith("_abs") or metric.endswith("_rel"):
        return fmt_err(value)
    if metric in ("accuracy", "top1_agreement"):
        return fmt_pct(value)
    if metric.endswith("_ms"):
        return fmt_ms(value)
    if isinstance(value, float):
        return fmt_ratio(value)
    return "—" if value is None else str(value)


def fmt_limit(metric: str, item: dict[str, Any]) -> str:
    allowed = item.get("allowed")
    if allowed is None:
        return "not checked"
    op = {"<=": "≤", ">=": "≥"}.get(str(item.get("op", "")), str(item.get("op", "")))
    return f"{op} {fmt_value(metric, allowed)}"


def clip_text(text: str, px: float, size: int = 12) -> str:
    """Shorten `text` with an ellipsis to fit about `px` pixels at font `size`."""
    fit = max(3, int(px / (size * 0.56)))
    return text if len(text) <= fit else text[: fit - 1] + "…"


def short_text(value: Any) -> str:
    """`value` as text (JSON unless a string), cut to 80 characters with an ellipsis."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:79] + "…"
