"""The MIL reference interpreter (buildsys/formats/coreml/mil*.py): each op against coremltools' own value
inference or PyTorch, whole converted packages against PyTorch (fp32, fp16, int8, palettes), and the
cases it must refuse or flag: a corrupted weight, an fp16 overflow, an op it has no implementation for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from coremltools.converters.mil import Builder as mb  # noqa: E402

from buildsys.errors import StepError  # noqa: E402
from buildsys.formats.coreml.mil import MilProgram, MissingReference  # noqa: E402
from buildsys.formats.runtime import CannotRun  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.helpers.mil_cases import TORCH_CASES, VALUE_CASES, Case  # noqa: E402

pytestmark = pytest.mark.coreml
F = torch.nn.functional


def one_op(case: Case) -> tuple[MilProgram, list[Any], dict[str, np.ndarray]]:
    """The case's MIL program (its ops read consts, so coremltools infers their values as it builds
    them, or the case's live inputs), its outputs, and the feeds it takes."""
    made: list[Any] = []

    def body(*live: Any) -> tuple[Any, ...]:
        out = case.build(*live)
        made.extend(out if isinstance(out, (list, tuple)) else [out])
        return tuple(made)

    specs = [mb.TensorSpec(shape=(1,))] + [mb.TensorSpec(shape=a.shape) for a in case.live]
    if case.live:  # mb.program reads the inputs off the signature: one live input at most
        program = mb.program(input_specs=specs, opset_version=case.opset)(lambda unused, x: body(x))
    else:
        program = mb.program(input_specs=specs, opset_version=case.opset)(lambda unused: body())
    mil = MilProgram(program)
    names = mil.input_names
    return mil, made, {names[0]: np.zeros(1, np.float32), **dict(zip(names[1:], case.live))}


# --- each op ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.name)
def test_op_matches_coremltools_value_inference(case: Case) -> None:
    program, outputs, feeds = one_op(case)
    assert case.op in program.op_counts(), f"the case builds no {case.op} op"
    got = program.evaluate(feeds).outputs
    for var in outputs:
        producer = var.op
        want = producer.materialized_val_inference() if producer.op_type.startswith("constexpr_") else var.val
        assert want is not None, f"coremltools has no value inference for {producer.op_type}"
        observed = got[var.name]
        assert observed.shape == np.shape(want), var.name
        if np.asarray(want).dtype.kind in "fc":
            np.testing.assert_allclose(observed.astype(np.float64), np.asarray(want, np.float64),
                                       rtol=case.rtol, atol=case.atol, err_msg=var.name)
        else:
            np.testing.assert_array_equal(observed, np.asarray(want), err_msg=var.name)


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.name)
def test_op_matches_pytorch(case: Case) -> None:
    program, outputs, feeds = one_op(case)
    assert case.op in program.op_counts(), f"the case builds no {case.op} op"
    got = program.evaluate(feeds).outputs
    assert case.torch is not None
    with torch.no_grad():
        wants = case.torch()
    for var, want in zip(outputs, wants if isinstance(wants, (list, tuple)) else [wants]):
        np.testing.assert_allclose(got[var.name], np.asarray(want), rtol=case.rtol, atol=case.atol, err_msg=var.name)


def test_every_implemented_op_is_checked_by_a_case() -> None:
    """The coverage page says what each op is checked against: hold it to that."""
    from buildsys.formats.coreml.mil_coverage import coverage

    checked = {c.op for c in VALUE_CASES} | {c.op for c in TORCH_CASES} | {c.op for c in PACKAGE_CHECKED}
    table = coverage()
    implemented = {n for n, row in table.items() if row["status"] == "implemented" and n != "const"}
    assert implemented - checked == set()
    assert {c.op for c in VALUE_CASES} <= {n for n, row in table.items() if row["against"].startswith("coremltools")}


# Ops checked through whole converted packages below (compressed weights made by coremltools.optimize,
# each decoded op compared with coremltools' own decoder there).
# read_state: through the stateful LLM packages, by generation against PyTorch (tests/formats/llm/test_llm_coreml.py).
PACKAGE_CHECKED = [Case(op, lambda: None) for op in ("constexpr_affine_dequantize",
                                                     "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale",
                                                     "constexpr_sparse_to_dense", "read_state")]


# --- whole packages, converted by the project's own steps ------------------------------------------------

from tests.helpers.models import Tiny, make_model, torch_outputs, validation_feeds  # noqa: E402

STEP = {"fp32": "coreml", "fp16": "coreml-fp16", "int8": "coreml-int8"}
# LSTMCell's trace holds unsafe_chunk, which coremltools' TorchScript frontend cannot convert: the
# torch.export route (modelbuild's fallback route) converts it.
VIA_PT2 = {"cell"}


def convert(tiny: Tiny, out: Path, precision: str, **options: Any) -> Path:
    """The tiny model converted by modelbuild's steps, as a build would (trace, or torch.export
    program); the .mlpackage."""
    source, filename = ("pt2", "model.pt2") if tiny.kind in VIA_PT2 else ("torchscript", "model.pt")
    made = out.parent / f"{tiny.name}-{source}"
    if not (made / filename).exists():
        tiny.run(f"{source}-from-pytorch", made)
    tiny.run(f"{STEP[precision]}-from-{source}", out, input_path=made / filename, precision=precision, **options)
    return out / "model.mlpackage"


def through_mil(tiny: Tiny, package: Path, feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    from buildsys.config.data import Batch
    from buildsys.formats import get_runtime

    feeds = feeds if feeds is not None else validation_feeds(tiny)
    with get_runtime("coreml-mil").load(package, tiny.model, tiny.root) as session:
        return session.run_all(Batch(feeds, None, "test"))


def fp16_steps(reference: np.ndarray, observed: np.ndarray) -> float:
    """The largest error in units of fp16 spacing at the output's largest magnitude."""
    return float(np.abs(observed - reference).max() / np.spacing(np.float16(np.abs(reference).max())))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Tiny, Path]]:
    """Tiny models of tests/helpers converted to every Core ML variant modelbuild makes."""
    root = tmp_path_factory.mktemp("mil-packages")
    models = {kind: make_model(root / kind, kind) for kind in ("cnn", "mlp", "lstm", "cell", "tokens", "two")}
    plan = [("cnn", "fp32", {}), ("cnn", "fp16", {}), ("cnn", "int8", {"weight_threshold": 64}),
            ("cnn", "int8", {"weight_compression": "palettize8", "weight_threshold": 64}),
            ("cnn", "int8", {"weight_compression": "palettize4", "weight_threshold": 64}),
            ("cnn", "int8", {"minimum_deployment_target": "iOS18", "weight_threshold": 64}),
            ("cnn", "int8", {"minimum_deployment_target": "iOS18", "weight_compression": "palettize4",
                             "weight_threshold": 64}),
            ("mlp", "fp32", {}), ("mlp", "fp16", {"io_dtype": "float16"}), ("lstm", "fp32", {}), ("lstm", "fp16", {}),
            ("lstm", "fp16", {"minimum_deployment_target": "iOS17"}),
            ("cell", "fp32", {}), ("tokens", "fp32", {}), ("two", "fp32", {})]
    out = {}
    for kind, precision, options in plan:
        name = "-".join([kind, precision, *map(str, options.values())])
        out[name] = (models[kind], convert(models[kind], root / "out" / name, precision, **options))
    return out


FLOAT = ["cnn-fp32", "mlp-fp32", "lstm-fp32", "cell-fp32", "tokens-fp32", "two-fp32"]
HALF = ["cnn-fp16", "mlp-fp16-float16", "lstm-fp16", "lstm-fp16-iOS17"]
COMPRESSED = ["cnn-int8-64", "cnn-int8-palettize8-64", "cnn-int8-palettize4-64", "cnn-int8-iOS18-64",
              "cnn-int8-iOS18-palettize4-64"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FLOAT)
def test_float32_packages_agree_with_pytorch_to_float32_rounding(made: dict[str, tuple[Tiny, Path]], name: str) -> None:
    tiny, package = made[name]
    feeds = validation_feeds(tiny)
    for want, got in zip(torch_outputs(tiny, feeds), through_mil(tiny, package, feeds)):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2e-6 * max(np.abs(want).max(), 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", HALF)
def test_float16_packages_agree_with_pytorch_within_a_few_fp16_steps(made: dict[str, tuple[Tiny, Path]],
                                                                     name: str) -> None:
    tiny, package = made[name]
    feeds = validation_feeds(tiny)
    for want, got in zip(torch_outputs(tiny, feeds), through_mil(tiny, package, feeds)):
        assert 0 < fp16_steps(want, got) <= 4  # > 0: the program really computed in fp16


def _weights_by_producer(package: Path) -> dict[str, tuple[str, int]]:
    """Every lstm weight input of the package's main function: (the op that makes it, its stored MIL dtype)."""
    import coremltools as ct

    main = ct.models.MLModel(str(package), skip_model_load=True).get_spec().mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    made = {out.name: op for op in ops for out in op.outputs}
    found = {}
    for op in ops:
        if op.type == "lstm":
            for name in ("weight_ih", "weight_hh", "bias"):
                producer = made[op.inputs[name].arguments[0].name]
                stored = producer.attributes["val" if producer.type == "const" else "source_val"]
                found[name] = (producer.type, stored.type.tensorType.dataType)
    return found


@pytest.mark.slow
def test_float16_packages_store_recurrent_weights_in_float16_at_every_target(made: dict[str, tuple[Tiny, Path]]) -> None:
    """Before iOS 17 an lstm computes in float32 only: its weights are stored float16 behind a constexpr_cast
    (formats/coreml/recurrent_fp16.py; 2.1× the float16 size before); from iOS 17 the op takes them float16.
    Both agree with PyTorch within a few fp16 steps (the test above)."""
    from coremltools.proto.MIL_pb2 import DataType

    before = _weights_by_producer(made["lstm-fp16"][1])
    assert before and set(before.values()) == {("constexpr_cast", DataType.FLOAT16)}, before
    after = _weights_by_producer(made["lstm-fp16-iOS17"][1])
    assert after and set(after.values()) == {("const", DataType.FLOAT16)}, after
    assert set(_weights_by_producer(made["lstm-fp32"][1]).values()) == {("const", DataType.FLOAT32)}


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_packages_decode_like_coremltools_and_pass_the_int8_check(made: dict[str, tuple[Tiny, Path]],
                                                                             name: str) -> None:
    from buildsys.config.schema import Acceptance
    from buildsys.comparison import compare
    from buildsys.nodes.verify import resolve_acceptance

    tiny, package = made[name]
    program = MilProgram.load(package)
    decoders = [op for op in program.operations() if op.op_type.startswith("constexpr_")]
    assert len(decoders) >= 2  # the conv and the linear weights are both compressed
    evaluation = program.evaluate({"image": validation_feeds(tiny)["image"][:1]})
    for op in decoders:
        ours = program.decoded[op.name][0][0]
        np.testing.assert_array_equal(ours, op.materialized_val_inference().astype(ours.dtype), err_msg=op.op_type)
    assert evaluation.outputs
    feeds = validation_feeds(tiny)
    tolerance = resolve_acceptance(Acceptance(), "int8", tiny.model.outputs)["outputs"]["logits"]
    result = compare("logits", "scores", torch_outputs(tiny, feeds)[0], through_mil(tiny, package, feeds)[0], tolerance)
    assert result, str(result)  # the check modelbuild runs on int8 targets passes
    cosine = next(m for m in result.metrics if m.name == "cosine").observed
    assert cosine > (0.95 if "palettize4" in name else 0.999), str(result)


def _direct(module: Any, example: Any, path: Path, half: bool = False, **kwargs: Any) -> Path:
    """A traced module converted by coremltools itself (for models tests/helpers has no factory for)."""
    traced = torch.jit.trace(module.eval(), example)
    inputs = [ct.TensorType(name=f"x{i}", shape=tuple(e.shape), dtype=np.float32) for i, e in enumerate(
        example if isinstance(example, tuple) else (example,))]
    mlmodel = ct.convert(traced, convert_to="mlprogram", inputs=inputs, skip_model_load=True,
                         compute_precision=ct.precision.FLOAT16 if half else ct.precision.FLOAT32,
                         minimum_deployment_target=kwargs.pop("target", ct.target.iOS16), **kwargs)
    mlmodel.save(str(path))
    return path


class Block(torch.nn.Module):
    """A pre-norm transformer encoder block: layer_norm, attention (matmul + softmax, or PyTorch's fused
    scaled_dot_product_attention, which coremltools maps to MIL's for iOS 18), gelu, linear."""

    def __init__(self, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused
        self.norm1, self.norm2 = torch.nn.LayerNorm(16), torch.nn.LayerNorm(16)
        self.qkv, self.proj = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)
        self.fc1, self.fc2, self.head = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16), torch.nn.Linear(16, 3)

    def forward(self, x: Any) -> Any:
        # no x.shape: coremltools 9's trace frontend fails on aten::int with numpy 2.4 (coremltools #2633)
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, 2, 8)).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            attended = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
        x = x + self.proj(attended.transpose(1, 2).flatten(2))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


@pytest.mark.slow
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_transformer_block_agrees_with_pytorch(tmp_path: Path, half: bool) -> None:
    torch.manual_seed(0)
    for name, module, example, target in [
            ("block", Block(), torch.randn(2, 5, 16), ct.target.iOS16),
            ("block-sdpa", Block(fused=True), torch.randn(2, 5, 16), ct.target.iOS18)]:
        program = MilProgram.load(_direct(module, example, tmp_path / f"{name}.mlpackage", half, target=target))
        got = program.evaluate({"x0": example.numpy()}).outputs
        with torch.no_grad():
            want = module(example)
        want = (want[0] if isinstance(want, tuple) else want).numpy()
        observed = got[program.output_names[0]]
        if half:
            assert fp16_steps(want, observed) <= 8, name
        else:
            assert np.abs(observed - want).max() <= 2e-6 * np.abs(want).max(), name
        ops = program.op_counts()
        assert {"block": "softmax", "block-sdpa": "scaled_dot_product_attention"}[name] in ops


@pytest.mark.slow
def test_a_corrupted_weight_changes_the_outputs_so_the_check_fails(made: dict[str, tuple[Tiny, Path]],
                                                                   tmp_path: Path) -> None:
    from buildsys.config.schema import Acceptance
    from buildsys.comparison import compare
    from buildsys.nodes.verify import resolve_acceptance

    tiny, package = made["cnn-fp32"]
    corrupt = tmp_path / "model.mlpackage"
    shutil.copytree(package, corrupt)
    blob = next(corrupt.rglob("weight.bin"))
    data = bytearray(blob.read_bytes())
    start = int(len(data) * 0.7) // 64 * 64  # inside the linear layer's float32 weights
    for i in range(start + 3, start + 259, 4):
        data[i] ^= 0x80  # flip the sign of 64 weights
    blob.write_bytes(bytes(data))
    feeds = validation_feeds(tiny)
    reference = torch_outputs(tiny, feeds)[0]
    tolerance = resolve_acceptance(Acceptance(), "fp32", tiny.model.outputs)["outputs"]["logits"]
    assert compare("logits", "scores", reference, through_mil(tiny, package, feeds)[0], tolerance)
    broken = compare("logits", "scores", reference, through_mil(tiny, corrupt, feeds)[0], tolerance)
    assert not broken
    assert any("cosine" in row or "max_rel" in row for row in broken.failures())


class Overflow(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = torch.nn.Linear(4, 4)
        with torch.no_grad():
            self.big.weight.mul_(4000.0)

    def forward(self, x: Any) -> Any:
        return torch.relu(self.big(x)).mean(-1, keepdim=True) / 1000.0


@pytest.mark.slow
def test_fp16_overflow_is_flagged_with_its_op_and_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4) * 20
    found = {}
    for half in (False, True):
        program = MilProgram.load(_direct(Overflow(), x, tmp_path / f"{half}.mlpackage", half))
        found[half] = program.evaluate({"x0": x.numpy()}).findings
    assert found[False] == []  # the same model in fp32 stays in range
    overflow = [f for f in found[True] if f.kind == "overflow"]
    assert len(overflow) == 1
    assert (overflow[0].op_type, overflow[0].module) == ("linear", "big")
    assert overflow[0].largest > 65504
    assert "fp16 overflow at linear" in str(overflow[0]) and "(module big)" in str(overflow[0])


def _unknown_ops_package(path: Path) -> Path:
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 4))], opset_version=ct.target.iOS17)
    def program(x: Any) -> Any:
        windows = mb.sliding_windows(x=x, axis=1, size=2, stride=2)
        sequence = mb.transpose(x=mb.reshape(x=windows, shape=[1, 4, 8]), perm=[1, 0, 2])
        out, _ = mb.gru(x=sequence, initial_h=np.zeros((1, 3), np.float32), weight_ih=np.ones((9, 8), np.float32),
                        weight_hh=np.ones((9, 3), np.float32))
        return mb.relu(x=out)

    mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                         skip_model_load=True)
    mlmodel.save(str(path))
    return path


def test_an_op_without_implementation_is_not_run_and_named(tmp_path: Path) -> None:
    from buildsys.formats import get_runtime

    package = _unknown_ops_package(tmp_path / "unknown.mlpackage")
    program = MilProgram.load(package)
    assert program.missing() == {"gru": "", "sliding_windows": ""}  # all of them, before anything runs
    message = r"not run: ops 'gru', 'sliding_windows' have no reference implementation"
    with pytest.raises(MissingReference, match=message) as raised:
        program.evaluate({"x": np.zeros((1, 8, 4), np.float32)})
    assert isinstance(raised.value, CannotRun) and isinstance(raised.value, StepError)
    tiny_model = make_model(tmp_path / "m", "mlp").model
    with pytest.raises(CannotRun, match=message):
        get_runtime("coreml-mil").load(package, tiny_model, tmp_path)


def test_a_refused_variant_is_not_run_with_its_reason() -> None:
    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 1, 2))], opset_version=ct.target.iOS17)
    def program(x: Any) -> Any:
        return mb.lstm(x=x, initial_h=np.zeros((1, 2), np.float32), initial_c=np.zeros((1, 2), np.float32),
                       weight_ih=np.ones((8, 2), np.float32), weight_hh=np.ones((8, 2), np.float32), clip=1.0)[0]

    with pytest.raises(MissingReference, match=r"op 'lstm' \(lstm with cell clipping\) has no reference"):
        MilProgram(program).evaluate({"x": np.zeros((3, 1, 2), np.float32)})


@pytest.mark.slow
def test_intermediates_are_every_op_output_and_match_pytorch_layers(made: dict[str, tuple[Tiny, Path]]) -> None:
    tiny, package = made["cnn-fp32"]
    image = validation_feeds(tiny)["image"][:1]
    program = MilProgram.load(package)
    evaluation = program.evaluate({"image": image}, keep=True)
    assert [i.op_type for i in evaluation.intermediates] == ["conv", "relu", "reshape", "linear"]
    assert {i.op_type: i.module for i in evaluation.intermediates}["conv"] == "conv"
    assert {i.op_type: i.module for i in evaluation.intermediates}["linear"] == "fc"
    net = tiny.net()
    with torch.no_grad():
        activation = torch.relu(net.conv(torch.from_numpy(image))).numpy()
    relu = next(i for i in evaluation.intermediates if i.op_type == "relu")
    np.testing.assert_allclose(evaluation.value(relu.name), activation, rtol=1e-6, atol=1e-6)
    assert evaluation.intermediates[-1].value is evaluation.outputs["logits"] or np.array_equal(
        evaluation.intermediates[-1].value, evaluation.outputs["logits"])


@pytest.mark.slow
def test_image_inputs_are_fed_as_their_8_bit_pixels(tmp_path: Path) -> None:
    tiny = make_model(tmp_path / "cnn", "cnn")
    scale, bias = 4 / 255, -2.0
    package = convert(tiny, tmp_path / "out", "fp32", input_type="image", image_scale=scale, image_bias=[bias])
    feeds = validation_feeds(tiny)
    # what Core ML sees of these floats: 8-bit pixels, normalized back by the program's own ops
    seen = np.clip(np.round((feeds["image"] - bias) / scale), 0, 255) * np.float32(scale) + np.float32(bias)
    want = torch_outputs(tiny, {"image": seen.astype(np.float32)})[0]
    got = through_mil(tiny, package, feeds)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert not np.allclose(seen, feeds["image"])  # the quantization really happened


@pytest.mark.slow
def test_a_function_of_a_multifunction_package_is_chosen_by_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths, modules = {}, {}
    for name in ("first", "second"):
        modules[name] = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
        paths[name] = _direct(modules[name], torch.randn(1, 4), tmp_path / f"{name}.mlpackage", target=ct.target.iOS18)
    descriptor = ct.utils.MultiFunctionDescriptor()
    for name, path in paths.items():
        descriptor.add_function(str(path), src_function_name="main", target_function_name=name)
    descriptor.default_function_name = "second"
    joined = tmp_path / "both.mlpackage"
    ct.utils.save_multifunction(descriptor, str(joined))
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    for name in (None, "first", "second"):
        program = MilProgram.load(joined, name)
        assert program.functions == ["first", "second"]
        got = program.evaluate({"x0": x}).outputs[program.output_names[0]]
        with torch.no_grad():
            want = modules[name or "second"](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(CannotRun, match="no function 'third'"):
        MilProgram.load(joined, "third")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
def test_sparse_weights_decode_like_coremltools(made: dict[str, tuple[Tiny, Path]], tmp_path: Path,
                                               target: str) -> None:
    """coremltools' pruning for both deployment targets (iOS16 packs the mask into bytes, iOS18 one bit per
    element): the decoder is held to coremltools' own materialization."""
    from coremltools.optimize.coreml import OpMagnitudePrunerConfig, OptimizationConfig, prune_weights

    tiny = made["cnn-fp32"][0]
    package = convert(tiny, tmp_path / "fp16", "fp16", minimum_deployment_target=target)
    config = OptimizationConfig(global_config=OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=64))
    pruned = tmp_path / "pruned.mlpackage"
    prune_weights(ct.models.MLModel(str(package), skip_model_load=True), config).save(str(pruned))
    program = MilProgram.load(pruned)
    program.evaluate({"image": validation_feeds(tiny)["image"][:1]})
    decoders = [op for op in program.operations() if op.op_type == "constexpr_sparse_to_dense"]
    assert len(decoders) == 2
    for op in decoders:
        ours = program.decoded[op.name][0][0]
        np.testing.assert_array_equal(ours, op.materialized_val_inference().astype(ours.dtype))


@pytest.mark.slow
def test_the_coreml_mil_session_reorders_outputs_and_labels_its_numbers(made: dict[str, tuple[Tiny, Path]]) -> None:
    from buildsys.config.data import Batch
    from buildsys.formats import get_runtime
    from buildsys.formats.coreml.mil import LABEL

    tiny, package = made["two-fp32"]
    assert [o.name for o in tiny.model.outputs] == ["scores", "box"]
    feeds = validation_feeds(tiny)
    runtime = get_runtime("coreml-mil")
    assert runtime.unavailable() is None and get_runtime("coreml").stand_in == "coreml-mil"
    with runtime.load(package, tiny.model, tiny.root) as session:
        got = session.run_all(Batch(feeds, None, "test"))
        diagnostics = session.diagnostics()
    for want, observed in zip(torch_outputs(tiny, feeds), got):
        np.testing.assert_allclose(observed, want, rtol=1e-5, atol=1e-6)
    assert diagnostics["interpreter"] == LABEL and "not Apple's Core ML runtime" in LABEL
    assert diagnostics["status"] == "MIL reference, not Apple's runtime"
    assert "Neural Engine" in diagnostics["not_exercised"]
    assert diagnostics["samples"] == len(feeds["x"]) and diagnostics["fp16_findings"] == []
    assert runtime.inspect(package, tiny.model, "coreml")["problems"] == []


def test_importing_the_interpreter_loads_no_toolchain() -> None:
    code = ("import sys\nimport buildsys.formats.coreml.mil_runtime, buildsys.formats.coreml.mil_coverage\n"
            "from buildsys.formats.coreml.mil import implementations\nimplementations()\n"
            "print(sorted(m for m in ('numpy', 'torch', 'coremltools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_the_op_coverage_page_is_up_to_date() -> None:
    from buildsys.formats.coreml.mil_coverage import DOC, render

    assert DOC.read_text(encoding="utf-8") == render(), \
        "docs/coreml-reference.md is stale: run python -m buildsys.formats.coreml.mil_coverage"


# --- pruning (sparsity) ------------------------------------------------------------------------------


def _bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Tiny, Path]]:
    """The tiny CNN as a dense fp16 package and with 10 %, half and 95 % of its weights (conv and linear) pruned."""
    root = tmp_path_factory.mktemp("pruned")
    tiny = make_model(root / "cnn", "cnn")
    return {name: (tiny, convert(tiny, root / "out" / name, "fp16", **options)) for name, options in (
        ("dense", {}), ("light", {"sparsity": 0.1, "weight_threshold": 64}),
        ("half", {"sparsity": 0.5, "weight_threshold": 64}), ("most", {"sparsity": 0.95, "weight_threshold": 64}))}


def _check(tiny: Tiny, package: Path, out: Path, **acceptance: Any) -> dict[str, Any]:
    from buildsys.config.schema import Acceptance
    from buildsys.nodes.verify import resolve_acceptance

    tiny.run("reference", out / "ref", extra={"source_format": "pytorch"})
    options = resolve_acceptance(Acceptance(**acceptance), "fp16", tiny.model.outputs)
    return tiny.run("check", out / "check", input_path=package, precision="fp16",
                    extra={"format": "coreml-fp16", "reference": str(out / "ref" / "reference.npz")}, **options)


@pytest.mark.slow
def test_a_pruned_package_is_smaller_than_its_dense_twin_and_decodes_like_coremltools(
        pruned: dict[str, tuple[Tiny, Path]]) -> None:
    tiny, half = pruned["half"]
    assert _bytes(half) < 0.8 * _bytes(pruned["dense"][1]), (_bytes(half), _bytes(pruned["dense"][1]))
    program = MilProgram.load(half)
    program.evaluate({"image": validation_feeds(tiny)["image"][:1]})
    decoders = [op for op in program.operations() if op.op_type == "constexpr_sparse_to_dense"]
    assert len(decoders) == 2  # the conv's 72 weights and the linear's 2,880
    for op in decoders:
        ours = program.decoded[op.name][0][0]
        np.testing.assert_array_equal(ours, op.materialized_val_inference().astype(ours.dtype))
        assert (ours == 0).mean() >= 0.5


#: What a pruned target might accept: decisions kept, elementwise error loose (pruning is not rounding).
#: The tiny CNN is untrained (logits near zero, so near-ties flip): it takes 10 %; examples/digits takes half.
LOOSE = {"max_rel": 0.5, "min_cosine": 0.8, "min_top1_agreement": 0.9, "max_accuracy_drop": 0.1}


@pytest.mark.slow
def test_a_pruned_package_passes_its_tolerance_and_a_ratio_too_high_fails_it(
        pruned: dict[str, tuple[Tiny, Path]], tmp_path: Path) -> None:
    tiny, light = pruned["light"]
    passed = _check(tiny, light, tmp_path / "light", **LOOSE)
    assert passed["passed"] is True, passed.get("failures")
    assert passed["structure"]["facts"]["compressed_weight_ops"] == {"constexpr_sparse_to_dense": 2}
    failed = _check(tiny, pruned["most"][1], tmp_path / "most", **LOOSE)
    assert failed["passed"] is False
    assert any(line.startswith("logits: top1_agreement") for line in failed["failures"]), failed["failures"]


def test_sparsity_is_refused_with_weight_compression_and_before_ios16(tmp_path: Path) -> None:
    from buildsys.config.schema import Model
    from buildsys.formats import steps

    fp16, int8 = steps()["coreml-fp16-from-torchscript"], steps()["coreml-int8-from-torchscript"]
    model = Model.model_validate({"source": {"factory": "m:f"}, "outputs": [{"name": "y"}],
                                  "inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]})
    assert fp16.check_config(model, fp16.Options(sparsity=0.5), tmp_path) is None
    assert fp16.check_config(model, fp16.Options(sparsity=0.5, minimum_deployment_target="iOS15"), tmp_path) == \
        "sparsity needs minimum_deployment_target iOS16 or later (got iOS15)"
    assert "modelbuild does not make yet" in int8.check_config(model, int8.Options(sparsity=0.5), tmp_path)
    with pytest.raises(ValueError, match="less than 1"):
        fp16.Options(sparsity=1.0)


class Guarded(torch.nn.Module):
    """An unrolled series' unused term: exp of a large argument, which a where then discards."""

    def forward(self, x: Any) -> Any:
        return torch.where(x > 50.0, torch.exp(x * 10.0), x * 2.0)


def test_an_inf_a_float32_program_discards_is_reported_but_does_not_fail(tmp_path: Path) -> None:
    """In a float32 program an inf made from finite inputs is the program's own, not an fp16 range fault: the
    session reports it, the check fails on it only for a program that computes in fp16."""
    from buildsys.config.data import Batch
    from buildsys.config.schema import Model
    from buildsys.formats import get_runtime

    x = torch.linspace(-5.0, 20.0, 8).reshape(1, 8)
    for half in (False, True):
        package = _direct(Guarded(), x, tmp_path / f"guarded{int(half)}.mlpackage", half)
        name = MilProgram.load(package).output_names[0]
        model = Model.model_validate({"source": {"onnx": "m.onnx"}, "inputs": [{"name": "x0", "shape": [1, 8]}],
                                      "outputs": [{"name": name}]})
        with get_runtime("coreml-mil").load(package, model, tmp_path) as session:
            got = session.run_all(Batch({"x0": x.numpy()}, None, "test"))[0]
            findings = session.findings()
        assert [f["kind"] for f in findings if f["kind"] != "overflow"] == ["non-finite"], findings
        assert any(f["fails"] for f in findings) is half
        if not half:
            np.testing.assert_allclose(got, Guarded()(x).numpy(), rtol=1e-6)
