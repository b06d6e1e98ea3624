"""The HTML report in a real browser: headless Chromium lays it out at 1280 px and takes a screenshot.

Skipped when no Chromium is on PATH (Debian: apt-get install chromium).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from buildsys.report.html import render
from tests.report.test_report_html import shared_lock

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)

pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not on PATH (apt-get install chromium)")

WIDTH, HEIGHT = 1280, 1600


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium isolated from the network and the user's profile."""
    assert BROWSER is not None
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def lock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return shared_lock(tmp_path_factory)


def test_screenshot_is_a_real_page(lock: dict[str, Any], tmp_path: Path) -> None:
    html, _ = render(lock, "Tiny report")
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><title>blank</title>", encoding="utf-8")
    shots = {}
    for name, source in (("report", page), ("blank", blank)):
        png = tmp_path / f"{name}.png"
        proc = chromium(tmp_path, f"--screenshot={png}", source.as_uri())
        assert png.is_file(), f"no screenshot of {name}: {proc.stderr[-2000:]}"
        assert png_size(png) == (WIDTH, HEIGHT)
        shots[name] = png.stat().st_size
    # A page of tables, bars and text compresses far worse than an empty white one.
    assert shots["report"] > 20_000 and shots["report"] > 4 * shots["blank"], shots


def test_layout_fits_1280_pixels(lock: dict[str, Any], tmp_path: Path) -> None:
    """Laid out at 1280 px, nothing overflows sideways: the page, the target table, the plots.

    The report has no JavaScript; this test copy gets a probe script that writes the measured
    widths into the DOM, which Chromium dumps.
    """
    html, _ = render(lock, "Tiny report")
    probe = ("<script>var t=document.querySelector('.table-wrap');var s=[...document.querySelectorAll('svg.chart')];"
             "document.body.dataset.layout=[document.documentElement.scrollWidth,document.documentElement.clientWidth,"
             "t.scrollWidth,t.clientWidth,s.length,s.filter(e=>e.getBoundingClientRect().width>0).length].join(',')"
             "</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe), encoding="utf-8")
    proc = chromium(tmp_path, "--dump-dom", page.as_uri())
    found = re.search(r'data-layout="([\d,]+)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    page_scroll, page_client, table_scroll, table_client, svgs, visible = map(int, found.group(1).split(","))
    assert page_scroll <= page_client, "the page scrolls sideways at 1280 px"
    assert table_scroll <= table_client, "the target table is wider than its box at 1280 px"
    assert svgs == visible == 4  # three plots, and the chart of the model's formats compared
