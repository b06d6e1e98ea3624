"""Models given as files (TorchScript, torch.export .pt2, ONNX) and data given by a callable, end to end."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from buildsys.storage.lock import Lock
from tests.conftest import TinyProject, make_tiny_project


def _file_sources(root: Path) -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    torch.jit.save(torch.jit.trace(net, x), root / "net.ts")
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)), root / "net.pt2")
    torch.onnx.export(net, (x,), root / "net.onnx", dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    (root / "data_fn.py").write_text(textwrap.dedent("""\
        import numpy as np

        def validation():
            rng = np.random.default_rng(7)
            return {"x": rng.standard_normal((20, 4)).astype("float32"), "labels": rng.integers(0, 3, 20)}
        """))


SIGNATURE = """\
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y, kind: scores}]
    data: {validation: {callable: "data_fn:validation"}, calibration: calib.npz}
"""


@pytest.fixture
def files_project(tmp_path: Path) -> TinyProject:
    project = make_tiny_project(tmp_path / "proj")
    _file_sources(project.root)
    models = "models:\n" + "".join(
        f"  {name}:\n    source: {{{kind}: {path}}}\n{SIGNATURE}"
        for name, kind, path in [("ts", "torchscript", "net.ts"), ("ep", "exported", "net.pt2"), ("ox", "onnx", "net.onnx")])
    targets = textwrap.dedent("""\
        targets:
          ts-onnx: {model: ts, format: onnx}
          ep-onnx: {model: ep, format: onnx}
          ox-int8: {model: ox, format: onnx, precision: int8, options: {onnx-int8: {method: static}}}
        """)
    project.config.write_text(models + targets)
    return project


def test_file_sources_build_and_verify(files_project: TinyProject) -> None:
    plan = json.loads(files_project.run("plan", "--json").stdout)
    assert plan["routes"] == {"ts-onnx": ["torchscript-file", "onnx"], "ep-onnx": ["pt2-file", "onnx"],
                              "ox-int8": ["onnx-file", "onnx", "onnx-int8"]}
    files_project.run("build")
    lock = Lock.read(files_project.root / "deploy.lock").as_dict()
    for target in ("ts-onnx", "ep-onnx", "ox-int8"):
        metrics = lock["nodes"][f"verify:{target}"]["metrics"]
        assert metrics["passed"] is True and metrics["samples"] == 20  # the callable's 20 samples
    assert lock["nodes"]["ox/reference"]["metrics"]["origin"] == "validation: data_fn:validation()"
    # the source file is a key input: replacing it is named as the reason
    (files_project.root / "net.onnx").write_bytes((files_project.root / "net.onnx").read_bytes() + b"\0")
    reasons = {n["node"]: n["reasons"] for n in json.loads(files_project.run("plan", "--json").stdout)["nodes"]}
    assert reasons["ox/onnx"] == ["source file changed"]


def test_verify_reruns_checks_only(files_project: TinyProject) -> None:
    files_project.run("build", "ts-onnx")
    out = files_project.run("verify", "ts-onnx").stdout
    assert "built    verify:ts-onnx" in out and "ts/onnx " not in out


def test_graph_explain_clean(tiny: TinyProject) -> None:
    text = tiny.run("graph").stdout
    assert "tiny/onnx-int8  (onnx-int8-from-onnx)  ← tiny/onnx  [int8]" in text
    mermaid = tiny.run("graph", "--format", "mermaid").stdout
    assert mermaid.startswith("graph LR") and "-->" in mermaid
    assert 'digraph modelbuild' in tiny.run("graph", "--format", "dot").stdout
    tiny.run("build", "ts")
    explained = json.loads(tiny.run("explain", "tiny/torchscript").stdout)
    assert explained["state"] == "fresh" and explained["components"]["step"] == "torchscript-from-pytorch"
    assert "unknown node 'tiny/torchscrip' — did you mean 'tiny/torchscript'?" in tiny.run("explain", "tiny/torchscrip", check=False).stderr
    tiny.run("clean")
    assert not (tiny.root / "artifacts/ts").exists()
    states = {n["node"]: n["action"] for n in json.loads(tiny.run("plan", "--json", "ts").stdout)["nodes"]}
    assert states["verify:ts"] == "restore" and states["tiny/torchscript"] == "none"  # back from the cache


WEIGHTS_FACTORY = '''\
import importlib.util
import os

import torch


def build():
    """Weights read from a file an installed package ships, as the zoo's factories do."""
    pkg = importlib.util.find_spec("tinyweights").submodule_search_locations[0]
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    net.load_state_dict(torch.load(os.path.join(pkg, "tiny.pt"), weights_only=True))
    return net
'''


def _install_tinyweights(site: Path, version: str, weights: Path) -> None:
    """A distribution as pip leaves it: the package (with its weights file) and its dist-info."""
    import shutil

    for old in site.glob("tinyweights-*.dist-info"):
        shutil.rmtree(old)
    (site / "tinyweights").mkdir(parents=True, exist_ok=True)
    (site / "tinyweights" / "__init__.py").write_text("")
    shutil.copy(weights, site / "tinyweights" / "tiny.pt")
    info = site / f"tinyweights-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tinyweights\nVersion: {version}\n")
    (info / "top_level.txt").write_text("tinyweights\n")


def test_the_version_of_a_package_the_factory_reads_weights_from_enters_the_key(
        tiny: TinyProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    _install_tinyweights(site, "1.0", tiny.root / "tiny.pt")
    monkeypatch.setenv("PYTHONPATH", str(site))
    (tiny.root / "weightsnet.py").write_text(WEIGHTS_FACTORY)
    tiny.edit("factory: tinynet:build\n      weights: tiny.pt\n      kwargs: {calls: " + str(tiny.calls) + "}",
              "factory: weightsnet:build")
    tiny.run("build", "ts")
    components = json.loads(tiny.run("explain", "tiny/torchscript").stdout)["components"]
    assert components["toolchain"]["tinyweights"] == "1.0" and "torch" in components["toolchain"]
    assert "Nothing to do" in tiny.run("build", "ts").stdout

    _install_tinyweights(site, "1.1", tiny.root / "tiny.pt")  # an upgrade of the package, weights and all
    reasons = {n["node"]: n["reasons"] for n in json.loads(tiny.run("plan", "--json", "ts").stdout)["nodes"]}
    assert reasons["tiny/torchscript"] == ["toolchain tinyweights 1.0→1.1"]
    assert reasons["tiny/reference"] == ["toolchain tinyweights 1.0→1.1"]
    assert "built    tiny/torchscript" in tiny.run("build", "ts").stdout
