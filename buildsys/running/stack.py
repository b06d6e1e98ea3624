"""A stopped worker's Python stack, read back from the node's log (standard library only).

The worker registers `faulthandler` on SIGUSR1 (buildsys.running.worker): on the signal it writes every thread's
stack to its stderr, which during a step is the node's log. The watchdog writes `MARKER` into the log
first, so the dump is what follows it. faulthandler's format (innermost frame first):

    Current thread 0x00007f… (most recent call first):
      File "/…/onnx2tf/onnx2tf.py", line 123 in convert
      …
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from buildsys.localise.sites import short_path, stdlib_file

#: The line the watchdog writes into the node's log just before it asks the worker for its stack.
MARKER = "# modelbuild: stopping the step; the worker's Python stack follows"
_THREAD = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-fA-F]+ .*most recent call first")
_FRAME = re.compile(r'^\s+File "(.+)", line (\d+) in (.+)$')
#: Lines of the step's own output kept with the stop (what it printed last), read from its last bytes.
TAIL_LINES, _TAIL_BYTES = 6, 1 << 16


@dataclass(frozen=True)
class Frame:
    """One Python frame of a dump: `file` (as written), `line`, `function`."""

    file: str
    line: int
    function: str

    def short(self, root: Path | None = None) -> str:
        """'onnx2tf/onnx2tf.py:123 (convert)'."""
        return f"{short_path(self.file, root)}:{self.line} ({self.function})"

    @property
    def ours(self) -> bool:
        """Whether the frame is modelbuild's own code (the worker and the step around the converter)."""
        return "/buildsys/" in self.file

    @property
    def stdlib(self) -> bool:
        return stdlib_file(self.file)


def step_stack(dump: str) -> list[Frame]:
    """The frames (innermost first) of the thread that ran the step: the one whose stack passes through
    buildsys.running.worker's `handle`, else the thread the signal interrupted, else the first one; [] for no dump."""
    threads: list[tuple[bool, list[Frame]]] = []
    for line in dump.splitlines():
        if _THREAD.match(line):
            threads.append((line.startswith("Current"), []))
        elif threads and (m := _FRAME.match(line)):
            threads[-1][1].append(Frame(m.group(1), int(m.group(2)), m.group(3).strip()))
    for _, frames in threads:
        if any(f.function == "handle" and f.file.endswith("buildsys/running/worker.py") for f in frames):
            return frames
    current = [frames for is_current, frames in threads if is_current]
    return current[0] if current else (threads[0][1] if threads else [])


def where(frames: list[Frame], root: Path | None = None) -> str:
    """Where a stack was, in words: its innermost frame outside the standard library, and the call from
    modelbuild's step into the converter when that is another frame ('in onnx2tf/ops/Mul.py:88 (make_node),
    from onnx2tf/onnx2tf.py:610 (convert)'); "" for no frames."""
    inner = next((f for f in frames if not f.stdlib), frames[0] if frames else None)
    if inner is None:
        return ""
    entry = None  # the frame just inside modelbuild's innermost frame: the call into the converter
    for outer, inside in zip(frames[1:], frames):
        if outer.ours and not inside.ours:
            entry = inside
            break
    text = f"in {inner.short(root)}"
    return text + (f", from {entry.short(root)}" if entry is not None and entry != inner else "")


def read_stop(log: Path, offset: int) -> tuple[list[Frame], list[str]]:
    """From the node's log: the step's stack dumped after the marker written at byte `offset`, and the last
    lines the step printed before it (colour codes removed, each cut to 200 characters)."""
    try:
        with open(log, "rb") as f:
            start = max(0, offset - _TAIL_BYTES)  # a converter's log can be large: its end is what matters
            f.seek(start)
            before = f.read(offset - start).decode("utf-8", errors="replace")
            after = f.read().decode("utf-8", errors="replace")
    except OSError:
        return [], []
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip()[:200] for line in before.splitlines()]
    tail = [line for line in lines if line.strip() and not line.startswith("# modelbuild:")][-TAIL_LINES:]
    return step_stack(after), tail


def stack_lines(frames: list[Frame], root: Path | None = None, limit: int = 12) -> list[str]:
    """The stack for the failure's record and print-out, innermost first, modelbuild's own frames and
    the standard library's left out."""
    shown = [f.short(root) for f in frames if not f.ours and not f.stdlib]
    return shown[:limit] + ([f"… {len(shown) - limit} more"] if len(shown) > limit else [])
