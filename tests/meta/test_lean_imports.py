"""A toolchain's worker does not import what it never uses (docs/performance.md, "Cold build")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("coremltools")


def test_the_coreml_worker_loads_coremltools_without_what_it_only_probes_for() -> None:
    """coremltools imports TensorFlow, ExecuTorch and scikit-learn only to probe for them; the coreml worker makes
    it see none of them, and coremltools then runs its PyTorch frontend as it does where they are not installed,
    while palettization's k-means can still import scikit-learn when it runs."""
    script = (
        "import sys\n"
        "from buildsys.running.worker import block_unused_imports, preload_probing_packages\n"
        "block_unused_imports('coreml')\n"
        "preload_probing_packages('coreml')\n"
        "assert 'sklearn' not in sys.modules  # probed for at coremltools' import, hidden then\n"
        "import coremltools\n"
        "from coremltools._deps import _HAS_EXECUTORCH, _HAS_SKLEARN, _HAS_TF, _HAS_TORCH\n"
        "from coremltools.converters.mil.frontend.milproto import load\n"
        "from coremltools.converters.mil.frontend.torch import load as torch_load\n"
        "assert all(sys.modules.get(m) is None for m in ('tensorflow', 'executorch'))\n"
        "assert not (_HAS_TF or _HAS_EXECUTORCH or _HAS_SKLEARN) and _HAS_TORCH\n"
        "import sklearn.cluster  # palettization's k-means\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]

