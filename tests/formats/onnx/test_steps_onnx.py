"""ONNX steps run in-process on tiny real models: export, checker, ONNX Runtime parity, optimization,
float16 and int8 quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from buildsys.config.schema import Acceptance
from buildsys.errors import StepError
from buildsys.formats import get_runtime
from buildsys.formats import get_step
from buildsys.nodes.verify import resolve_acceptance
from tests.helpers.models import Tiny, make_model, torch_outputs, validation_feeds


def ort_outputs(tiny: Tiny, path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return get_runtime("onnxruntime").load(path, tiny.model, tiny.root).run_all(_batch(feeds))


def _batch(feeds: dict[str, np.ndarray]):  # noqa: ANN202
    from buildsys.config.data import Batch

    return Batch(feeds, None, "test")


def check(tiny: Tiny, out: Path, fmt: str, artifact: Path, reference: Path, precision: str = "fp32",
          **acceptance: object) -> dict:
    options = resolve_acceptance(Acceptance(**acceptance), precision, tiny.model.outputs)
    return tiny.run("check", out, input_path=artifact, precision=precision,
                    extra={"format": fmt, "reference": str(reference)}, **options)


def dims(value: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# --- export ---------------------------------------------------------------------------------------


def test_legacy_export_is_valid_named_dynamic_and_matches_torch(cnn: Tiny, cnn_onnx: Path) -> None:
    onnx.checker.check_model(str(cnn_onnx))
    proto = onnx.load(str(cnn_onnx))
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    assert dims(proto.graph.input[0]) == ["batch", 1, 8, 8] and dims(proto.graph.output[0]) == ["batch", 10]
    assert not (cnn_onnx.parent / "model.onnx.data").exists()
    feeds = validation_feeds(cnn)
    np.testing.assert_allclose(ort_outputs(cnn, cnn_onnx, feeds)[0], torch_outputs(cnn, feeds)[0], rtol=1e-4, atol=1e-5)


def test_dynamo_export_with_external_data_writes_two_files(cnn: Tiny, tmp_path: Path) -> None:
    metrics = cnn.run("onnx-from-pytorch", tmp_path, dynamo=True, external_data=True)
    assert metrics["exporter"] == "dynamo" and metrics["external_data"] is True
    side = tmp_path / "model.onnx.data"
    assert side.stat().st_size > 8 * 6 * 6 * 10 * 4  # the Linear weights live in the side file
    assert (tmp_path / "model.onnx").stat().st_size < side.stat().st_size
    head = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert dims(head.graph.input[0])[0] == "batch"  # torch.export's 's0' renamed after the signature
    feeds = validation_feeds(cnn)
    np.testing.assert_allclose(ort_outputs(cnn, tmp_path / "model.onnx", feeds)[0], torch_outputs(cnn, feeds)[0],
                               rtol=1e-4, atol=1e-5)


def test_dynamo_export_embedded_is_one_file(mlp: Tiny, tmp_path: Path) -> None:
    metrics = mlp.run("onnx-from-pytorch", tmp_path, dynamo=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"] and metrics["external_data"] is False


def test_external_data_needs_dynamo() -> None:
    with pytest.raises(ValidationError, match="external_data needs dynamo: true"):
        get_step("onnx-from-pytorch").Options(external_data=True)


def test_fixed_shapes_export_runs_one_sample_per_call(mlp: Tiny, tmp_path: Path) -> None:
    mlp.run("onnx-from-pytorch", tmp_path, dynamic_axes=False)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert dims(proto.graph.input[0]) == [1, 4]
    session = get_runtime("onnxruntime").load(tmp_path / "model.onnx", mlp.model, mlp.root)
    assert session.max_batch == 1
    feeds = validation_feeds(mlp)
    np.testing.assert_allclose(session.run_all(_batch(feeds))[0], torch_outputs(mlp, feeds)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
def test_unsupported_operator_is_named(tmp_path: Path, dynamo: bool) -> None:
    tiny = make_model(tmp_path / "p", "unsupported", name="eig")
    with pytest.raises(StepError, match=r"^model 'eig': ONNX export failed: operator 'aten::_?linalg_eigh' .*"
                                        r"\(step onnx-from-pytorch\)$"):
        tiny.run("onnx-from-pytorch", tmp_path / "out", dynamo=dynamo)


def test_two_outputs_keep_their_names_on_the_right_tensors(tmp_path: Path) -> None:
    # TwoHeads returns {"box": ..., "scores": ...}: exporters flatten dicts in key order.
    tiny = make_model(tmp_path / "p", "two")
    tiny.run("onnx-from-pytorch", tmp_path / "onnx")
    feeds = validation_feeds(tiny)
    scores, box = ort_outputs(tiny, tmp_path / "onnx/model.onnx", feeds)
    expected = torch_outputs(tiny, feeds)
    assert scores.shape == (48, 3) and box.shape == (48, 2)
    np.testing.assert_allclose(scores, expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(box, expected[1], rtol=1e-4, atol=1e-5)


def test_from_torchscript_and_from_pt2(cnn: Tiny, cnn_reference: Path, tmp_path: Path) -> None:
    cnn.run("torchscript-from-pytorch", tmp_path / "ts")
    cnn.run("onnx-from-torchscript", tmp_path / "a", input_path=tmp_path / "ts/model.pt")
    cnn.run("pt2-from-pytorch", tmp_path / "pt2")
    metrics = cnn.run("onnx-from-pt2", tmp_path / "b", input_path=tmp_path / "pt2/model.pt2")
    assert metrics["exporter"] == "dynamo"
    for sub in ("a", "b"):
        proto = onnx.load(str(tmp_path / sub / "model.onnx"))
        assert dims(proto.graph.input[0]) == ["batch", 1, 8, 8], sub
        assert check(cnn, tmp_path / f"check-{sub}", "onnx", tmp_path / sub / "model.onnx", cnn_reference)["passed"]


def test_onnx_file_source_is_copied_and_its_names_checked(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    metrics = cnn.run("onnx-from-onnx-file", tmp_path / "ok", input_path=cnn_onnx)
    assert (tmp_path / "ok/model.onnx").read_bytes() == cnn_onnx.read_bytes() and metrics["opset"] == 18
    renamed = cnn.with_model(inputs=[{"name": "pixels", "shape": ["batch", 1, 8, 8]}])
    with pytest.raises(StepError, match=r"model 'cnn': the ONNX graph has inputs \[image\] and outputs \[logits\] but "
                                        r"the signature declares inputs \[pixels\] and outputs \[logits\]"):
        renamed.run("onnx-from-onnx-file", tmp_path / "bad", input_path=cnn_onnx)


def test_onnx_file_with_external_data_is_normalised(cnn: Tiny, tmp_path: Path) -> None:
    cnn.run("onnx-from-pytorch", tmp_path / "src", dynamo=True, external_data=True)
    (tmp_path / "src/model.onnx").rename(tmp_path / "src/given.onnx")  # the side file keeps its own name
    cnn.run("onnx-from-onnx-file", tmp_path / "out", input_path=tmp_path / "src/given.onnx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.onnx.data"]
    onnx.checker.check_model(str(tmp_path / "out/model.onnx"))


# --- optimize / fp16 / int8 -----------------------------------------------------------------------


@pytest.mark.parametrize("level", ["basic", "extended", "all"])
def test_optimized_matches(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path, tmp_path: Path, level: str) -> None:
    metrics = cnn.run("onnx-optimized-from-onnx", tmp_path / "opt", input_path=cnn_onnx, level=level)
    assert metrics["level"] == level
    result = check(cnn, tmp_path / "check", "onnx-optimized", tmp_path / "opt/model.onnx", cnn_reference)
    assert result["passed"] is True, result


def test_fp16_has_half_weights_float32_io_and_passes_fp16_defaults(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path,
                                                                    tmp_path: Path) -> None:
    metrics = cnn.run("onnx-fp16-from-onnx", tmp_path / "fp16", input_path=cnn_onnx)
    proto = onnx.load(str(tmp_path / "fp16/model.onnx"))
    floats = [t.data_type for t in proto.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and set(floats) == {onnx.TensorProto.FLOAT16} and metrics["float16_initializers"] == len(floats)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert (tmp_path / "fp16/model.onnx").stat().st_size < cnn_onnx.stat().st_size * 0.7
    result = check(cnn, tmp_path / "check", "onnx-fp16", tmp_path / "fp16/model.onnx", cnn_reference, "fp16")
    assert result["passed"] is True
    assert 0 < result["outputs"]["logits"]["max_rel"]["observed"] < 1e-2
    # The fp32 limits are too tight for it: the check says so with numbers.
    strict = check(cnn, tmp_path / "strict", "onnx-fp16", tmp_path / "fp16/model.onnx", cnn_reference, "fp32")
    assert strict["passed"] is False and any("max_rel" in f and "> 1.0e-04" in f for f in strict["failures"])


def test_fp16_without_float32_io_takes_half_inputs(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path, tmp_path: Path) -> None:
    cnn.run("onnx-fp16-from-onnx", tmp_path / "fp16", input_path=cnn_onnx, keep_io_types=False)
    proto = onnx.load(str(tmp_path / "fp16/model.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    # the runtime casts the reference's float32 inputs to what the graph declares
    assert check(cnn, tmp_path / "check", "onnx-fp16", tmp_path / "fp16/model.onnx", cnn_reference, "fp16")["passed"]


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_dynamic_is_smaller_quantized_and_passes(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path,
                                                      tmp_path: Path) -> None:
    metrics = cnn.run("onnx-int8-from-onnx", tmp_path / "q", input_path=cnn_onnx)
    artifact = tmp_path / "q/model.onnx"
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["model.onnx"]  # no work files left
    assert artifact.stat().st_size < cnn_onnx.stat().st_size * 0.6
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(artifact)
    assert metrics["method"] == "dynamic" and metrics["quantized_ops"]["DynamicQuantizeLinear"] >= 1
    result = check(cnn, tmp_path / "check", "onnx-int8", artifact, cnn_reference, "int8")
    assert result["passed"] is True
    assert result["outputs"]["logits"]["top1_agreement"]["observed"] >= 0.9


@pytest.mark.parametrize("quant_format", ["qdq", "qoperator"])
def test_int8_static_calibrates_on_the_models_data(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path, tmp_path: Path,
                                                   quant_format: str) -> None:
    cnn.run("onnx-int8-from-onnx", tmp_path / "q", input_path=cnn_onnx, method="static", per_channel=True,
            quant_format=quant_format, calibration_samples=16)
    artifact = tmp_path / "q/model.onnx"
    ops = _ops(artifact)
    assert "QuantizeLinear" in ops and ("QLinearConv" in ops if quant_format == "qoperator" else "DequantizeLinear" in ops)
    assert artifact.stat().st_size < cnn_onnx.stat().st_size * 0.6
    assert check(cnn, tmp_path / "check", "onnx-int8", artifact, cnn_reference, "int8")["passed"] is True


def test_int8_static_from_an_optimized_model(mlp: Tiny, tmp_path: Path) -> None:
    mlp.run("onnx-from-pytorch", tmp_path / "onnx")
    mlp.run("onnx-optimized-from-onnx", tmp_path / "opt", input_path=tmp_path / "onnx/model.onnx", level="basic")
    mlp.run("onnx-int8-from-onnx", tmp_path / "q", input_path=tmp_path / "opt/model.onnx", method="static")
    assert "QuantizeLinear" in _ops(tmp_path / "q/model.onnx")


def test_int8_static_needs_calibration_data(tmp_path: Path) -> None:
    step = get_step("onnx-int8-from-onnx")
    tiny = make_model(tmp_path / "p", "mlp", calibration=False)
    static = step.Options(method="static")
    assert step.check_config(tiny.model, static, tiny.root) == (
        "method 'static' needs calibration data: add data.calibration to the model (an .npz of representative inputs)")
    assert step.check_config(tiny.model, step.Options(), tiny.root) is None
    assert step.data_used(static) == ("calibration",) and step.data_used(step.Options()) == ()
    tiny.run("onnx-from-pytorch", tmp_path / "onnx")
    with pytest.raises(StepError, match=r"model 'mlp': method 'static' needs calibration data"):
        tiny.run("onnx-int8-from-onnx", tmp_path / "q", input_path=tmp_path / "onnx/model.onnx", method="static")


# --- file sources ---------------------------------------------------------------------------------


def test_onnx_file_source_end_to_end(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copyfile(cnn_onnx, cnn.root / "given.onnx")
    given = cnn.with_model(source={"onnx": "given.onnx"})
    given.run("reference", tmp_path / "ref", input_path=cnn.root / "given.onnx", extra={"source_format": "onnx-file"})
    given.run("onnx-from-onnx-file", tmp_path / "onnx", input_path=cnn.root / "given.onnx")
    given.run("onnx-int8-from-onnx", tmp_path / "q", input_path=tmp_path / "onnx/model.onnx")
    assert check(given, tmp_path / "check", "onnx-int8", tmp_path / "q/model.onnx", tmp_path / "ref/reference.npz",
                 "int8")["passed"] is True


def test_torchscript_file_source_end_to_end(cnn: Tiny, tmp_path: Path) -> None:
    cnn.run("torchscript-from-pytorch", tmp_path / "made")
    given = cnn.with_model(source={"torchscript": str(tmp_path / "made/model.pt")})
    metrics = given.run("reference", tmp_path / "ref", input_path=tmp_path / "made/model.pt",
                        extra={"source_format": "torchscript-file"})
    assert metrics["samples"] == 48
    given.run("onnx-from-torchscript", tmp_path / "onnx", input_path=tmp_path / "made/model.pt")
    assert check(given, tmp_path / "check", "onnx", tmp_path / "onnx/model.onnx", tmp_path / "ref/reference.npz")["passed"]


def test_dynamo_output_named_like_an_internal_value_stays_ssa(mlp: Tiny, tmp_path: Path) -> None:
    # The dynamo graph has its own 'linear' value (aten.linear): a signature that names the output
    # 'linear' must not make that name be written twice (the zoo's MiniLM: output 'embedding').
    tiny = mlp.with_model(outputs=[{"name": "linear", "kind": "scores"}])
    tiny.run("onnx-from-pytorch", tmp_path, dynamo=True)  # runs the checker: an SSA violation fails here
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert [o.name for o in proto.graph.output] == ["linear"]
    assert [out for node in proto.graph.node for out in node.output].count("linear") == 1
    feeds = validation_feeds(mlp)
    np.testing.assert_allclose(ort_outputs(tiny, tmp_path / "model.onnx", feeds)[0], torch_outputs(mlp, feeds)[0],
                               rtol=1e-4, atol=1e-5)


def test_a_tied_weight_is_stored_once_and_quantized_as_an_initializer_again(tmp_path: Path) -> None:
    """The legacy exporter writes a tied embedding and output head twice (the head's transposed copy for its MatMul):
    a decoder LM at twice its float32 size. `weights_once` makes the copy a Transpose of the table; the int8 step
    folds it back, since ONNX Runtime's quantizers quantize a MatMul's weight only where it is an initializer."""
    import torch
    from onnxruntime.quantization import quantize_dynamic

    from buildsys.formats.onnx.onnxfile import transposed_weights_folded, weights_once
    from buildsys.formats.onnx.weights import measure

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(2000, 32)
            self.head = torch.nn.Linear(32, 2000, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.emb(ids)))

    torch.manual_seed(0)
    model, ids = Tied().eval(), torch.randint(0, 2000, (2, 8))
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (ids,), str(path), dynamo=False, input_names=["ids"], output_names=["logits"])
    written = path.stat().st_size
    assert weights_once(path) == 2000 * 32 * 4 and path.stat().st_size < 0.55 * written  # one table of 256 KB
    onnx.checker.check_model(str(path))
    import onnxruntime as ort

    got = ort.InferenceSession(str(path)).run(None, {"ids": ids.numpy()})[0]
    assert np.abs(got - model(ids).detach().numpy()).max() < 1e-5
    folded = transposed_weights_folded(path, tmp_path / "work", private=False)
    quantize_dynamic(str(folded), str(tmp_path / "int8.onnx"))
    assert measure(tmp_path / "int8.onnx", "int8")["share"] == 1.0  # the head quantized too, as before
