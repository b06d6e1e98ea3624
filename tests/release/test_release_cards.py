"""Model cards: written beside every delivered artifact by the build (and by `modelbuild card`) without
making plan see a modified deliverable; the bundle carries the same cards."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import TinyProject, make_tiny_project

TARGETS = ("ts", "server", "int8")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> TinyProject:
    tiny = make_tiny_project(tmp_path_factory.mktemp("cards") / "proj")
    tiny.config.write_text(tiny.config.read_text() + "bundles:\n  release:\n    targets: [ts, server, int8]\n")
    tiny.run("build")
    return tiny


def test_every_delivered_target_has_a_card_and_plan_stays_fresh(built: TinyProject) -> None:
    for target in TARGETS:
        folder = built.root / "artifacts" / target
        card = json.loads((folder / "model_card.json").read_text())
        assert card["target"] == target and card["verification"]["verdict"] == "passed"
        assert card["inputs"] == [{"dtype": "float32", "layout": None, "name": "x", "shape": ["batch", 4]}]
        assert card["outputs"] == [{"kind": "scores", "name": "y"}]
        assert card["verification"]["samples"] == 48 and card["verification"]["data"] == "validation: val.npz"
        assert "torch" in card["toolchain"] and card["intended_use"]["runtime"]
        text = (folder / "MODEL_CARD.md").read_text()
        assert text.startswith(f"# Model card: {target}") and "| input | x | [batch, 4] | float32 |" in text
    int8 = json.loads((built.root / "artifacts/int8/model_card.json").read_text())
    assert int8["artifact"]["precision"] == "int8" and int8["artifact"]["route"] == ["pytorch", "onnx", "onnx-int8"]
    assert int8["artifact"]["steps"][-1]["options"]["method"] == "dynamic"
    assert int8["acceptance"]["outputs"]["y"]["min_top1_agreement"] == 0.9
    agreement = int8["verification"]["outputs"]["y"]["top1_agreement"]
    assert agreement["allowed"] == ">= 0.9" and agreement["ok"] and agreement["observed"] >= 0.9
    assert "Everything is fresh" in built.run("plan").stdout  # the cards are not deliverables the plan compares


def test_card_command_rewrites_and_prints(built: TinyProject) -> None:
    card = built.root / "artifacts/server/MODEL_CARD.md"
    before = card.read_text()
    card.unlink()
    assert "Everything is fresh" in built.run("plan").stdout
    out = built.run("card", "server").stdout
    assert "artifacts/server/MODEL_CARD.md and model_card.json" in out and card.read_text() == before
    assert "(unchanged)" in built.run("card", "server").stdout
    printed = built.run("card", "server", "--stdout", "--json").stdout
    assert json.loads(printed)["target"] == "server"
    bad = built.run("card", "servr", check=False)
    assert bad.returncode == 2 and "unknown target 'servr' — did you mean 'server'?" in bad.stderr


def test_bundles_carry_the_same_cards(built: TinyProject) -> None:
    built.run("bundle", "release")
    with tarfile.open(built.root / "artifacts/bundles/release-0.1.0.tar.gz") as tar:
        for target in TARGETS:
            for name in ("MODEL_CARD.md", "model_card.json"):
                member = tar.extractfile(f"{target}/{name}")
                assert member is not None
                assert member.read() == (built.root / "artifacts" / target / name).read_bytes()


def test_a_failed_check_leaves_no_card(tmp_path: Path) -> None:
    tiny = make_tiny_project(tmp_path / "proj")
    tiny.run("build", "int8")
    assert (tiny.root / "artifacts/int8/MODEL_CARD.md").is_file()
    tiny.edit("onnx-int8: {method: dynamic}\n", "onnx-int8: {method: dynamic}\n    acceptance: {max_abs: 1.0e-9}\n")
    assert tiny.run("build", "int8", check=False).returncode == 1
    assert not (tiny.root / "artifacts/int8").exists()
