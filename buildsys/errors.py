"""The exception hierarchy: every user mistake is a ModelbuildError with what, where and the fix."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Location:
    """A place in a config file: the file and the 1-based line (0 when unknown)."""

    file: Path
    line: int = 0

    def __str__(self) -> str:
        name = _short(self.file)
        return f"{name}:{self.line}" if self.line else name


def _short(path: Path) -> str:
    """Show a path relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class ModelbuildError(Exception):
    """Root of every error a user can cause and fix. The CLI prints it as one line, no traceback."""

    exit_code = 2

    def __init__(self, message: str, *, where: Location | None = None, field: str = "", hint: str = ""):
        self.what = message
        self.where = where
        self.field = field
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        parts = []
        if self.where is not None:
            parts.append(f"{self.where}: ")
        if self.field:
            parts.append(f"{self.field}: ")
        parts.append(self.what)
        if self.hint:
            parts.append(f" ({self.hint})" if not self.hint.startswith("—") else f" {self.hint}")
        return "".join(parts)


class ConfigError(ModelbuildError):
    """deploy.yaml (or an included recipe) is malformed or inconsistent."""


class PlanError(ModelbuildError):
    """The targets cannot be expanded into a DAG: unknown formats, no route, a cycle."""


class BuildFailed(ModelbuildError):
    """One or more nodes failed; the summary has already been printed."""

    exit_code = 1


class StepError(ModelbuildError):
    """A step or check could not do its job on a valid config (a converter refused an op, ...)."""

    exit_code = 1


class UnmetOnEveryRoute(StepError):
    """A step failed for what its target asks of this model, not for the route: every route would fail the same
    way (`sparsity: auto` where even the lowest ratio misses the target's acceptance), so the planner tries no
    other route (planning/failures.py) and the build fails at once, saying what the user can change."""


class DataError(ModelbuildError):
    """A data set (example / calibration / validation) cannot be used as it is: NaN inputs, labels
    that do not fit the samples. Reported as bad data, never blamed on an artifact."""


def install_command(extra: str) -> str:
    """The one way modelbuild tells how to install an extra (always through the constraints file: any other
    torch pulls gigabytes of CUDA packages)."""
    return f"pip install -c constraints.txt 'modelbuild[{extra}]'"


def not_installed(modules: Sequence[str], extra: str) -> str | None:
    """"onnxruntime is not installed (pip install …)" for the Python modules of `modules` (import names, shown as
    their distributions: ai_edge_litert → ai-edge-litert) that `extra` installs; None when `modules` is empty."""
    if not modules:
        return None
    names = [m.replace("_", "-") for m in modules]
    return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} not installed ({install_command(extra)})"


class MissingToolchain(ModelbuildError):
    """An optional package a step needs is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed",
            hint=f"install it with: {install_command(extra)}",
        )


class InternalError(Exception):
    """A bug in modelbuild itself (never caused by user input). The CLI saves its traceback to a file,
    says that it is a bug, and exits with INTERNAL_EXIT: distinct from a failed build (1) and a user
    error (2)."""


INTERNAL_EXIT = 3


def describe(exc: BaseException) -> str:
    """'Type: first line of the message', what a user needs to recognise the failure."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' — did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"— did you mean '{close[0]}'?" if close else ""
