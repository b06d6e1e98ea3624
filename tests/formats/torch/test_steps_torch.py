"""PyTorch-side steps run in-process on tiny real models: loading, TorchScript, torch.export, reference, check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from buildsys.config.schema import Acceptance
from buildsys.errors import StepError
from buildsys.formats import formats, get_format, steps
from buildsys.formats.torch.loading import load_module
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import REPO
from tests.helpers.models import FACTORIES, Tiny, make_model, torch_outputs, validation_feeds


@pytest.fixture(scope="module")
def cnn_tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return make_model(tmp_path_factory.mktemp("cnn"), "cnn")


@pytest.fixture(scope="module")
def mlp_reference(mlp: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    mlp.run("reference", out, extra={"source_format": "pytorch"})
    return out / "reference.npz"


def check(tiny: Tiny, out: Path, fmt: str, artifact: Path, reference: Path, precision: str = "fp32",
          **acceptance: object) -> dict:
    options = resolve_acceptance(Acceptance(**acceptance), precision, tiny.model.outputs)
    return tiny.run("check", out, input_path=artifact, precision=precision,
                    extra={"format": fmt, "reference": str(reference)}, **options)


# --- the registry contract ------------------------------------------------------------------------


MINE = ("torchscript-from-pytorch", "pt2-from-pytorch", "onnx-from-pytorch", "onnx-from-torchscript",
        "onnx-from-pt2", "onnx-from-onnx-file", "onnx-optimized-from-onnx", "onnx-fp16-from-onnx",
        "onnx-int8-from-onnx", "reference", "check")
MODULES = ("formats.torch.source", "formats.torch.loading", "formats.torch.torchscript", "formats.torch.export",
           "formats.onnx.export", "formats.onnx.optimized", "formats.onnx.fp16", "formats.onnx.int8",
           "nodes.reference", "nodes.check")


def test_every_step_follows_the_contract() -> None:
    assert set(MINE) <= set(steps())
    for name in MINE:
        step = steps()[name]
        assert name == name.lower() and " " not in name and "_" not in name, name
        assert step.__doc__ and step.__doc__.strip(), name
        assert step.produces in formats(), name
        for consumed in step.consumes:
            assert consumed in formats(), (name, consumed)
        for field_name, info in step.Options.model_fields.items():
            assert info.description, f"{name}.{field_name} has no description"
        assert step.toolchain in ("torch", "onnx"), name


def test_loading_every_step_module_imports_no_toolchain() -> None:
    imports = "; ".join([f"import buildsys.{m}" for m in MODULES] + [
        "import buildsys.formats.torch.runtimes", "import buildsys.formats.onnx.runtime"])
    code = (f"import sys; {imports}; import buildsys.nodes.verify; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- load_module ----------------------------------------------------------------------------------


def test_load_module_loads_the_weights(mlp: Tiny) -> None:
    import torch

    net = load_module(mlp.model, mlp.root)
    state = torch.load(mlp.root / "mlp.pt", weights_only=True)
    assert not net.training
    assert torch.equal(net.state_dict()["body.0.weight"], state["body.0.weight"])


def test_factory_import_error_names_the_model(mlp: Tiny) -> None:
    bad = mlp.with_source(factory="tinymodelz:mlp")
    with pytest.raises(StepError, match=r"^model 'mlp': factory 'tinymodelz:mlp' could not be imported: "
                                        r"ModuleNotFoundError: No module named 'tinymodelz' \(step onnx-from-pytorch\)$"):
        load_module(bad.model, bad.root, name="mlp", step="onnx-from-pytorch")


def test_factory_that_raises_fails_the_step_with_its_message(mlp: Tiny, tmp_path: Path) -> None:
    bad = mlp.with_source(factory="tinymodels:broken", weights=None)
    with pytest.raises(StepError, match=r"model 'mlp': factory 'tinymodels:broken' raised RuntimeError: "
                                        r"the factory refused to build \(step torchscript-from-pytorch\)"):
        bad.run("torchscript-from-pytorch", tmp_path)


def test_factory_must_return_a_module(mlp: Tiny) -> None:
    bad = mlp.with_source(factory="tinymodels:not_a_module", weights=None)
    with pytest.raises(StepError, match="returned int, not a torch.nn.Module"):
        load_module(bad.model, bad.root, name="mlp")


def test_missing_weights_and_mismatched_state_dict(mlp: Tiny, tmp_path: Path) -> None:
    with pytest.raises(StepError, match=r"model 'mlp': weights file 'nope.pt' does not exist"):
        load_module(mlp.with_source(weights="nope.pt").model, mlp.root, name="mlp")
    wrong = mlp.with_source(kwargs={"hidden": 8})
    with pytest.raises(StepError, match=r"weights 'mlp.pt' do not fit the factory's module: size mismatch"):
        load_module(wrong.model, wrong.root, name="mlp")


def test_same_module_name_in_two_projects_loads_each_ones_code(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a", "mlp")
    b = make_model(tmp_path / "b", "mlp")
    (b.root / "tinymodels.py").write_text(FACTORIES.replace("def mlp(hidden=32):\n    return MLP(hidden)",
                                                            "def mlp(hidden=32):\n    raise RuntimeError('from b')"))
    load_module(a.model, a.root)
    with pytest.raises(StepError, match="raised RuntimeError: from b"):
        load_module(b.model, b.root)
    assert type(load_module(a.model, a.root)).__name__ == "MLP"


# --- torchscript / pt2 ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["trace", "script"])
def test_torchscript_matches_pytorch(mlp: Tiny, mlp_reference: Path, tmp_path: Path, method: str) -> None:
    metrics = mlp.run("torchscript-from-pytorch", tmp_path / "ts", method=method)
    artifact = tmp_path / "ts" / get_format("torchscript").filename
    assert artifact.is_file() and metrics["method"] == method
    result = check(mlp, tmp_path / "check", "torchscript", artifact, mlp_reference)
    assert result["passed"] is True
    assert result["outputs"]["y"]["max_abs"]["observed"] <= 1e-6  # the same kernels; no bit-exactness assumed
    assert json.loads((tmp_path / "check" / "report.json").read_text())["passed"] is True


def test_trace_reorders_dict_outputs_to_the_signature(two: Tiny, tmp_path: Path) -> None:
    import torch

    two.run("torchscript-from-pytorch", tmp_path)
    traced = torch.jit.load(str(tmp_path / "model.pt"))
    x = torch.from_numpy(validation_feeds(two)["x"][:3])
    scores, box = traced(x)
    expected = two.net()(x)
    assert torch.allclose(scores, expected["scores"]) and torch.allclose(box, expected["box"])


def test_pt2_is_dynamic_in_batch(cnn_tiny: Tiny, tmp_path: Path) -> None:
    from buildsys.formats import get_runtime

    metrics = cnn_tiny.run("pt2-from-pytorch", tmp_path)
    assert metrics["dynamic"] is True and (tmp_path / "model.pt2").is_file()
    session = get_runtime("torch-export").load(tmp_path / "model.pt2", cnn_tiny.model, cnn_tiny.root)
    feeds = validation_feeds(cnn_tiny)
    for n in (1, 5):
        (out,) = session.run({"image": feeds["image"][:n]})
        np.testing.assert_allclose(out, torch_outputs(cnn_tiny, {"image": feeds["image"][:n]})[0], rtol=1e-5, atol=1e-6)


def test_pt2_with_fixed_shapes_runs_one_sample_at_a_time(cnn_tiny: Tiny, tmp_path: Path) -> None:
    from buildsys.config.data import eval_batch
    from buildsys.formats import get_runtime

    assert cnn_tiny.run("pt2-from-pytorch", tmp_path, dynamic=False)["dynamic"] is False
    session = get_runtime("torch-export").load(tmp_path / "model.pt2", cnn_tiny.model, cnn_tiny.root)
    assert session.max_batch == 1
    assert session.run_all(eval_batch(cnn_tiny.model, cnn_tiny.root))[0].shape == (48, 10)


# --- reference and check --------------------------------------------------------------------------


def test_reference_stores_inputs_outputs_labels_and_accuracy(mlp: Tiny, mlp_reference: Path) -> None:
    with np.load(mlp_reference) as ref:
        assert sorted(ref.files) == ["input:x", "intrinsic", "labels", "output:y"]  # intrinsic: nodes/intrinsic.py
        assert ref["input:x"].shape == (48, 4) and ref["output:y"].shape == (48, 3)
        np.testing.assert_allclose(ref["output:y"], torch_outputs(mlp, {"x": ref["input:x"]})[0], rtol=1e-6)
        accuracy = float(np.mean(ref["output:y"].argmax(1) == ref["labels"]))
    metrics = mlp.run("reference", mlp_reference.parent / "again", extra={"source_format": "pytorch"})
    assert metrics["samples"] == 48 and metrics["origin"] == "validation: val.npz"
    assert metrics["accuracy:y"] == pytest.approx(accuracy) and accuracy < 1.0


def test_reference_without_data_uses_seeded_synthetic_inputs(tmp_path: Path) -> None:
    tiny = make_model(tmp_path / "p", "mlp", validation=False, calibration=False)
    first = tiny.run("reference", tmp_path / "r1", extra={"source_format": "pytorch"})
    tiny.run("reference", tmp_path / "r2", extra={"source_format": "pytorch"})
    assert first["origin"].startswith("synthetic") and first["samples"] == 16
    with np.load(tmp_path / "r1/reference.npz") as a, np.load(tmp_path / "r2/reference.npz") as b:
        assert "labels" not in a.files
        np.testing.assert_array_equal(a["output:y"], b["output:y"])


def test_reference_of_a_broken_factory_names_model_and_step(mlp: Tiny, tmp_path: Path) -> None:
    bad = mlp.with_source(factory="tinymodels:broken", weights=None)
    with pytest.raises(StepError, match=r"^model 'mlp': factory 'tinymodels:broken' raised RuntimeError: .* \(step reference\)$"):
        bad.run("reference", tmp_path, extra={"source_format": "pytorch"})


def test_two_output_reference_keeps_signature_order(two: Tiny, tmp_path: Path) -> None:
    metrics = two.run("reference", tmp_path, extra={"source_format": "pytorch"})
    with np.load(tmp_path / "reference.npz") as ref:
        assert ref["output:scores"].shape == (48, 3) and ref["output:box"].shape == (48, 2)
    assert "accuracy:scores" in metrics and "accuracy:box" not in metrics


def test_check_fails_with_observed_next_to_allowed(mlp: Tiny, mlp_reference: Path, tmp_path: Path) -> None:
    import torch

    # A "wrong" artifact: the same network with one weight nudged.
    net = mlp.net()
    with torch.no_grad():
        net.body[0].weight[0, 0] += 0.05
    traced = torch.jit.trace(net, (torch.zeros(2, 4),))
    torch.jit.save(traced, str(tmp_path / "model.pt"))
    result = check(mlp, tmp_path / "check", "torchscript", tmp_path / "model.pt", mlp_reference)
    assert result["passed"] is False
    max_rel = result["outputs"]["y"]["max_rel"]
    assert max_rel["ok"] is False and max_rel["allowed"] == 1e-4 and max_rel["op"] == "<="
    assert any(line.startswith("y: max_rel ") and " > 1.0e-04" in line for line in result["failures"])
    # on_fail and looser limits are the target's call: the same artifact passes a loose acceptance.
    loose = check(mlp, tmp_path / "loose", "torchscript", tmp_path / "model.pt", mlp_reference,
                  max_rel=0.5, min_cosine=0.9)
    assert loose["passed"] is True


def test_check_not_run_when_the_runtime_is_missing(mlp: Tiny, mlp_reference: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.formats.torch.runtimes import TorchScriptRuntime

    monkeypatch.setattr(TorchScriptRuntime, "unavailable", lambda self: "torch is not installed")
    result = check(mlp, tmp_path, "torchscript", tmp_path / "missing.pt", mlp_reference)
    assert result["passed"] is None and result["not_run"] == "torch is not installed"
    assert json.loads((tmp_path / "report.json").read_text())["not_run"] == "torch is not installed"


def test_factory_from_an_installed_package_leaves_it_imported(mlp: Tiny) -> None:
    import torch

    net = load_module(mlp.with_source(factory="torch.nn:Identity", weights=None).model, mlp.root)
    assert isinstance(net, torch.nn.Identity) and sys.modules["torch"] is torch


def test_torchscript_bytes_do_not_depend_on_what_the_worker_compiled_before(tmp_path: Path) -> None:
    """A warm worker has traced other models first; TorchScript would number clashing type names
    (`___torch_mangle_<n>`) by that history, so two builds in another order wrote other bytes. After
    fresh_torchscript_types the archive equals the one a fresh process writes."""
    import hashlib
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent('''
        import sys, torch
        from buildsys.formats.reproducible import fresh_torchscript_types, torchscript_without_debug_info
        def make(seed):
            torch.manual_seed(seed)
            return torch.nn.Sequential(torch.nn.Conv1d(3, 4, 3), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                                       torch.nn.Flatten(), torch.nn.Linear(24, 2)).eval()
        for seed in range(int(sys.argv[2])):  # what the worker compiled before
            torch.jit.trace(make(seed + 10), torch.zeros(2, 3, 8))
        fresh_torchscript_types()
        torch.jit.save(torch.jit.trace(make(0), torch.zeros(2, 3, 8)), sys.argv[1])
        torchscript_without_debug_info(__import__("pathlib").Path(sys.argv[1]))
    ''')
    digests = []
    for before in (0, 3):
        path = tmp_path / f"after{before}" / "model.pt"
        path.parent.mkdir()
        subprocess.run([sys.executable, "-c", code, str(path), str(before)], check=True, cwd=REPO)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
