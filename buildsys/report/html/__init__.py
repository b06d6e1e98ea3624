"""The build report: one self-contained HTML page (and its Markdown twin) drawn from deploy.lock alone."""

# One row per target with its size, numeric check, latency and status; three inline SVG plots (numeric
# error per target and output, latency per runtime, size per precision by model); and per target details
# (files, every metric against its limit, bench runs, toolchain and options).
#
# Standard library only: no JavaScript, no external assets, no plotting library; every piece of text
# from the lock is escaped. `render(lock, title)` returns (html, markdown).
#
#     python -m buildsys.report.html deploy.lock -o report.html [--markdown report.md] [--title ...]

from __future__ import annotations

from typing import Any

from buildsys.report.html.charts import error_chart, latency_chart, size_chart
from buildsys.report.html.data import Row, rows
from buildsys.report.html.formatting import (
    esc,
    fmt_err,
    fmt_limit,
    fmt_ms,
    fmt_pct,
    fmt_ratio,
    fmt_size,
    fmt_value,
)
from buildsys.report.html.markdown import md, render_markdown
from buildsys.report.html.page import CSS, render_html

__all__ = ["CSS", "Row", "error_chart", "esc", "fmt_err", "fmt_limit", "fmt_ms", "fmt_pct", "fmt_ratio", "fmt_size",
           "fmt_value", "latency_chart", "md", "render", "render_html", "render_markdown", "rows", "size_chart"]


def render(lock: dict[str, Any], title: str) -> tuple[str, str]:
    """The report of the build recorded in `lock` (deploy.lock as a dict): (HTML page, Markdown)."""
    data = rows(lock)
    return render_html(data, title), render_markdown(data, title)
