"""What the coverage matrices ran on: the host and the versions of every converter and runtime."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any

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


def describe_host() -> dict[str, Any]:
    """Host, CPU count, date and toolchain versions, for the results' `meta`."""
    return {"host": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "versions": versions()}
