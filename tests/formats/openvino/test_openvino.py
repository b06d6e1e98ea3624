"""OpenVINO steps run in-process on tiny real models: IR conversion (fp32, fp16), NNCF int8 (plain and
accuracy-aware), checks in the real OpenVINO CPU runtime, byte-reproducibility, plan-time errors, and an
end-to-end `modelbuild build` + `bench` through the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.config.schema import Acceptance
from buildsys.errors import StepError
from buildsys.formats import get_format, get_runtime, get_step
from buildsys.formats.openvino.ir import telemetry_off
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import make_tiny_project, tiny_deploy
from tests.helpers.models import Tiny, make_model, torch_outputs, validation_feeds

with telemetry_off():  # the first `import openvino` of a process sends a usage event unless declined
    ov = pytest.importorskip("openvino", reason="needs the openvino extra")

INT8 = "openvino-int8-from-openvino"


def check(tiny: Tiny, out: Path, fmt: str, artifact: Path, reference: Path, precision: str = "fp32",
          **acceptance: Any) -> dict:
    options = resolve_acceptance(Acceptance(**acceptance), precision, tiny.model.outputs)
    return tiny.run("check", out, input_path=artifact, precision=precision,
                    extra={"format": fmt, "reference": str(reference)}, **options)


def run_ir(tiny: Tiny, xml: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from buildsys.config.data import Batch

    with get_runtime("openvino").load(xml, tiny.model, tiny.root) as session:
        return session.run_all(Batch(feeds, None, "test"))


@pytest.fixture(scope="module")
def cnn_ir(cnn: Tiny, cnn_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn-ov")
    cnn.run("openvino-from-onnx", out, input_path=cnn_onnx)
    return out / "model.xml"


# --- formats and conversion -----------------------------------------------------------------------


def test_formats_are_one_family_with_precision_fields() -> None:
    fmts = [get_format(n) for n in ("openvino", "openvino-fp16", "openvino-int8")]
    assert [(f.family, f.precision, f.filename, f.runtime) for f in fmts] == [
        ("openvino", "fp32", "model.xml", "openvino"), ("openvino", "fp16", "model.xml", "openvino"),
        ("openvino", "int8", "model.xml", "openvino")]


def test_fp32_ir_matches_torch_and_passes_its_check(cnn: Tiny, cnn_ir: Path, cnn_reference: Path,
                                                   tmp_path: Path) -> None:
    assert sorted(p.name for p in cnn_ir.parent.iterdir()) == ["model.bin", "model.xml"]
    text = cnn_ir.read_text()
    assert "conversion_parameters" not in text and 'element_type="f16"' not in text  # no path, no compression
    feeds = validation_feeds(cnn)
    np.testing.assert_allclose(run_ir(cnn, cnn_ir, feeds)[0], torch_outputs(cnn, feeds)[0], rtol=1e-4, atol=1e-5)
    result = check(cnn, tmp_path / "check", "openvino", cnn_ir, cnn_reference)
    assert result["passed"] is True, result
    assert result["runtime"] == "openvino" and result["structure"]["problems"] == []
    # timed at batch 1 with the plugin's threads, then compiled again at one thread (OpenVinoSession.use_threads)
    assert result["latency"]["runs"] >= 1 and result["latency"]["one_thread"]["min_ms"] > 0
    from buildsys.config.data import Batch

    with get_runtime("openvino").load(cnn_ir, cnn.model, cnn.root) as session:
        assert session.use_threads(1) == 1
        np.testing.assert_allclose(session.run_all(Batch(feeds, None, "test"))[0], torch_outputs(cnn, feeds)[0],
                                   rtol=1e-4, atol=1e-5)
    assert result["structure"]["facts"]["inputs"] == ["image"]


def test_fp16_ir_has_half_weights_and_passes_fp16_defaults(cnn: Tiny, cnn_onnx: Path, cnn_ir: Path,
                                                           cnn_reference: Path, tmp_path: Path) -> None:
    metrics = cnn.run("openvino-fp16-from-onnx", tmp_path / "fp16", input_path=cnn_onnx)
    half = tmp_path / "fp16/model.xml"
    assert 'element_type="f16"' in half.read_text()
    assert metrics["weights_bytes"] < (cnn_ir.parent / "model.bin").stat().st_size * 0.6
    result = check(cnn, tmp_path / "check", "openvino-fp16", half, cnn_reference, "fp16")
    assert result["passed"] is True, result
    assert result["structure"]["facts"]["constants"].get("f16", 0) > 0


def test_int8_is_quantized_smaller_and_close(cnn: Tiny, cnn_ir: Path, cnn_reference: Path, tmp_path: Path) -> None:
    metrics = cnn.run(INT8, tmp_path / "q", input_path=cnn_ir)
    artifact = tmp_path / "q/model.xml"
    assert sorted(p.name for p in artifact.parent.iterdir()) == ["model.bin", "model.xml"]
    assert metrics["fake_quantize"] >= 2 and metrics["calibration_samples"] == 32
    assert metrics["weights_bytes"] < (cnn_ir.parent / "model.bin").stat().st_size * 0.6
    result = check(cnn, tmp_path / "check", "openvino-int8", artifact, cnn_reference, "int8")
    assert result["structure"]["problems"] == [] and result["structure"]["facts"]["fake_quantize"] >= 2
    logits = result["outputs"]["logits"]
    # Plain PTQ of this random-weight CNN keeps the outputs close (cosine, top-1 agreement) but loses a
    # few of its 48 borderline labels: the accuracy-aware mode below is what holds the drop.
    assert logits["cosine"]["ok"] and logits["top1_agreement"]["ok"], logits


def test_int8_weight_only_stores_int8_weights_and_runs_float_activations(cnn: Tiny, cnn_ir: Path,
                                                                         cnn_reference: Path, tmp_path: Path) -> None:
    """The last repair recipe: NNCF's int8 weight compression, no FakeQuantize, every weight layer in int8 (the
    artifact's own share, measured on the IR), closer to float32 than full int8 is."""
    cnn.run(INT8, tmp_path / "static", input_path=cnn_ir)
    metrics = cnn.run(INT8, tmp_path / "q", input_path=cnn_ir, scheme="weight-only")
    assert metrics["scheme"].startswith("weight-only: int8 weights") and metrics["fake_quantize"] == 0
    share = metrics["quantized_weights"]
    assert share["share"] == 1.0 and share["wider"] == {} and set(share["by_dtype"]) == {"uint8"}, share
    assert metrics["weights_bytes"] < (cnn_ir.parent / "model.bin").stat().st_size * 0.4
    result = check(cnn, tmp_path / "check", "openvino-int8", tmp_path / "q/model.xml", cnn_reference, "int8")
    assert result["passed"] is True and result["structure"]["problems"] == [], result
    full = check(cnn, tmp_path / "check-static", "openvino-int8", tmp_path / "static/model.xml", cnn_reference, "int8")
    assert result["outputs"]["logits"]["cosine"]["observed"] > full["outputs"]["logits"]["cosine"]["observed"]
    assert get_step(INT8).Options().model_dump() == get_step(INT8).Options(scheme="static").model_dump()
    assert "scheme" not in get_step(INT8).Options().model_dump()  # keys of nodes without it are unchanged


def test_int8_accuracy_control_keeps_the_drop_within_budget(cnn: Tiny, cnn_ir: Path, cnn_reference: Path,
                                                            tmp_path: Path) -> None:
    plain = cnn.run(INT8, tmp_path / "plain", input_path=cnn_ir)
    metrics = cnn.run(INT8, tmp_path / "q", input_path=cnn_ir, max_accuracy_drop=0.05)
    accuracy = metrics["validation_accuracy"]
    assert accuracy["fp32"] - accuracy["int8"] <= 0.05, accuracy
    assert 1 <= metrics["fake_quantize"] < plain["fake_quantize"]  # some layers went back to float
    result = check(cnn, tmp_path / "check", "openvino-int8", tmp_path / "q/model.xml", cnn_reference, "int8",
                   max_accuracy_drop=0.05)
    assert result["passed"] is True, result


def test_int8_accuracy_control_that_cannot_hold_fails_clearly(cnn: Tiny, cnn_ir: Path, tmp_path: Path) -> None:
    with pytest.raises(StepError, match=r"model 'cnn': NNCF (quantized no layer|could not hold the accuracy drop)"):
        cnn.run(INT8, tmp_path / "q", input_path=cnn_ir, max_accuracy_drop=0.0, calibration_samples=16)


def test_outputs_come_back_in_signature_order(tmp_path: Path) -> None:
    tiny = make_model(tmp_path / "p", "two")  # returns {"box", "scores"}: the reverse of the signature
    tiny.run("onnx-from-pytorch", tmp_path / "onnx")
    tiny.run("openvino-from-onnx", tmp_path / "ov", input_path=tmp_path / "onnx/model.onnx")
    feeds = validation_feeds(tiny)
    scores, box = run_ir(tiny, tmp_path / "ov/model.xml", feeds)
    expected = torch_outputs(tiny, feeds)
    assert scores.shape == (48, 3) and box.shape == (48, 2)
    np.testing.assert_allclose(scores, expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(box, expected[1], rtol=1e-4, atol=1e-5)


def test_every_variant_is_byte_reproducible(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):  # two scratch directories, as two builds would have
        cnn.run("openvino-from-onnx", tmp_path / run / "fp32", input_path=cnn_onnx)
        cnn.run("openvino-fp16-from-onnx", tmp_path / run / "fp16", input_path=cnn_onnx)
        cnn.run(INT8, tmp_path / run / "int8", input_path=tmp_path / run / "fp32/model.xml")
    for variant in ("fp32", "fp16", "int8"):
        for name in ("model.xml", "model.bin"):
            a, b = (tmp_path / run / variant / name for run in ("a", "b"))
            assert a.read_bytes() == b.read_bytes(), f"{variant}/{name} differs between two builds"
        assert str(tmp_path) not in (tmp_path / "a" / variant / "model.xml").read_text()


# --- perturbed artifacts and runtime errors -------------------------------------------------------


def perturbed(xml: Path, out: Path, factor: float) -> Path:
    """The same IR with every output multiplied by `factor`: a wrong artifact with the right signature."""
    import openvino as ov
    from openvino import opset13 as ops

    model = ov.Core().read_model(str(xml))
    for result in model.get_results():
        source = result.input_value(0)
        scaled = ops.multiply(source, ops.constant(np.float32(factor)))
        result.input(0).replace_source_output(scaled.output(0))
        scaled.output(0).get_tensor().set_names(source.get_names())
        source.get_tensor().set_names(set())
    model.validate_nodes_and_infer_types()
    out.mkdir(parents=True)
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    return out / "model.xml"


def test_perturbed_ir_fails_its_check_naming_the_metric(cnn: Tiny, cnn_ir: Path, cnn_reference: Path,
                                                        tmp_path: Path) -> None:
    bad = perturbed(cnn_ir, tmp_path / "bad", 1.01)  # 1% off: far beyond fp32's 1e-4
    result = check(cnn, tmp_path / "check", "openvino", bad, cnn_reference)
    assert result["passed"] is False, result
    assert result["outputs"]["logits"]["max_rel"]["ok"] is False
    assert any(f.startswith("logits: max_rel") for f in result["failures"]), result["failures"]
    assert result["structure"]["problems"] == []  # the signature is right; only the numbers are wrong


def test_inspection_catches_a_precision_that_is_not_there(cnn: Tiny, cnn_ir: Path) -> None:
    runtime = get_runtime("openvino")
    assert runtime.inspect(cnn_ir, cnn.model, "openvino")["problems"] == []  # type: ignore[index]
    problems = runtime.inspect(cnn_ir, cnn.model, "openvino-int8")["problems"]  # type: ignore[index]
    assert problems == ["an int8 IR with neither FakeQuantize layers nor int8 weights: nothing was quantized"]
    renamed = cnn.with_model(inputs=[{"name": "pixels", "shape": ["batch", 1, 8, 8]}])
    assert "the IR's inputs [image] are none of the signature's [pixels]" in \
        runtime.inspect(cnn_ir, renamed.model, "openvino")["problems"]  # type: ignore[index]


def test_missing_weights_and_unavailable_runtime_say_why(cnn: Tiny, cnn_ir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.xml").write_bytes(cnn_ir.read_bytes())
    with pytest.raises(StepError, match=r"the OpenVINO IR 'model.xml' has no weights file model.bin next to it"):
        get_runtime("openvino").load(tmp_path / "model.xml", cnn.model, cnn.root)
    runtime = get_runtime("openvino")
    assert runtime.unavailable() is None
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    # the check reports it as `not_run` and the summary prints "not run: <this>", as for other runtimes
    assert runtime.unavailable() == "openvino is not installed (pip install -c constraints.txt 'modelbuild[openvino]')"


# --- plan-time errors -----------------------------------------------------------------------------


def test_int8_needs_calibration_data(tmp_path: Path) -> None:
    step = get_step(INT8)
    tiny = make_model(tmp_path / "p", "mlp", calibration=False)
    assert step.check_config(tiny.model, step.Options(), tiny.root) == (
        "NNCF post-training quantization needs calibration data: add data.calibration to the model "
        "(an .npz of representative inputs)")
    assert step.data_used(step.Options()) == ("calibration",)
    assert step.data_used(step.Options(max_accuracy_drop=0.01)) == ("calibration", "validation")
    tiny.run("onnx-from-pytorch", tmp_path / "onnx")
    tiny.run("openvino-from-onnx", tmp_path / "ov", input_path=tmp_path / "onnx/model.onnx")
    with pytest.raises(StepError, match=r"^model 'mlp': NNCF post-training quantization needs calibration data.*"
                                        r"\(step openvino-int8-from-openvino\)$"):
        tiny.run(INT8, tmp_path / "q", input_path=tmp_path / "ov/model.xml")


def test_max_accuracy_drop_needs_a_labelled_validation_set(tmp_path: Path) -> None:
    step = get_step(INT8)
    drop = step.Options(max_accuracy_drop=0.01)
    ok = make_model(tmp_path / "ok", "mlp")
    assert step.check_config(ok.model, drop, ok.root) is None
    no_val = make_model(tmp_path / "noval", "mlp", validation=False)
    assert step.check_config(no_val.model, step.Options(), no_val.root) is None  # plain mode needs none
    assert step.check_config(no_val.model, drop, no_val.root) == (
        "max_accuracy_drop needs a labelled validation set: add data.validation to the model "
        "(an .npz with the inputs and a 'labels' array of class indices)")
    np.savez(ok.root / "unlabelled.npz", x=np.zeros((4, 4), np.float32))
    unlabelled = ok.with_model(data={"calibration": "calib.npz", "validation": "unlabelled.npz"})
    assert step.check_config(unlabelled.model, drop, ok.root) == (
        "max_accuracy_drop needs labels, but unlabelled.npz has no array named 'labels' (has: x): add one, "
        "or name it with data.validation.labels")
    np.save(ok.root / "inputs.npy", np.zeros((4, 4), np.float32))
    npy = ok.with_model(data={"calibration": "calib.npz", "validation": "inputs.npy"})
    assert "inputs.npy is an .npy (inputs only)" in step.check_config(npy.model, drop, ok.root)  # type: ignore[operator]
    values = ok.with_model(outputs=[{"name": "y", "kind": "values"}])
    assert step.check_config(values.model, drop, ok.root) == (
        "max_accuracy_drop measures top-1 accuracy of the first output, but 'y' is kind 'values': declare it "
        "kind: scores, or leave max_accuracy_drop out")


def test_options_are_strict() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="less than or equal to 1"):
        get_step(INT8).Options(max_accuracy_drop=2)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        get_step(INT8).Options(subset_size=10)


# --- end to end through the CLI -------------------------------------------------------------------

DEPLOY = tiny_deploy("""\
  ov:
    model: tiny
    format: openvino
  ov-int8:
    model: tiny
    format: openvino
    precision: int8
    options:
      openvino-int8: {max_accuracy_drop: 0.05}
    acceptance:
      max_accuracy_drop: 0.05
      min_cosine: 0.5   # 3 logits of an 8-unit MLP: one sample's cosine swings with any rounding
      min_quantized_share: 0.5  # NNCF's accuracy control reverts one of its layers to float: 57 % of the weights
""", calls=False)


def test_plan_names_the_missing_data_with_its_line(tmp_path: Path) -> None:
    no_calibration = DEPLOY.replace("      calibration: calib.npz\n", "")
    project = make_tiny_project(tmp_path / "a", textwrap.dedent(no_calibration))
    proc = project.run("plan", check=False)
    assert proc.returncode == 2
    assert ("deploy.yaml:21: targets.ov-int8 (openvino-int8): NNCF post-training quantization needs calibration "
            "data: add data.calibration") in proc.stderr, proc.stderr
    unlabelled = DEPLOY.replace("      validation: val.npz\n", "      validation: calib.npz\n")
    project = make_tiny_project(tmp_path / "b", textwrap.dedent(unlabelled))
    proc = project.run("plan", check=False)
    assert proc.returncode == 2
    assert ("targets.ov-int8 (openvino-int8): max_accuracy_drop needs labels, but calib.npz has no array named "
            "'labels' (has: x)") in proc.stderr, proc.stderr


@pytest.mark.slow
def test_build_and_bench_openvino_targets_through_the_cli(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", textwrap.dedent(DEPLOY))
    plan = json.loads(project.run("plan", "--json").stdout)
    nodes = {n["node"] for n in plan["nodes"]}
    # the format graph routes pytorch → onnx → openvino, and int8 quantizes the fp32 IR node (shared)
    assert {"tiny/onnx", "tiny/openvino", "tiny/openvino-int8", "verify:ov", "verify:ov-int8"} <= nodes
    out = project.run("build").stdout
    assert "passed" in out
    for target in ("ov", "ov-int8"):
        assert sorted(p.name for p in (project.root / "artifacts" / target).iterdir()) == [
            "MODEL_CARD.md", "model.bin", "model.xml", "model_card.json"]  # the IR, and its model card beside it
    from buildsys.storage.lock import Lock

    lock = Lock.read(project.root / "deploy.lock").as_dict()["nodes"]
    assert lock["verify:ov"]["metrics"]["passed"] is True and lock["verify:ov"]["metrics"]["runtime"] == "openvino"
    assert lock["verify:ov-int8"]["metrics"]["passed"] is True
    assert lock["tiny/openvino-int8"]["metrics"]["fake_quantize"] > 0
    assert "Nothing to do" in project.run("build").stdout
    bench = project.run("bench", "ov").stdout
    assert "built    bench:ov" in bench
    metrics = Lock.read(project.root / "deploy.lock").as_dict()["nodes"]["bench:ov"]["metrics"]
    assert metrics["artifact"]["runtime"] == "openvino" and metrics["artifact"]["p50_ms"] > 0


def test_an_input_that_also_carries_a_folded_cast_name_is_the_signature_input(cnn: Tiny, tmp_path: Path) -> None:
    """An ONNX input whose first op is a Cast (a rewritten model's DFT matmul casts its input) becomes an IR
    Parameter whose port carries both names, the Cast's output first: it is still the signature's input."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["/Cast_output_0"], to=TensorProto.FLOAT),
         helper.make_node("Relu", ["/Cast_output_0"], ["logits"])], "cast_first",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    with telemetry_off():
        converted = ov.convert_model(str(tmp_path / "m.onnx"))
    ov.save_model(converted, str(tmp_path / "model.xml"), compress_to_fp16=False)
    names = converted.inputs[0].get_names()
    assert "image" in names and len(names) > 1, names  # the case this test is about: more than one name
    runtime = get_runtime("openvino")
    assert runtime.inspect(tmp_path / "model.xml", cnn.model, "openvino")["problems"] == []  # type: ignore[index]


def test_a_conversion_failure_names_the_onnx_ops_without_a_rule() -> None:
    """OpenVINO's report starts with a C++ source location; the ops it has no rule for are further down."""
    from buildsys.formats.openvino.convert import _unconverted

    report = RuntimeError("Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:"
                          "\nFrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted.\nSummary:\n"
                          "-- No conversion rule found for operations: SequenceMap-18, util::SequenceAt\n")
    assert _unconverted(report) == "RuntimeError: no conversion rule for the ONNX operations SequenceMap-18, " \
                                   "util::SequenceAt"
    detailed = RuntimeError("Check 'false' failed at x.cpp:151:\nModel wasn't fully converted. Failed operations "
                            "detailed log:\n-- prim::Constant with a message:\nNone constant cannot be converted\n")
    assert _unconverted(detailed) == "RuntimeError: the conversion of prim::Constant failed"


def test_a_program_whose_snippets_run_out_of_registers_runs_without_them_and_says_so(tmp_path: Path) -> None:
    """The Airy function as the bessel rewrite writes it (Cephes' series, every range computed and selected) is one
    long elementwise chain: the CPU plugin's JIT snippet for it cannot allocate its registers, so compile_model
    fails. The runtime compiles it again without snippets, and the check's caveat tells the app to do the same."""
    import io
    import warnings

    import torch

    from buildsys import rewrites
    from buildsys.config.data import Batch
    from buildsys.config.schema import Model
    from buildsys.status import CaveatKind
    from tests.helpers.rewrite_ops import Fn

    x = torch.linspace(-6.0, 6.0, 40).reshape(1, 40)
    module = rewrites.apply(Fn(torch.special.airy_ai), ["bessel"])
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=18, input_names=["x"], output_names=["y"])
    (tmp_path / "model.onnx").write_bytes(f.getvalue())
    ov.save_model(ov.convert_model(str(tmp_path / "model.onnx")), str(tmp_path / "model.xml"))
    with pytest.raises(RuntimeError, match="allocate registers for a snippet"):
        ov.Core().compile_model(str(tmp_path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    model = Model.model_validate({"source": {"onnx": "model.onnx"}, "inputs": [{"name": "x", "shape": [1, 40]}],
                                  "outputs": [{"name": "y"}]})
    with get_runtime("openvino").load(tmp_path / "model.xml", model, tmp_path) as session:
        got = session.run_all(Batch({"x": x.numpy()}, None, "test"))[0]
        caveats = list(session.__dict__.get("caveats", []))
    want = torch.special.airy_ai(x).numpy()  # within OpenVINO's own exp / sin accuracy (~2e-4 of the range)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * float(np.abs(want).max()))
    assert [c.kind for c in caveats] == [CaveatKind.DEGRADED] and "SNIPPETS_MODE" in caveats[0].what
