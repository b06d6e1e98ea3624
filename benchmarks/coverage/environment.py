"""What the coverage matrices ran on: the host and the versions of every converter and runtime."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: The distributions whose versions decide the cells.
TOOLCHAIN = ("torch", "onnx", "onnxscript", "onnxruntime", "onnx2tf", "tensorflow", "ai-edge-litert", "litert-torch",
             "coremltools", "executorch", "openvino", "nncf")


def versions(names: tuple[str, ...] = TOOLCHAIN) -> dict[str, str]:
    """Installed version of each distribution ('not installed' where it is not)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


#: What decides a cell besides the toolchain: the package, its recipes and the harness (not the results it writes).
CODE_PATHS = ("buildsys", "recipes", "pyproject.toml", "benchmarks/coverage", "benchmarks/op_matrix.py",
              "benchmarks/model_matrix.py")


def code_version() -> str:
    """The modelbuild commit the cells are measured on, with ' + local changes' where the package, recipes or
    harness differ from it; 'unknown' outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit, changed = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} + local changes" if changed else commit


def describe_host() -> dict[str, Any]:
    """Host, CPU count, date, the modelbuild commit and toolchain versions, for the results' `meta`."""
    return {"host": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "code": code_version(),
            "versions": versions()}
