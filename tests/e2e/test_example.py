"""The shipped example, built the way the README says: every target verified, then a no-op."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from buildsys import status
from buildsys.formats.torch import libtorch
from buildsys.storage.lock import Lock
from tests.conftest import REPO
from tests.helpers.shared import built_once, copy_of

pytestmark = pytest.mark.slow


def modelbuild(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "buildsys", "-f", "deploy.yaml.example", *args], cwd=root,
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})


def checkout(root: Path) -> Path:
    """A copy of the example as a fresh clone has it."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("deploy.yaml.example", "recipes", "examples"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    return root


def build_example(root: Path) -> None:
    """A fresh checkout of the example at `root`, built the way the README says (two jobs)."""
    first = modelbuild(checkout(root), "build", "-j", "2")
    assert first.returncode == 0, first.stdout + first.stderr


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This worker's copy of the example as one build (one per test session, tests/helpers/shared.py) left it."""
    built = built_once(tmp_path_factory, "example", build_example)
    return copy_of(built, tmp_path_factory.mktemp("example") / "checkout")


def test_example_builds_verified_artifacts_then_does_nothing(example: Path) -> None:
    lock = Lock.read(example / "deploy.lock").as_dict()
    targets = lock["targets"]
    config = yaml.safe_load((example / "deploy.yaml.example").read_text())
    # Every target is delivered and passes in full, with nothing left out and no lesser path taken; the one
    # exception is Core ML, whose runtime needs macOS: its numbers come from the MIL reference interpreter.
    want = {t: "passed" for t in config["targets"]} | {t: "passed; MIL reference, not Apple's runtime" for t in ("ios", "ios-pruned")}
    if libtorch.compiler() is None:  # digits-torchscript's LibTorch (C++) check needs one: said, never faked
        want["digits-torchscript"] = "passed; LibTorch (C++) check not run"
    assert lock["nodes"]["verify:digits-torchscript"]["metrics"]["serving"]["runtime"] == "libtorch"
    got = {t: status.target_status(lock["nodes"][f"verify:{t}"], delivered=t in targets).words for t in config["targets"]}
    assert got == want, {t: (got[t], lock["nodes"][f"verify:{t}"].get("metrics", {}).get("failures")) for t in got
                         if got[t] != want[t]}
    for target in targets:
        assert all((example / "artifacts" / target / f[0]).is_file() for f in targets[target]["files"])
    # ios-pruned is ios's fp16 package with half of each large weight pruned and stored sparse (27.2 vs 38.8 KB)
    sizes = {t: sum(p.stat().st_size for p in (example / "artifacts" / t / "model.mlpackage").rglob("*") if p.is_file())
             for t in ("ios", "ios-pruned")}
    assert sizes["ios-pruned"] < 0.75 * sizes["ios"], sizes
    pruned = lock["nodes"]["verify:ios-pruned"]["metrics"]
    assert pruned["structure"]["facts"]["compressed_weight_ops"] == {"constexpr_sparse_to_dense": 2}
    int8 = lock["nodes"]["verify:digits-int8"]["metrics"]["outputs"]["logits"]
    assert int8["accuracy"]["observed"] >= int8["reference_accuracy"] - 0.02
    second = modelbuild(example, "build")
    assert second.returncode == 0 and "Nothing to do" in second.stdout
    assert modelbuild(example, "plan", "--check").returncode == 0


def test_two_clean_builds_in_two_checkouts_commit_the_same_lock(example: Path, tmp_path: Path) -> None:
    """deploy.lock is committed: another checkout (another path, one job instead of two, so another
    order in the workers) must write the same bytes. Host, times and measured metrics live in the
    uncommitted build record."""
    other = checkout(tmp_path / "elsewhere" / "clone")
    proc = modelbuild(other, "build", "-j", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (other / "deploy.lock").read_bytes() == (example / "deploy.lock").read_bytes()
    committed = (other / "deploy.lock").read_text()
    assert '"built"' not in committed and '"metrics"' not in committed and str(other) not in committed
    record = Lock.read(other / "deploy.lock").nodes["verify:digits-int8"]
    assert record["built"]["host"] and record["metrics"]["passed"] is True  # observations kept, uncommitted


def test_every_target_of_the_example_has_a_model_card(example: Path) -> None:
    """The build writes MODEL_CARD.md and model_card.json beside every delivered artifact, and plan still
    finds every deliverable as its check verified it."""
    import json

    targets = Lock.read(example / "deploy.lock").targets
    assert targets
    for target in targets:
        card = json.loads((example / "artifacts" / target / "model_card.json").read_text())
        assert card["target"] == target and card["inputs"] and card["toolchain"], target
        assert (example / "artifacts" / target / "MODEL_CARD.md").read_text().startswith(f"# Model card: {target}")
    assert modelbuild(example, "plan", "--check").returncode == 0
