"""`modelbuild init`: a deploy.yaml for a factory, a checkpoint, a .pt2 program or an ONNX file, with the
signature inferred where the model or an example file tells it; the result plans and builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_tiny_project

CONVNET = '''\
import torch


def build():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2))
'''


def modelbuild(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"}, timeout=600)


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """A directory with only a model's code, weights and a labelled example file: no deploy.yaml."""
    tiny = make_tiny_project(tmp_path / "fresh")
    for name in ("deploy.yaml", "calib.npz"):
        (tiny.root / name).unlink()
    (tiny.root / "convnet.py").write_text(CONVNET)
    return tiny.root


def test_init_with_a_factory_builds(fresh: Path) -> None:
    done = modelbuild(fresh, "init", "--factory", "tinynet:build", "--weights", "tiny.pt", "--example", "val.npz",
                      "--preset", "server", "--preset", "torchscript")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote deploy.yaml: target(s) tinynet-server, tinynet-torchscript" in done.stdout
    config = yaml.safe_load((fresh / "deploy.yaml").read_text())
    model = config["models"]["tinynet"]
    assert model["inputs"] == [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]
    assert model["outputs"] == [{"name": "output", "kind": "scores"}]  # [batch, 3] and the example has labels
    assert model["data"] == {"example": "val.npz", "validation": "val.npz"}
    assert config["targets"]["tinynet-server"] == {"model": "tinynet", "platform": "server"}
    assert config["bundles"]["release"]["targets"] == ["tinynet-server", "tinynet-torchscript"]
    built = modelbuild(fresh, "build")
    assert built.returncode == 0, built.stdout + built.stderr
    assert "passed" in built.stdout
    assert (fresh / "artifacts/tinynet-server/MODEL_CARD.md").is_file()
    assert "Everything is fresh" in modelbuild(fresh, "plan").stdout


def test_init_infers_the_input_from_the_first_layer(fresh: Path) -> None:
    done = modelbuild(fresh, "init", "--factory", "tinynet:build", "--weights", "tiny.pt")
    assert done.returncode == 0, done.stderr
    assert "input shape from the first layer 0: Linear(4 → 8)" in done.stdout
    model = yaml.safe_load((fresh / "deploy.yaml").read_text())["models"]["tinynet"]
    assert model["inputs"][0]["shape"] == ["batch", 4] and model["outputs"] == [{"name": "output", "kind": "values"}]
    assert "4 of 4 node(s) need work" in modelbuild(fresh, "plan").stdout


def test_init_asks_for_what_it_cannot_infer(fresh: Path) -> None:
    """Off a terminal it asks nothing: it names the flag, and writes nothing."""
    refused = modelbuild(fresh, "init", "--factory", "convnet:build")
    assert refused.returncode == 2
    assert "cannot tell the model's input: the first layer 0 is a Conv2d with 3 channel(s)" in refused.stderr
    assert "--input x:batch,3,224,224:float32:NCHW" in refused.stderr and not (fresh / "deploy.yaml").exists()
    done = modelbuild(fresh, "init", "--factory", "convnet:build", "--input", "image:batch,3,16,16:float32:NCHW")
    assert done.returncode == 0, done.stderr
    model = yaml.safe_load((fresh / "deploy.yaml").read_text())["models"]["convnet"]
    assert model["inputs"] == [{"name": "image", "shape": ["batch", 3, 16, 16], "dtype": "float32", "layout": "NCHW"}]
    assert model["outputs"] == [{"name": "output", "kind": "values"}]


def test_init_reads_a_pt2_program_a_checkpoint_and_onnx(fresh: Path) -> None:
    import torch

    sys.path.insert(0, str(fresh))
    try:
        import convnet

        module = convnet.build().eval()
    finally:
        sys.path.remove(str(fresh))
    program = torch.export.export(module, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(fresh / "conv.pt2"))
    torch.save({"epoch": 3, "model_state_dict": module.state_dict()}, fresh / "ckpt.pt")
    torch.onnx.export(module, (torch.randn(1, 3, 16, 16),), str(fresh / "conv.onnx"), input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}}, dynamo=False)

    assert modelbuild(fresh, "-f", "pt2.yaml", "init", "--exported", "conv.pt2").returncode == 0
    pt2 = yaml.safe_load((fresh / "pt2.yaml").read_text())["models"]["conv"]
    assert pt2["inputs"][0]["shape"] == ["batch", 3, 16, 16] and pt2["source"] == {"exported": "conv.pt2"}

    done = modelbuild(fresh, "-f", "ckpt.yaml", "init", "--factory", "convnet:build", "--checkpoint", "ckpt.pt",
                      "--input", "image:batch,3,16,16")
    assert done.returncode == 0, done.stderr
    assert "the weights are the checkpoint's 'model_state_dict' entry: saved as ckpt.state_dict.pt" in done.stdout
    saved = torch.load(fresh / "ckpt.state_dict.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items())

    assert modelbuild(fresh, "-f", "onnx.yaml", "init", "--onnx", "conv.onnx").returncode == 0
    onnx = yaml.safe_load((fresh / "onnx.yaml").read_text())
    assert onnx["models"]["conv"]["inputs"] == [{"name": "image", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert onnx["models"]["conv"]["outputs"] == [{"name": "logits", "kind": "values"}]
    assert list(onnx["targets"]) == ["conv-onnx-optimized"]
    for name in ("pt2.yaml", "ckpt.yaml", "onnx.yaml"):
        planned = modelbuild(fresh, "-f", name, "plan")
        assert planned.returncode == 0 and "need work" in planned.stdout, planned.stderr


@pytest.mark.parametrize("args, message", [
    ([], "give the model as exactly one of --factory"),
    (["--factory", "tinynet"], "--factory 'tinynet' must look like 'package.module:function'"),
    (["--torchscript", "missing.pt"], "missing.pt does not exist"),
    (["--factory", "tinynet:build", "--weights", "tiny.pt", "--preset", "servr"], "unknown preset 'servr' — did you mean 'server'?"),
    (["--factory", "tinynet:build", "--weights", "tiny.pt", "--input", "x:batch,4:float99"], "dtype 'float99' is not one of"),
])
def test_init_names_bad_input_and_writes_nothing(fresh: Path, args: list[str], message: str) -> None:
    proc = modelbuild(fresh, "init", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (fresh / "deploy.yaml").exists() and not list(fresh.glob(".deploy.yaml*"))


def test_init_keeps_an_existing_deploy_file(fresh: Path) -> None:
    (fresh / "deploy.yaml").write_text("# mine\n")
    proc = modelbuild(fresh, "init", "--factory", "tinynet:build", "--weights", "tiny.pt")
    assert proc.returncode == 2 and "deploy.yaml already exists (pass --force" in proc.stderr
    assert (fresh / "deploy.yaml").read_text() == "# mine\n"
