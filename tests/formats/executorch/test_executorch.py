"""ExecuTorch steps and runtime on tiny real models: .pt2 → XNNPACK-lowered .pte (fp32, PT2E int8), run in
ExecuTorch's own runtime, byte-reproducible, plan-time errors, and an end-to-end `modelbuild build`."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from buildsys.config.schema import Acceptance, Model
from buildsys.config.data import Batch
from buildsys.errors import StepError
from buildsys.formats import get_format, get_runtime, get_step
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import make_tiny_project, tiny_deploy
from tests.helpers.models import Tiny, make_model, torch_outputs, validation_feeds

# Every test here lowers through ExecuTorch (~10 s a program on 2 cores).
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                                   reason="needs the executorch extra")]


def check(tiny: Tiny, out: Path, fmt: str, artifact: Path, reference: Path, precision: str = "fp32",
          **acceptance: object) -> dict:
    options = resolve_acceptance(Acceptance(**acceptance), precision, tiny.model.outputs)
    return tiny.run("check", out, input_path=artifact, precision=precision,
                    extra={"format": fmt, "reference": str(reference)}, **options)


@pytest.fixture(scope="module")
def cnn_pt2(cnn: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn-pt2")
    cnn.run("pt2-from-pytorch", out)
    return out / "model.pt2"


@pytest.fixture(scope="module")
def cnn_pte(cnn: Tiny, cnn_pt2: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cnn-pte")
    metrics = cnn.run("executorch-from-pt2", out, input_path=cnn_pt2)
    return out / "model.pte", metrics


@pytest.fixture(scope="module")
def cnn_pte_int8(cnn: Tiny, cnn_pt2: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cnn-pte-int8")
    metrics = cnn.run("executorch-int8-from-pt2", out, input_path=cnn_pt2)
    return out / "model.pte", metrics


# --- formats and steps ----------------------------------------------------------------------------


def test_family_members_and_routes() -> None:
    fp32, int8 = get_format("executorch"), get_format("executorch-int8")
    assert (fp32.family, fp32.precision, int8.family, int8.precision) == ("executorch", "fp32", "executorch", "int8")
    assert fp32.filename == int8.filename == "model.pte" and fp32.runtime == int8.runtime == "executorch"
    assert get_step("executorch-int8-from-pt2").consumes == ("pt2", "pt2-file")


def test_fp32_is_delegated_to_xnnpack_and_passes_fp32_check(cnn: Tiny, cnn_pte: tuple[Path, dict],
                                                            cnn_reference: Path, tmp_path: Path) -> None:
    path, metrics = cnn_pte
    assert path.read_bytes()[4:8] == b"ET12"  # the ExecuTorch flatbuffer identifier
    assert metrics["batch"] == 1 and metrics["xnnpack_delegates"] == 1 and metrics["portable_operators"] == []
    result = check(cnn, tmp_path, "executorch", path, cnn_reference)
    assert result["passed"] is True, result
    assert result["outputs"]["logits"]["max_rel"]["observed"] < 1e-5
    assert result["structure"]["facts"]["delegates"] == ["XnnpackBackend"]
    assert result["structure"]["facts"]["input_shapes"] == [[1, 1, 8, 8]] and result["structure"]["problems"] == []
    # timed at one thread too: XNNPACK's process-wide pool resized for it, and put back when the session closes
    assert result["latency"]["one_thread"]["min_ms"] > 0, result["latency"]
    from executorch.extension.pybindings import portable_lib

    before = portable_lib._threadpool_get_thread_count()
    with get_runtime("executorch").load(path, cnn.model, tmp_path) as session:
        assert session.use_threads(1) == 1 == portable_lib._threadpool_get_thread_count()
    assert portable_lib._threadpool_get_thread_count() == before


def test_int8_is_smaller_calibrated_and_passes_int8_check(cnn: Tiny, cnn_pte: tuple[Path, dict],
                                                          cnn_pte_int8: tuple[Path, dict], cnn_reference: Path,
                                                          tmp_path: Path) -> None:
    path, metrics = cnn_pte_int8
    assert metrics["calibration_samples"] == 32 and metrics["per_channel"] is True
    assert path.stat().st_size < 0.7 * cnn_pte[0].stat().st_size  # int8 weights: the Linear's 11 KB → ~3 KB
    result = check(cnn, tmp_path, "executorch-int8", path, cnn_reference, precision="int8")
    assert result["passed"] is True, result
    observed = result["outputs"]["logits"]["max_abs"]["observed"]
    assert 1e-4 < observed  # really quantized: not the float program under another name
    # ...and judged as float32 it misses, naming the metric: the int8 defaults are what let it pass.
    strict = check(cnn, tmp_path / "strict", "executorch-int8", path, cnn_reference)
    assert strict["passed"] is False and any("max_rel" in f for f in strict["failures"]), strict


def _int8_checked(kind: str, root: Path, **options: object) -> tuple[dict, dict]:
    """Model `kind` exported, lowered to executorch-int8 with `options`, and checked against PyTorch at int8's
    tolerance: the step's metrics and the check's result."""
    tiny = make_model(root / "p", kind)
    tiny.run("pt2-from-pytorch", root / "pt2")
    metrics = tiny.run("executorch-int8-from-pt2", root / "pte", input_path=root / "pt2/model.pt2", **options)
    tiny.run("reference", root / "ref", extra={"source_format": "pytorch"})
    result = check(tiny, root / "check", "executorch-int8", root / "pte/model.pte", root / "ref/reference.npz",
                   precision="int8")
    return metrics, result


@pytest.mark.parametrize("scheme", ["static", "dynamic"])
def test_integer_index_arithmetic_stays_integer_under_int8(tmp_path: Path, scheme: str) -> None:
    """XNNPACKQuantizer's own rewrite makes `arange + 0` float and the lookup fails (BERT's position ids)."""
    metrics, result = _int8_checked("tokens", tmp_path, scheme=scheme)
    assert metrics["scheme"] == scheme and 0 < metrics["int8_weights"] < 0.1  # the Linear; the tables stay float
    assert result["passed"] is True, result


@pytest.mark.parametrize("scheme", ["static", "dynamic"])
def test_a_head_initialised_small_keeps_its_logits_under_int8(tmp_path: Path, scheme: str) -> None:
    """XNNPACKQuantizer floors every scale at 2^-12, and logits of ~1e-4 came out of the .pte as zeros (cosine 0:
    timm's EVA-02 in the model matrix); at float32's epsilon they keep their int8 resolution."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    from buildsys.formats.torch.pt2e import finer_scales

    upstream = get_symmetric_quantization_config(is_per_channel=True)
    assert upstream.weight.observer_or_fake_quant_ctr.p.keywords["eps"] == 2**-12  # what this answers
    assert finer_scales(upstream).weight.observer_or_fake_quant_ctr.p.keywords["eps"] == torch.finfo(torch.float32).eps
    metrics, result = _int8_checked("small-head", tmp_path, scheme=scheme)
    y = result["outputs"]["y"]
    assert metrics["int8_weights"] > 0.8, metrics
    assert result["passed"] is True and y["cosine"]["observed"] > 0.95, result


def test_a_requantization_xnnpack_refuses_is_quantized_again_at_its_own_floor(tmp_path: Path) -> None:
    """A layer whose output cancels to ~1e-6 gets an output scale at float32's epsilon that XNNPACK will not
    requantize to (it refuses to load the method): the step quantizes again at XNNPACK's 2^-12, says so in the
    node's facts, and the program loads and runs."""
    from buildsys.formats.executorch.contract import loads

    metrics, result = _int8_checked("xnnpack-refusal", tmp_path)
    assert metrics["scale_floor"].startswith("2^-12") and loads((tmp_path / "pte/model.pte").read_bytes())
    assert result["outputs"]["y"]["cosine"]["observed"] > 0.9, result  # it ran: its int8 costs 13 % of range


def test_layers_xnnpack_leaves_outside_its_delegate_are_kept_float(tmp_path: Path) -> None:
    """Their int8 weights would need quantized kernels the runtime lacks ("Missing out variants"): the step
    quantizes again with those layers in float, says which, and the .pte runs and passes."""
    metrics, result = _int8_checked("cross-attention", tmp_path)
    assert len(metrics["kept_float_undelegated"]) == 3  # the attention's three projections
    assert 0 < metrics["int8_weights"] < 0.7  # the memory, output and head layers are still int8
    assert result["passed"] is True, result


def test_a_dynamic_convolution_over_unfolded_patches_runs(tmp_path: Path) -> None:
    """A dynamically quantized conv that reads a permute + reshape (MobileViT's patches) inside one XNNPACK
    delegate fails every call ("Propagating input shapes failed: xnn_status_invalid_parameter", MobileViTv2 and
    YOLO26 in the model matrix); delegated one by one first, as ExecuTorch's own exports do, it runs and passes."""
    import torch

    from buildsys.formats.executorch.lowering import quantized_per_call

    metrics, result = _int8_checked("unfolded-patches", tmp_path, scheme="dynamic")
    assert metrics["quantized_weights"]["share"] == 1.0 and metrics["xnnpack_delegates"] >= 3  # a conv per delegate
    assert result["passed"] is True and result["outputs"]["y"]["cosine"]["observed"] > 0.99, result
    program = torch.export.load(tmp_path / "pte" / "debug" / "program.pt2")
    assert quantized_per_call(program), "the dynamic scheme's choose_qparams is what selects the partitioning"


def test_the_dynamic_scheme_quantizes_a_conv_a_relu_reads(tmp_path: Path) -> None:
    """XNNPACKQuantizer leaves Conv + ReLU to a fused pattern its dynamic scheme lacks, so the conv stayed float
    (every ResNet block); annotated as a dynamic conv, it is int8 and the .pte passes."""
    metrics, result = _int8_checked("residual", tmp_path, scheme="dynamic")
    assert metrics["quantized_weights"]["by_kind"]["conv"]["share"] == 1.0, metrics["quantized_weights"]
    assert metrics["quantized_weights"]["share"] == 1.0 and result["passed"] is True, result


def test_integer_values_are_never_quantized(tmp_path: Path) -> None:
    """int64 position buckets (T5, WavLM) are not observed: static int8 calibrates, lowers and passes."""
    metrics, result = _int8_checked("buckets", tmp_path)
    assert metrics["scheme"] == "static" and metrics["int8_weights"] > 0
    assert result["passed"] is True, result


def test_both_int8_schemes_quantize_recurrent_cells(tmp_path: Path) -> None:
    """The cell, decomposed into linears before PT2E, is int8 under either scheme (static kept its 5,120 weights
    float before: 96 of 5,478 weights, the head, were int8)."""
    cell = make_model(tmp_path / "p", "cell")
    cell.run("pt2-from-pytorch", tmp_path / "pt2")
    pt2 = tmp_path / "pt2/model.pt2"
    static = cell.run("executorch-int8-from-pt2", tmp_path / "static", input_path=pt2)
    dynamic = cell.run("executorch-int8-from-pt2", tmp_path / "dynamic", input_path=pt2, scheme="dynamic")
    assert static["int8_weights"] > 0.9 and dynamic["int8_weights"] > 0.9
    assert static["quantized_weights"]["share"] == dynamic["quantized_weights"]["share"] == 1.0
    cell.run("reference", tmp_path / "ref", extra={"source_format": "pytorch"})
    result = check(cell, tmp_path / "check", "executorch-int8", tmp_path / "dynamic/model.pte",
                   tmp_path / "ref/reference.npz", precision="int8")
    assert result["passed"] is True, result
    assert result["outputs"]["h_next"]["max_abs"]["observed"] > 1e-4  # really quantized


def test_an_lstm_is_lowered_as_a_loop_in_fp32_and_unrolled_into_int8_linears(tmp_path: Path) -> None:
    """torch.export keeps nn.LSTM as one aten.lstm node; unrolled, a 3-layer LSTM over 160 frames took
    over 11 minutes to lower. As a scan loop the program's size does not grow with the frames. int8 unrolls it
    (6 frames x 2 layers, within the bound), since no quantizer reads the weights of aten.lstm: they ship int8."""
    lstm = make_model(tmp_path / "p", "lstm-short")
    lstm.run("pt2-from-pytorch", tmp_path / "pt2")
    pt2 = tmp_path / "pt2/model.pt2"
    fp32 = lstm.run("executorch-from-pt2", tmp_path / "fp32", input_path=pt2)
    int8 = lstm.run("executorch-int8-from-pt2", tmp_path / "int8", input_path=pt2)
    assert fp32["recurrent_as_scan"] == int8["recurrent_unrolled"] == 1 and "recurrent_as_scan" not in int8
    assert int8["quantized_weights"]["share"] == 1.0
    assert fp32["xnnpack_delegates"] >= 2  # the loop body is delegated too, not only the head
    lstm.run("reference", tmp_path / "ref", extra={"source_format": "pytorch"})
    for fmt, out, precision in (("executorch", "fp32", "fp32"), ("executorch-int8", "int8", "int8")):
        result = check(lstm, tmp_path / f"check-{out}", fmt, tmp_path / out / "model.pte",
                       tmp_path / "ref/reference.npz", precision=precision)
        assert result["passed"] is True, result
    feeds = validation_feeds(lstm)
    session = get_runtime("executorch").load(tmp_path / "fp32/model.pte", lstm.model, lstm.root)
    np.testing.assert_allclose(session.run_all(Batch(feeds, None, "test"))[0], torch_outputs(lstm, feeds)[0],
                               rtol=1e-5, atol=1e-6)


def test_a_scheme_that_quantizes_nothing_is_not_int8(tmp_path: Path) -> None:
    eig = make_model(tmp_path / "p", "unsupported", name="eig")  # no linear, no convolution: nothing to quantize
    eig.run("pt2-from-pytorch", tmp_path / "pt2")
    with pytest.raises(StepError, match=r"PT2E int8 quantization \(dynamic\) quantized none of the model's"):
        eig.run("executorch-int8-from-pt2", tmp_path / "pte", input_path=tmp_path / "pt2/model.pt2", scheme="dynamic")


def test_perturbed_pte_fails_its_check(cnn: Tiny, cnn_pte: tuple[Path, dict], cnn_reference: Path,
                                       tmp_path: Path) -> None:
    import torch

    data = bytearray(cnn_pte[0].read_bytes())
    weight = torch.load(cnn.root / "cnn.pt", weights_only=True)["fc.weight"].numpy().astype("<f4")
    at = bytes(data).find(weight.tobytes())
    assert at > 0 and bytes(data).count(weight.tobytes()) == 1  # the Linear's weights sit in the file as they are
    data[at:at + weight.nbytes] = (weight * 1.01).tobytes()  # 1 % off: far beyond fp32's 1e-4
    bad = tmp_path / "bad.pte"
    bad.write_bytes(bytes(data))
    result = check(cnn, tmp_path / "check", "executorch", bad, cnn_reference)
    assert result["passed"] is False and any("max_rel" in f for f in result["failures"]), result


def test_builds_are_byte_identical(cnn: Tiny, cnn_pt2: Path, cnn_pte: tuple[Path, dict],
                                   cnn_pte_int8: tuple[Path, dict], tmp_path: Path) -> None:
    # Same worker process, after other lowerings: no counters, ids or paths reach the bytes.
    cnn.run("executorch-from-pt2", tmp_path / "a", input_path=cnn_pt2)
    cnn.run("executorch-int8-from-pt2", tmp_path / "b", input_path=cnn_pt2)
    assert (tmp_path / "a/model.pte").read_bytes() == cnn_pte[0].read_bytes()
    assert (tmp_path / "b/model.pte").read_bytes() == cnn_pte_int8[0].read_bytes()
    # and the program saved in each node's diagnostics for localisation (formats/executorch/intermediates.py)
    assert (tmp_path / "a/debug/program.pt2").read_bytes() == (cnn_pte[0].parent / "debug/program.pt2").read_bytes()
    assert (tmp_path / "b/debug/program.pt2").read_bytes() == (cnn_pte_int8[0].parent / "debug/program.pt2").read_bytes()
    assert str(cnn.root).encode() not in (tmp_path / "a/debug/program.pt2").read_bytes()
    assert str(cnn.root).encode() not in cnn_pte[0].read_bytes()


def test_fixed_batch_runs_any_number_of_samples(mlp: Tiny, tmp_path: Path) -> None:
    mlp.run("pt2-from-pytorch", tmp_path / "pt2")
    metrics = mlp.run("executorch-from-pt2", tmp_path / "pte", input_path=tmp_path / "pt2/model.pt2", batch=4)
    assert metrics["batch"] == 4
    session = get_runtime("executorch").load(tmp_path / "pte/model.pte", mlp.model, mlp.root)
    assert session.max_batch == 4
    feeds = {k: v[:11] for k, v in validation_feeds(mlp).items()}  # 4 + 4 + 3: the last call is padded
    out = session.run_all(Batch(feeds, None, "test"))[0]
    assert out.shape == (11, 3)
    np.testing.assert_allclose(out, torch_outputs(mlp, feeds)[0], rtol=1e-5, atol=1e-6)


def test_dict_outputs_come_back_in_signature_order(two: Tiny, tmp_path: Path) -> None:
    two.run("pt2-from-pytorch", tmp_path / "pt2")
    two.run("executorch-from-pt2", tmp_path / "pte", input_path=tmp_path / "pt2/model.pt2")
    feeds = validation_feeds(two)
    scores, box = get_runtime("executorch").load(tmp_path / "pte/model.pte", two.model, two.root).run_all(
        Batch(feeds, None, "test"))
    expected = torch_outputs(two, feeds)
    assert scores.shape == (48, 3) and box.shape == (48, 2)
    np.testing.assert_allclose(scores, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(box, expected[1], rtol=1e-5, atol=1e-6)


def test_operator_outside_core_aten_is_named(tmp_path: Path) -> None:
    tiny = make_model(tmp_path / "p", "unsupported", name="eig")
    tiny.run("pt2-from-pytorch", tmp_path / "pt2")  # torch.export takes linalg.eigh; ExecuTorch's edge dialect does not
    with pytest.raises(StepError, match=r"^model 'eig': lowering to ExecuTorch failed: SpecViolationError: Operator "
                                        r"torch\._ops\.aten\._linalg_eigh\.default is not in Core ATen opset .*"
                                        r"\(step executorch-from-pt2\)$"):
        tiny.run("executorch-from-pt2", tmp_path / "pte", input_path=tmp_path / "pt2/model.pt2")


def test_a_constant_with_a_zero_stride_is_lowered(tmp_path: Path) -> None:
    tiny = make_model(tmp_path / "p", "column", name="column")
    tiny.run("pt2-from-pytorch", tmp_path / "pt2")
    tiny.run("executorch-from-pt2", tmp_path / "pte", input_path=tmp_path / "pt2/model.pt2")
    feeds = validation_feeds(tiny)
    [got] = get_runtime("executorch").load(tmp_path / "pte/model.pte", tiny.model, tiny.root).run_all(
        Batch(feeds, None, "test"))
    np.testing.assert_allclose(got, torch_outputs(tiny, feeds)[0], rtol=1e-5, atol=1e-6)


def test_a_file_that_is_not_a_program_is_a_clear_error(cnn: Tiny, tmp_path: Path) -> None:
    (tmp_path / "model.pte").write_bytes(b"not a program")
    with pytest.raises(StepError, match=r"ExecuTorch could not load 'model.pte'"):
        get_runtime("executorch").load(tmp_path / "model.pte", cnn.model, cnn.root)


# --- plan-time errors and availability ------------------------------------------------------------


def test_int8_without_calibration_data_is_a_plan_time_error(cnn: Tiny) -> None:
    step = get_step("executorch-int8-from-pt2")
    bare = cnn.with_model(data={"validation": "val.npz"})
    assert step.check_config(bare.model, step.Options(), bare.root) == (
        "ExecuTorch int8 needs calibration data: add data.calibration to the model (an .npz of representative "
        "inputs), or build the fp32 'executorch' format instead")
    assert step.check_config(cnn.model, step.Options(), cnn.root) is None
    assert step.data_used(step.Options()) == ("calibration",)


def test_batch_that_contradicts_a_fixed_signature_is_a_plan_time_error(cnn: Tiny) -> None:
    fixed = cnn.with_model(inputs=[{"name": "image", "shape": [2, 1, 8, 8]}])
    step = get_step("executorch-from-pt2")
    assert step.check_config(fixed.model, step.Options(batch=4), fixed.root) == (
        "batch 4 contradicts the signature, whose first axis is fixed to 2; remove batch or make the first "
        "axis a name like 'batch'")
    assert step.check_config(fixed.model, step.Options(batch=2), fixed.root) is None
    assert step.check_config(cnn.model, step.Options(batch=4), cnn.root) is None


def test_runtime_says_why_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    assert get_runtime("executorch").unavailable() == (
        "executorch is not installed (pip install -c constraints.txt 'modelbuild[executorch]')")


# --- end to end -----------------------------------------------------------------------------------

DEPLOY = tiny_deploy("""\
  phone:
    model: tiny
    format: executorch
  phone-int8:
    model: tiny
    format: executorch
    precision: int8
    acceptance:
      max_accuracy_drop: 0.05   # 48 samples: one flipped decision is 2 points
""", calls=False)


def test_modelbuild_build_makes_verified_pte_targets(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", textwrap.dedent(DEPLOY))
    plan = project.run("plan").stdout
    assert "tiny/pt2" in plan and "tiny/executorch-int8" in plan
    out = project.run("build").stdout
    assert "passed" in out, out
    for target in ("phone", "phone-int8"):
        assert (project.root / "artifacts" / target / "model.pte").is_file()
    lock = json.loads((project.root / "deploy.lock").read_text())
    assert {t: lock["nodes"][f"verify:{t}"]["verdict"] for t in ("phone", "phone-int8")} == \
        {"phone": "passed", "phone-int8": "passed"}
    # The lowered program localisation needs is kept with the node, never delivered or counted as the artifact.
    node = lock["targets"]["phone-int8"]["node"]
    assert "debug/program.pt2" in {f[0] for f in lock["nodes"][node]["files"]}
    delivered = {f[0] for f in lock["targets"]["phone-int8"]["files"]}
    assert "model.pte" in delivered and not any(f.startswith("debug/") for f in delivered)
    assert not (project.root / "artifacts/phone-int8/debug").exists()
    assert "need work" not in project.run("plan").stdout  # a second plan finds everything fresh


def test_a_given_pt2_file_is_lowered_directly(tmp_path: Path) -> None:
    import torch

    project = make_tiny_project(tmp_path / "proj", textwrap.dedent(DEPLOY))
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, project.root / "net.pt2")
    project.edit("source:\n      factory: tinynet:build\n      weights: tiny.pt", "source: {exported: net.pt2}")
    plan = json.loads(project.run("plan", "--json").stdout)
    assert plan["routes"] == {"phone": ["pt2-file", "executorch"], "phone-int8": ["pt2-file", "executorch-int8"]}
    project.run("build", "phone")
    session = get_runtime("executorch").load(project.root / "artifacts/phone/model.pte", _signature(), project.root)
    feeds = {"x": np.random.default_rng(1).standard_normal((5, 4)).astype("float32")}
    with torch.no_grad():
        expected = net(torch.from_numpy(feeds["x"])).numpy()
    np.testing.assert_allclose(session.run_all(Batch(feeds, None, "test"))[0], expected, rtol=1e-5, atol=1e-6)


def _signature() -> Model:
    return Model.model_validate({"source": {"exported": "net.pt2"}, "inputs": [{"name": "x", "shape": ["batch", 4]}],
                                 "outputs": [{"name": "y", "kind": "scores"}]})


def test_plan_refuses_int8_without_calibration(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", textwrap.dedent(DEPLOY).replace("      calibration: calib.npz\n", ""))
    proc = project.run("plan", check=False)
    assert proc.returncode == 2
    assert "targets.phone-int8 (executorch-int8): ExecuTorch int8 needs calibration data" in proc.stderr


# --- a recurrent model ----------------------------------------------------------------------------

GRUNET = '''\
"""A small GRU classifier: window [batch, 90, 9] (batch first) -> logits [batch, 4]."""
import torch
from torch import nn


class GruNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(9, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, window):
        out, _ = self.gru(window)
        return self.head(out[:, -1])


def build():
    return GruNet()
'''


def test_gru_reaches_executorch_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GRU is lowered as one scan loop over its 90 steps (unrolled, it took minutes and a partition per step),
    without autograd: scan's backward graph, which every ExecuTorch pass re-derived when the weights required grad
    (Sequencer2D's 36 loops: two fifths of its lowering), is never built."""
    import torch
    from torch._higher_order_ops.scan import HopGraphMinCutPartitioner

    backward_graphs = []
    partition = HopGraphMinCutPartitioner.create_partitioned_graph
    monkeypatch.setattr(HopGraphMinCutPartitioner, "create_partitioned_graph",
                        staticmethod(lambda *a, **k: backward_graphs.append(1) or partition(*a, **k)))

    root = tmp_path / "gru"
    root.mkdir()
    (root / "grunet_exec.py").write_text(GRUNET)
    torch.manual_seed(0)
    net = torch.nn.GRU(9, 16, batch_first=True), torch.nn.Linear(16, 4)
    torch.save({**{f"gru.{k}": v for k, v in net[0].state_dict().items()},
                **{f"head.{k}": v for k, v in net[1].state_dict().items()}}, root / "gru.pt")
    rng = np.random.default_rng(0)
    np.savez(root / "val.npz", window=rng.standard_normal((12, 90, 9)).astype("float32"))
    model = Model.model_validate({
        "source": {"factory": "grunet_exec:build", "weights": "gru.pt"},
        "inputs": [{"name": "window", "shape": ["batch", 90, 9]}], "outputs": [{"name": "logits", "kind": "scores"}],
        "data": {"validation": "val.npz"}})
    tiny = Tiny(root, "gru", model, "gru")
    tiny.run("pt2-from-pytorch", tmp_path / "pt2")
    metrics = tiny.run("executorch-from-pt2", tmp_path / "pte", input_path=tmp_path / "pt2/model.pt2")
    assert metrics["recurrent_as_scan"] == 1 and metrics["xnnpack_delegates"] > 1
    assert metrics["bytes"] < 100_000  # unrolled: 367 KB for ~1.4 k parameters
    assert not backward_graphs
    tiny.run("reference", tmp_path / "ref", extra={"source_format": "pytorch"})
    result = check(tiny, tmp_path / "check", "executorch", tmp_path / "pte/model.pte", tmp_path / "ref/reference.npz")
    assert result["passed"] is True, result


def test_static_int8_that_misses_falls_back_to_dynamic(tmp_path: Path) -> None:
    """Calibration data a thousand times larger than what the model sees makes static ranges useless;
    the dynamic scheme, which measures each call's inputs, is the route that passes."""
    project = make_tiny_project(tmp_path / "proj", textwrap.dedent(DEPLOY))
    calib = np.load(project.root / "calib.npz")
    np.savez(project.root / "calib.npz", x=calib["x"] * 1000)
    out = project.run("build", "phone-int8").stdout
    assert "phone-int8: made by pytorch → pt2 → executorch-int8 (dynamic)" in out, out
    assert "phone-int8: route pytorch → pt2 → executorch-int8 dropped at verify:phone-int8" in out, out
    lock = json.loads((project.root / "deploy.lock").read_text())
    assert lock["targets"]["phone-int8"]["route"] == ["pytorch", "pt2", "executorch-int8 (dynamic)"]
    # Accuracy repair comes first (docs/repair.md): keep-float's search judges on the calibration set, where
    # the full int8 already agrees (the ranges come from it), keeps nothing in float, and misses the same
    # check on the validation data; then the dynamic alternative.
    static, repaired = lock["routes"]["phone-int8"]["dropped"]
    assert static["route"] == ["pytorch", "pt2", "executorch-int8"] and static["node"] == "verify:phone-int8"
    assert static["repair"] is True
    assert repaired["route"] == ["pytorch", "pt2", "executorch-int8 (repair keep-float)"]
    assert "Nothing to do" in project.run("build", "phone-int8").stdout  # the dropped route is not retried


@pytest.mark.parametrize("layer", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("layers,bidirectional,batch_first,bias", [(1, False, True, True), (2, True, False, True),
                                                                   (2, True, True, False)])
def test_every_recurrent_layer_as_a_scan_loop_computes_the_layer(layer: str, layers: int, bidirectional: bool,
                                                                 batch_first: bool, bias: bool) -> None:
    """recurrent_to_scan on the exported program against the layer itself: outputs and final states, with and
    without given initial states."""
    import torch

    from buildsys.formats.executorch.recurrent import recurrent_to_scan

    torch.manual_seed(0)
    make = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(layer, torch.nn.RNN)
    extra = {} if layer in ("lstm", "gru") else {"nonlinearity": layer.removeprefix("rnn_")}
    net = make(5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
               **extra).eval()
    x = torch.randn((3, 11, 5) if batch_first else (11, 3, 5))
    states = layers * (2 if bidirectional else 1)
    h0 = torch.randn(states, 3, 7)
    initial = (h0, torch.randn(states, 3, 7)) if layer == "lstm" else h0
    for args in ((x,), (x, initial)):
        module = torch.export.export(net, args).module()
        assert recurrent_to_scan(module) == 1
        assert not any(n.target == getattr(torch.ops.aten, layer).input for n in module.graph.nodes)
        with torch.no_grad():  # as the step runs it; under autograd, scan partitions a backward it cannot size
            got, want = module(*args), net(*args)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
