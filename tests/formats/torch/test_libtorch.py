"""The LibTorch check of TorchScript targets: a C++ loader compiled once per toolchain runs the artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsys.config.schema import Acceptance
from buildsys.errors import StepError
from buildsys.formats import get_format, get_runtime
from buildsys.formats.torch import libtorch
from buildsys.nodes.verify import resolve_acceptance
from tests.helpers.models import Tiny

pytestmark = pytest.mark.skipif(libtorch.compiler() is None, reason="no C++ compiler")


@pytest.fixture(scope="module")
def traced(mlp: Tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny MLP's TorchScript artifact and its reference."""
    out = tmp_path_factory.mktemp("libtorch")
    mlp.run("reference", out / "ref", extra={"source_format": "pytorch"})
    mlp.run("torchscript-from-pytorch", out / "ts")
    return out / "ts" / get_format("torchscript").filename, out / "ref" / "reference.npz"


def check(tiny: Tiny, out: Path, artifact: Path, reference: Path, **acceptance: object) -> dict:
    options = resolve_acceptance(Acceptance(serving=True, **acceptance), "fp32", tiny.model.outputs)
    return tiny.run("check", out, input_path=artifact, extra={"format": "torchscript", "reference": str(reference)},
                    **options)


def test_the_loader_is_compiled_once_and_cached(tmp_path: Path) -> None:
    first, _ = libtorch.loader()  # the session's first call pays the compile (about 13 s of CPU, g++ 12)
    again, seconds = libtorch.loader()
    assert again == first and first.is_file() and seconds == 0.0
    assert first.parent.parent == libtorch.cache_root()


def test_libtorch_check_passes_on_the_artifact(mlp: Tiny, traced: tuple[Path, Path], tmp_path: Path) -> None:
    result = check(mlp, tmp_path, *traced)
    assert result["passed"] is True and "caveats" not in result
    serving = result["serving"]
    assert serving["runtime"] == "libtorch" and serving["passed"] is True
    assert serving["outputs"]["y"]["max_abs"]["observed"] <= 1e-6  # the same kernels as the Python check


def test_libtorch_check_fails_on_other_numbers(mlp: Tiny, traced: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    net = mlp.net()
    with torch.no_grad():
        net.body[0].weight[0, 0] += 0.05
    torch.jit.save(torch.jit.trace(net, (torch.zeros(2, 4),)), str(tmp_path / "model.pt"))
    result = check(mlp, tmp_path / "check", tmp_path / "model.pt", traced[1])
    assert result["passed"] is False and result["serving"]["passed"] is False
    assert any(line.startswith("served by libtorch: y: max_rel") for line in result["failures"])


def test_a_corrupted_torchscript_file_fails_in_libtorch(mlp: Tiny, traced: tuple[Path, Path], tmp_path: Path) -> None:
    from buildsys.config.data import Batch

    broken = tmp_path / "model.pt"
    data = bytearray(traced[0].read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64  # inside the zip archive's members
    broken.write_bytes(bytes(data))
    import numpy as np

    batch = Batch({"x": np.zeros((2, 4), np.float32)}, None, "zeros")
    with pytest.raises(StepError, match=r"LibTorch \(C\+\+\) could not run 'model.pt': torch::jit::load failed"):
        with get_runtime("libtorch").load(broken, mlp.model, tmp_path) as session:
            session.run_all(batch)


def test_without_a_compiler_the_libtorch_check_is_not_run(mlp: Tiny, traced: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    reason = get_runtime("libtorch").unavailable()
    assert reason is not None and reason.startswith("no C++ compiler")
    result = check(mlp, tmp_path, *traced)
    assert result["passed"] is True and result["serving"] == {"runtime": "libtorch", "passed": None, "not_run": reason}
    assert result["caveats"] == [{"kind": "not run", "what": "LibTorch (C++) check not run", "why": reason,
                                  "source": "libtorch"}]
    strict = check(mlp, tmp_path / "strict", *traced, require_numeric=True)
    assert strict["passed"] is False and strict.get("host_limited") is True


def test_the_check_key_says_whether_a_compiler_is_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 'not run' made on a host without a C++ compiler must not be reused where one is (nor the other way)."""
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project
    from tests.conftest import make_tiny_project, tiny_deploy

    project = make_tiny_project(tmp_path, tiny_deploy("  ts:\n    model: tiny\n    format: torchscript\n"
                                                      "    acceptance: {serving: true}\n"))

    def device() -> object:
        planner = open_project(str(project.root / "deploy.yaml")).planner
        node = make_plan(planner, PlanRequest()).dag.nodes["verify:ts"]
        return planner.components(node, {d: "0" * 64 for d in node.deps}).get("device")

    assert device() == {"c++ compiler": "present"}
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert device() == {"c++ compiler": "none"}
