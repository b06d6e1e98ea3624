"""Build progress: JSON lines for machines, one line per event in logs, a live panel on terminals, -q/-v, NO_COLOR."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from rich.console import Console

from buildsys.records import Event
from buildsys.running.progress import QUIET, VERBOSE, JsonLines, Lines, Live, progress_for
from tests.conftest import TinyProject


def _console(tty: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=tty, width=160, color_system="standard" if tty else None), buf


def _events() -> list[Event]:
    return [Event("started", "m/onnx", "artifact", reasons=["not built yet"], total=2),
            Event("built", "m/onnx", "artifact", seconds=1.25, log="/tmp/x.log", done=1, total=2),
            Event("started", "verify:t", "check", target="t", reasons=["not built yet"], done=1, total=2),
            Event("failed", "verify:t", "check", target="t", seconds=0.5, error="acceptance not met", done=2, total=2)]


def test_json_lines_are_one_object_per_event() -> None:
    buf = io.StringIO()
    view = JsonLines(buf)
    for event in _events():
        view(event)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [(e["event"], e["node"]) for e in lines] == [("started", "m/onnx"), ("built", "m/onnx"),
                                                        ("started", "verify:t"), ("failed", "verify:t")]
    assert lines[0]["reasons"] == ["not built yet"] and lines[1]["seconds"] == 1.25 and lines[3]["target"] == "t"
    assert lines[3]["error"] == "acceptance not met" and (lines[3]["done"], lines[3]["total"]) == (2, 2)


def test_lines_print_every_event_and_verbosity_filters(tmp_path) -> None:
    out, buf = _console()
    view = Lines(out)
    for event in _events():
        view(event)
    text = buf.getvalue()
    assert text.count("started") == 2 and "built    m/onnx" in text and "failed   verify:t" in text
    assert "\x1b[" not in text  # not a terminal: no escape codes

    out, buf = _console()
    quiet = Lines(out, QUIET)
    for event in _events():
        quiet(event)
    lines = buf.getvalue().strip().splitlines()  # -q: the failure only, nothing about what started or was built
    assert len(lines) == 1 and "failed" in lines[0] and "verify:t" in lines[0], lines

    out, buf = _console()
    verbose = Lines(out, VERBOSE)
    for event in _events():
        verbose(event)
    assert "not built yet" in buf.getvalue() and "log: /tmp/x.log" in buf.getvalue()


def test_a_failing_converter_shows_its_last_log_lines(tmp_path) -> None:
    log = tmp_path / "step.log"
    log.write_text("\n".join(f"line {i}" for i in range(20)) + "\nValueError: unsupported op Foo\n")
    out, buf = _console()
    Lines(out)(Event("failed", "m/tflite", "artifact", seconds=3.0, error="onnx2tf failed", log=str(log)))
    text = buf.getvalue()
    assert "unsupported op Foo" in text and "line 13" in text and "line 12" not in text  # the last 8 lines


def test_terminal_gets_the_live_panel_and_logs_get_lines() -> None:
    tty, _ = _console(tty=True)
    view = progress_for(tty)
    try:
        assert isinstance(view, Live)
        view(_events()[0])
        panel = Console(file=io.StringIO(), width=120)
        panel.print(view._panel())
        assert "running m/onnx" in panel.file.getvalue() and "0/2" in panel.file.getvalue()
    finally:
        view.close()
    assert isinstance(progress_for(_console()[0]), Lines)
    assert isinstance(progress_for(tty, as_json=True), JsonLines)


def test_build_json_streams_events_and_no_color_is_respected(tiny: TinyProject) -> None:
    proc = tiny.run("build", "--json", "ts")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {e["event"] for e in events} >= {"started", "built"} and events[-1]["event"] == "summary"
    assert events[-1]["ok"] is True and events[-1]["targets"]["ts"]["status"] == "passed"
    # -q: nothing but the summary table; NO_COLOR (set by tiny.run) even under a forced terminal
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "buildsys", "-f", str(tiny.config), "build", "-q", "--force", "ts"],
                          cwd=tiny.root, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "started" not in proc.stdout and "built " not in proc.stdout and "passed" in proc.stdout
    assert "\x1b[" not in proc.stdout + proc.stderr
