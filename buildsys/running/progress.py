"""Build progress for people and machines: a live view on a terminal, one line per event in logs, JSON lines.

`progress_for` picks the view: `--json` streams every `buildsys.api.Event` as a JSON object per line
(started / built / cached / failed …, with reasons and metrics); a terminal gets a rich live view
(the running nodes with their elapsed time, done/total, and a failing node's last log lines); and
anything else (CI, a pipe) gets one plain line per event. `-q` keeps only failures, `-v` adds why a
node ran and where its log is. Colour follows rich's rules, which honour NO_COLOR.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from buildsys.records import Event

QUIET, NORMAL, VERBOSE = -1, 0, 1
_STYLE = {"built": "green", "cached": "cyan", "restored": "cyan", "remote": "cyan", "cutoff": "dim", "fresh": "dim",
          "failed": "bold red", "skipped": "yellow", "rerouted": "yellow", "analysed": "dim",
          "chosen": "cyan"}
LOG_LINES = 8  # a failing node's last log lines shown under it


class Progress:
    """Receives build events; `close` ends the view (the summary follows it)."""

    def __call__(self, event: Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JsonLines(Progress):
    """`build --json`: one JSON object per event on stdout, flushed, for scripts and CI dashboards."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def __call__(self, event: Event) -> None:
        self.stream.write(json.dumps(event.as_json(), default=str, sort_keys=True) + "\n")
        self.stream.flush()


class Lines(Progress):
    """Logs: one line per event (start and end), no cursor movement; failures carry their log tail."""

    def __init__(self, console: Any, verbosity: int = NORMAL):
        self.out = console
        self.verbosity = verbosity

    def __call__(self, event: Event) -> None:
        line = describe(event, self.verbosity)
        if line is not None:
            self.out.print(line, highlight=False)
        if event.event == "failed" and self.verbosity >= QUIET:
            _print_log_tail(self.out, event)


class Live(Progress):
    """A terminal: finished nodes scroll above a live panel of what is running and for how long."""

    def __init__(self, console: Any, verbosity: int = NORMAL):
        from rich.live import Live as RichLive

        self.out = console
        self.verbosity = verbosity
        self.running: dict[str, float] = {}
        self.done = 0
        self.total = 0
        self.live = RichLive(console=console, refresh_per_second=4, transient=True, get_renderable=self._panel)
        self.live.start()

    def __call__(self, event: Event) -> None:
        self.total = event.total or self.total
        if event.event == "started":
            self.running[event.node] = time.monotonic()
            return
        self.running.pop(event.node, None)
        self.done = event.done
        line = describe(event, self.verbosity)
        if line is not None:
            self.live.console.print(line, highlight=False)
        if event.event == "failed":
            _print_log_tail(self.live.console, event)

    def _panel(self) -> Any:
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_row(f"[bold]building[/] {self.done}/{self.total} node(s)", "")
        now = time.monotonic()
        for name, since in sorted(self.running.items(), key=lambda kv: kv[1]):
            table.add_row(f"  [yellow]running[/] {name}", f"{now - since:5.1f} s")
        return table

    def close(self) -> None:
        self.live.stop()


def describe(event: Event, verbosity: int = NORMAL) -> str | None:
    """One line of rich markup for an event, or None where the verbosity hides it."""
    if event.event == "started":
        if verbosity < NORMAL:
            return None
        why = f"  [dim]{'; '.join(event.reasons)}[/]" if event.reasons and verbosity >= VERBOSE else ""
        return f"  [dim]started [/] {event.node}{why}"
    if event.event == "fresh" or (verbosity < NORMAL and event.event != "failed"):
        return None
    style = _STYLE.get(event.event, "default")
    secs = f"{event.seconds:6.1f} s" if event.seconds and event.event in ("built", "failed", "analysed") else " " * 8
    extra = f"  {event.error}" if event.error else ""
    if event.event == "built" and event.metrics.get("passed") is False:
        extra = "  [yellow]acceptance not met (on_fail: warn)[/]"
    not_run = _not_run(event.metrics)
    if not_run:
        extra = f"  [yellow]{'; '.join(not_run)}[/]"
    if verbosity >= VERBOSE and event.log:
        extra += f"  [dim]log: {event.log}[/]"
    return f"  [{style}]{event.event:<8}[/] {event.node:<28} {secs}{extra}"


def _not_run(metrics: dict[str, Any]) -> list[str]:
    from buildsys.nodes.verify import not_run_reasons

    return not_run_reasons(metrics)


def _print_log_tail(out: Any, event: Event) -> None:
    """A converter's last words: the tail of the failing node's log (checks explain themselves); for a step its
    budget stopped, its stack and last output instead, and the calls of the ops a converter refused."""
    from buildsys.report.console import failure_details

    details = failure_details(event.metrics)
    if details:
        out.print("\n".join("      " + line for line in details), markup=False, highlight=False, style="dim")
    if "stopped" in event.metrics or event.kind != "artifact" or not event.log or not Path(event.log).is_file():
        return
    tail = Path(event.log).read_text(errors="replace").strip().splitlines()[-LOG_LINES:]
    if tail:
        out.print("\n".join("      " + line for line in tail), markup=False, highlight=False, style="dim")


def progress_for(console: Any, *, as_json: bool = False, verbosity: int = NORMAL) -> Progress:
    """The view for this output: JSON lines, a live terminal panel, or plain lines."""
    if as_json:
        return JsonLines()
    if console.is_terminal and not console.is_dumb_terminal and verbosity >= NORMAL:
        return Live(console, verbosity)
    return Lines(console, verbosity)


class Lazy(Progress):
    """A view made on the first event, so a build with nothing to do never imports rich."""

    def __init__(self, make: Any):
        self.make = make
        self.view: Progress | None = None

    def __call__(self, event: Event) -> None:
        if self.view is None:
            self.view = self.make()
        self.view(event)

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
