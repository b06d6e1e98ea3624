"""`modelbuild doctor --imports`: what each toolchain's worker pays to import its packages, measured."""

from __future__ import annotations

import subprocess
import sys

from buildsys.running.imports import toolchain_modules
from tests.conftest import REPO


def test_each_toolchain_lists_the_modules_of_its_steps_packages() -> None:
    modules = toolchain_modules()
    assert modules["coreml"][0][0] == "coremltools" and "torch" in modules["coreml"][0]
    assert "tensorflow" in modules["tf"][0] and "openvino" in modules["openvino"][0]
    assert "functorch" not in modules["torch"][0]  # the module named like its distribution, not a sibling


def test_doctor_times_every_toolchain_in_a_fresh_worker() -> None:
    out = subprocess.run([sys.executable, "-m", "buildsys", "doctor", "--imports"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    rows = {line.split()[0]: line for line in out.split("import seconds per toolchain", 1)[1].splitlines()[1:]}
    assert set(rows) == set(toolchain_modules())
    coreml = rows["coreml"].split()
    assert float(coreml[1]) > 0 and "coremltools" in rows["coreml"]
    for toolchain, (_, missing) in toolchain_modules().items():
        if missing:
            assert f"not installed: {', '.join(missing)}" in rows[toolchain]
