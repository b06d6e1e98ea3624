"""The HTML/Markdown build report, rendered from the deploy.lock of a real tiny build (and edits of it)."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from buildsys.storage.lock import Lock
from buildsys.report.html import render, rows
from tests.conftest import make_tiny_project
from tests.helpers.shared import once

TARGETS = ("int8", "server", "ts")


def build_lock(root: Path) -> dict[str, Any]:
    """Build the tiny project (three targets) through the CLI, benchmark one target, return its lock."""
    project = make_tiny_project(root)
    project.run("build")
    project.run("bench", "server")
    return Lock.read(project.root / "deploy.lock").as_dict()


def shared_lock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """build_lock's lock, built once per test session for every report test that reads it (the HTML's and the
    browser's modules, on whichever workers they run)."""
    return once(tmp_path_factory, "report-tiny", lambda root: build_lock(root / "proj"))[1]


@pytest.fixture(scope="module")
def lock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return shared_lock(tmp_path_factory)


@pytest.fixture(scope="module")
def page(lock: dict[str, Any]) -> tuple[str, str]:
    return render(lock, "Tiny report")


class Tags(HTMLParser):
    """Collects start tags (name, attrs) and checks that non-void tags are closed in order."""

    VOID = {"meta", "br", "img", "hr", "input", "link", "rect", "line", "circle", "path"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    tags.close()
    return tags


def summary_rows(html: str) -> list[str]:
    body = html.split('<table class="summary">', 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr style=.*?</tr>", body, flags=re.S)


# --- content -------------------------------------------------------------------------------------


def test_every_target_has_one_row_with_its_numbers(lock: dict[str, Any], page: tuple[str, str]) -> None:
    html, _ = page
    found = summary_rows(html)
    assert len(found) == len(TARGETS) == len(lock["targets"])
    for target, row in zip(sorted(lock["targets"]), found):
        assert f'<div class="t">{target}</div>' in row
        assert "passed" in row  # every target of the tiny build passes its check
        size = sum(f[2] for f in lock["targets"][target]["files"])
        assert f"{size} B" in row or f"{size / 1024:.1f} KB" in row
    server = found[list(sorted(lock["targets"])).index("server")]
    assert "µs" in server or " ms" in server  # its bench latency
    assert "×" in server  # speedup vs eager
    int8 = found[list(sorted(lock["targets"])).index("int8")]
    assert ">int8</span>" in int8 and "onnx-int8" in int8  # precision chip and format


def test_rows_read_from_the_lock(lock: dict[str, Any]) -> None:
    by = {r.target: r for r in rows(lock)}
    assert set(by) == set(TARGETS)
    assert by["int8"].precision == "int8" and by["server"].precision == "fp32" and by["ts"].format == "torchscript"
    assert all(r.model == "tiny" and r.status == "passed" and r.size > 0 for r in by.values())
    assert by["server"].bench["artifact"]["p50_ms"] > 0 and not by["ts"].bench
    assert by["int8"].toolchain and by["int8"].options.get("method") == "dynamic"
    assert by["server"].metric("accuracy") is not None and by["server"].reference_accuracy() is not None


def test_three_svg_plots_are_well_formed(lock: dict[str, Any], page: tuple[str, str]) -> None:
    html, _ = page
    plots = html.split("<h2>Plots</h2>", 1)[1].split("</div>", 1)[0]
    svgs = re.findall(r'<svg class="chart".*?</svg>', plots, flags=re.S)
    labels = [re.search(r'aria-label="([^"]*)"', s).group(1) for s in svgs]  # type: ignore[union-attr]
    assert labels == ["Numeric error per target and output", "Latency per runtime",
                      "Artifact size per precision, by model"]
    for svg in svgs:
        root = ET.fromstring(svg)  # inline SVG that is also valid XML
        assert root.tag == "svg" and root.find(".//rect") is not None
    error, latency, size = svgs
    for target in TARGETS:
        assert f">{target}</text>" in error
    assert ">server</text>" in latency and ">ts</text>" not in latency  # only benchmarked targets
    assert latency.count("<title>") == 2  # one bar for the artifact, one for eager
    assert ">tiny</text>" in size and size.count("<title>") == len(TARGETS)  # one bar per target, grouped by model


def test_a_models_formats_are_compared_by_the_latency_their_checks_measured(lock: dict[str, Any],
                                                                           page: tuple[str, str]) -> None:
    html, markdown = page
    section = html.split("<h2>Formats compared</h2>", 1)[1].split("<h2>Details</h2>", 1)[0]
    best = sorted((r.check["latency"]["min_ms"], r.target) for r in rows(lock))  # every check timed its artifact
    assert "fastest here: " in section and f"({best[0][1]})" in section and "× PyTorch eager" in section
    table = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert [t for t in re.findall(r"<tr><td>([^<]+)</td>", table)] == [t for _, t in best]  # fastest first
    [svg] = re.findall(r'<svg class="chart".*?</svg>', section, flags=re.S)
    root = ET.fromstring(svg)
    assert root.get("aria-label") == "Latency of each format of tiny"
    assert all(f">{t}</text>" in svg for t in TARGETS) and ">PyTorch eager</text>" in svg
    assert "## Formats compared: tiny" in markdown and "| Target | Format | Precision | Size | Best call |" in markdown
    # ONNX Runtime and TorchScript let a session choose its threads: each check timed one thread too
    assert all(r.check["latency"]["one_thread"]["min_ms"] > 0 for r in rows(lock)) and "<th>1 thread</th>" in section


def test_html_is_self_contained_and_balanced(page: tuple[str, str]) -> None:
    html, _ = page
    assert html.startswith("<!doctype html>") and '<meta charset="utf-8">' in html
    lowered = html.lower()
    for forbidden in ("http://", "https://", "<script", "<link", "<img", "<iframe", "@import", "url(", "src=", "href="):
        assert forbidden not in lowered, forbidden
    tags = parse(html)
    assert not tags.errors and not tags.stack, (tags.errors, tags.stack)
    assert sum(1 for t, _ in tags.tags if t == "details") == len(TARGETS)


def test_markdown_has_a_table_row_per_target(lock: dict[str, Any], page: tuple[str, str]) -> None:
    _, md = page
    assert md.startswith("# Tiny report\n")
    table = [line for line in md.splitlines() if line.startswith("| ✅") or line.startswith("| ❌") or line.startswith("| ⚠")]
    assert len(table) == len(TARGETS)
    header = next(line for line in md.splitlines() if line.startswith("| | Target"))
    for line in table:
        assert line.count(" | ") == header.count(" | ")
    for target in TARGETS:
        assert f"**{target}**" in md and f"## ✅ {target}" in md
    assert "onnxruntime" in md and "torch-eager" in md  # the bench table of server


def test_render_is_deterministic(lock: dict[str, Any]) -> None:
    assert render(lock, "x") == render(copy.deepcopy(lock), "x")


# --- escaping and statuses -----------------------------------------------------------------------

EVIL = '<script>alert("x")</script>&|*'


def hostile(lock: dict[str, Any]) -> dict[str, Any]:
    """The real lock with markup in every place text comes from: target, reason, option, file name."""
    lock = copy.deepcopy(lock)
    lock["targets"][EVIL] = lock["targets"].pop("ts")
    lock["targets"][EVIL]["files"][0][0] = "<img src=x onerror=alert(1)>.pt"
    lock["nodes"][f"verify:{EVIL}"] = lock["nodes"].pop("verify:ts")
    lock["nodes"][f"verify:{EVIL}"]["metrics"] = {"passed": None, "not_run": "needs <b>macOS</b> & \"coremltools\""}
    node = lock["targets"]["int8"]["node"]
    lock["nodes"][node]["components"]["options"]["method"] = "</code><script>1</script>"
    lock["nodes"]["bench:server"]["metrics"]["host"]["cpu"] = "<svg onload=alert(2)>"
    return lock


def test_all_text_is_escaped(lock: dict[str, Any]) -> None:
    html, md = render(hostile(lock), 'Title <i>"quoted"</i>')
    assert "<script" not in html.lower() and "<img" not in html.lower() and "<b>macOS" not in html
    assert "onload=alert" not in html.replace("&lt;svg onload=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html
    assert "&lt;b&gt;macOS&lt;/b&gt; &amp; &quot;coremltools&quot;" in html
    assert "<title>Title &lt;i&gt;&quot;quoted&quot;&lt;/i&gt;</title>" in html
    tags = parse(html)
    assert not tags.errors and not tags.stack
    assert {t for t, _ in tags.tags} <= {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "p",
                                         "div", "span", "b", "table", "thead", "tbody", "tr", "th", "td", "figure",
                                         "figcaption", "svg", "rect", "line", "circle", "text", "details", "summary",
                                         "code", "footer"}
    for svg in re.findall(r'<svg class="chart".*?</svg>', html, flags=re.S):
        ET.fromstring(svg)
    # Markdown: no live HTML, and the pipe in the name does not add a table column
    assert "<script" not in md and "<img" not in md and "<b>macOS" not in md
    header = next(line for line in md.splitlines() if line.startswith("| | Target"))
    evil_row = next(line for line in md.splitlines() if "alert" in line and line.startswith("| "))
    assert len(re.findall(r"(?<!\\)\|", evil_row)) == len(re.findall(r"(?<!\\)\|", header))


def test_statuses_color_the_rows(lock: dict[str, Any]) -> None:
    lock = copy.deepcopy(lock)
    check = lock["nodes"]["verify:int8"]
    check["metrics"]["passed"] = False
    check["metrics"]["outputs"]["y"]["top1_agreement"].update(ok=False, allowed=0.999999)
    check["components"]["acceptance"]["on_fail"] = "warn"
    lock["nodes"]["verify:ts"]["metrics"] = {"passed": None, "not_run": "coremltools only runs on macOS"}
    bench = lock["nodes"]["bench:server"]["metrics"]
    bench["budgets"] = {"p50_ms": {"observed": bench["artifact"]["p50_ms"], "allowed": 1e-6, "op": "<=", "ok": False}}
    bench["passed"] = False
    by = {r.target: r.status for r in rows(lock)}
    assert by == {"int8": "warn", "ts": "not run", "server": "over"}
    html, md = render(lock, "t")
    found = dict(zip(sorted(lock["targets"]), summary_rows(html)))
    assert "missed (warn)" in found["int8"] and "#9a6700" in found["int8"] and 'class="miss"' in found["int8"]
    assert "not run" in found["ts"] and "coremltools only runs on macOS" in found["ts"]
    assert "over budget" in found["server"]
    assert html.count("<details") == 3 and html.count(" open><summary>") == 3  # what needs attention is unfolded
    assert "⚠️ | **int8**" in md and "✗" in md
    lock["nodes"]["verify:int8"]["components"]["acceptance"]["on_fail"] = "error"
    assert {r.target: r.status for r in rows(lock)}["int8"] == "failed"


def test_a_lock_without_checks_or_benches_still_renders(lock: dict[str, Any]) -> None:
    bare = {"targets": copy.deepcopy(lock["targets"]), "nodes": {}}
    html, md = render(bare, "bare")
    assert len(summary_rows(html)) == len(TARGETS) and "not verified" in html
    assert "No numeric checks in this lock" in html and "No benchmarks in this lock" in html
    html, md = render({"nodes": {}, "targets": {}}, "empty")
    assert "records no targets" in html and "records no targets" in md
    assert not parse(html).errors
