"""A toolchain's worker does not import what it never uses (docs/performance.md, "Cold build")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("coremltools")


def test_the_coreml_worker_loads_coremltools_without_tensorflow() -> None:
    """coremltools imports TensorFlow only to probe for it; the coreml worker makes it see none, and
    coremltools then runs its PyTorch frontend as it does where TensorFlow is not installed."""
    script = (
        "import sys\n"
        "from buildsys.running.worker import block_unused_imports\n"
        "block_unused_imports('coreml')\n"
        "import coremltools\n"
        "from coremltools._deps import _HAS_TF, _HAS_TORCH\n"
        "from coremltools.converters.mil.frontend.milproto import load\n"
        "assert sys.modules.get('tensorflow') is None and not _HAS_TF and _HAS_TORCH\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]

