"""`sparsity: auto` on Core ML: the highest pruning ratio that meets the target's acceptance, searched on the
calibration set by the MIL reference interpreter, recorded in deploy.lock, not searched again by a no-op build;
and a tolerance no ratio meets fails the build at once, on the first route, with what each ratio measured
(docs/mobile.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.storage.lock import Lock
from tests.conftest import REPO

pytest.importorskip("coremltools")

DEPLOY = """\
models:
  digits:
    source: {factory: "examples.digits.model:build", weights: examples/digits/weights.pt}
    inputs: [{name: image, shape: [batch, 1, 8, 8], dtype: float32, layout: NCHW}]
    outputs: [{name: logits, kind: scores}]
    data:
      example: examples/digits/data/example.npz
      calibration: examples/digits/data/calibration.npz
      validation: examples/digits/data/validation.npz
targets:
  pruned:   # the acceptance of the example's ios-pruned, with the ratio left to the search
    model: digits
    format: coreml
    precision: fp16
    options: {coreml-fp16: {sparsity: auto}}
    acceptance: {max_rel: 0.5, min_cosine: 0.7, max_accuracy_drop: 0.02}
  exact:    # fp16's own defaults: pruning a tenth of the weights already moves logits past them
    model: digits
    format: coreml
    precision: fp16
    options: {coreml-fp16: {sparsity: auto}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sparsity")
    shutil.copytree(REPO / "examples" / "digits", root / "examples" / "digits",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "examples" / "__init__.py").write_text("")
    (root / "deploy.yaml").write_text(DEPLOY)
    return root


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})


@pytest.mark.slow  # a Core ML conversion, four pruned packages through the MIL reference, the check
def test_sparsity_auto_takes_the_highest_ratio_that_holds_and_a_noop_does_not_search_again(project: Path) -> None:
    proc = run(project, "build", "-j", "1", "pruned")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lock = Lock.read(project / "deploy.lock")
    node = lock.targets["pruned"]["node"]
    search = lock.nodes[node]["facts"]["sparsity_search"]
    trials = {t["sparsity"]: t for t in search["trials"]}
    chosen = search["chosen"]
    # Bisection over 0.1 … 0.9: at most four packages; the chosen ratio passed, the next one up (if tried) missed.
    assert 1 <= len(trials) <= 4 and trials[chosen]["passed"] is True
    assert all(not t["passed"] for r, t in trials.items() if r > chosen)
    assert all(t["passed"] for r, t in trials.items() if r < chosen)
    assert 0.2 <= chosen <= 0.8  # digits holds half (docs/mobile.md) and loses its decisions at 0.9
    assert trials[chosen]["bytes"] < search["dense_bytes"]
    assert search["goal"]["logits"]["min_cosine"] == 0.7  # the target's own acceptance, never loosened
    # The delivered package is the chosen one, and the check (PyTorch, validation set) passes on it.
    check = json.loads((project / "artifacts/pruned/check.json").read_text()) \
        if (project / "artifacts/pruned/check.json").exists() else lock.nodes["verify:pruned"]["metrics"]
    assert check.get("passed", True) is not False
    explained = json.loads(run(project, "explain", node).stdout)
    assert any(n.startswith("sparsity auto: tried") for n in explained["notes"]), explained["notes"]

    again = run(project, "build", "pruned")
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout


@pytest.mark.slow
def test_sparsity_auto_fails_with_what_each_ratio_measured_when_none_holds(project: Path) -> None:
    proc = run(project, "build", "-j", "1", "exact")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sparsity auto: even the lowest ratio misses the tolerance" in proc.stdout
    assert "sparsity 0.1: missed" in proc.stdout and "deliver it dense" in proc.stdout
    lock = Lock.read(project / "deploy.lock")
    assert "exact" not in lock.targets
    # What the target asks fails on any route (errors.UnmetOnEveryRoute): no other route searched again (six
    # routes, four of them the same search, took 108 s; the one takes 20 s)
    assert "rerouted" not in proc.stdout and "exact" not in lock.routes, proc.stdout
