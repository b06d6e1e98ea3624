"""buildsys type-checks: mypy over the package, with the configuration in pyproject.toml ([tool.mypy])."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_mypy_passes_on_buildsys() -> None:
    if importlib.util.find_spec("mypy") is None:
        # Not out of reach: the README's test command installs it (the `test` extra), so a strict run fails here.
        pytest.skip("mypy is not installed: pip install -c constraints.txt -e '.[test]'")
    # The interpreter running the tests is the one whose packages (and types-* stubs) mypy reads.
    run = subprocess.run([sys.executable, "-m", "mypy", "buildsys"], cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, f"mypy buildsys found type errors (exit {run.returncode}):\n{run.stdout}{run.stderr}"
