"""The litert-torch route to TFLite (pytorch → pt2 → tflite*): the steps on a tiny model checked in
LiteRT, the route order (litert-torch first, onnx2tf next), `via: [pt2]` pinning it, and a GRU
built through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from buildsys.formats import get_runtime
from buildsys.storage.lock import Lock
from tests.formats.onnx.test_steps_onnx import check
from tests.helpers.models import make_model, torch_outputs, validation_feeds

pytest.importorskip("torch")
ONNX2TF = ["pytorch", "onnx", "saved_model", "tflite"]
LITERT = ["pytorch", "pt2", "tflite"]


def _needs_litert_torch() -> None:
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory):
    """A tiny channels-first CNN and its torch.export program."""
    _needs_litert_torch()
    root = tmp_path_factory.mktemp("litert")
    tiny = make_model(root / "proj", "cnn")
    tiny.run("pt2-from-pytorch", root / "pt2")
    return tiny, root / "pt2" / "model.pt2"


@pytest.mark.slow
@pytest.mark.parametrize("precision,options,tolerance", [
    ("fp32", {}, 1e-4), ("fp16", {}, 1e-2), ("int8", {"mode": "dynamic"}, 0.1), ("int8", {"mode": "full"}, 0.3)])
def test_step_converts_and_litert_matches_torch(cnn, tmp_path: Path, precision: str, options: dict,
                                               tolerance: float) -> None:
    tiny, pt2 = cnn
    name = {"fp32": "tflite-from-pt2"}.get(precision, f"tflite-{precision}-from-pt2")
    metrics = tiny.run(name, tmp_path, input_path=pt2, precision=precision, **options)
    layout = json.loads((tmp_path / "layout.json").read_text())
    # The model's own layout is kept: identity permutations, names mapped to litert-torch's keys.
    assert layout["kept_source_layout"] and layout["inputs"][0]["perm"] == [0, 1, 2, 3]
    assert layout["inputs"][0]["layout"] == "NCHW" and layout["inputs"][0]["key"] == "args_0"
    assert metrics["batch"] == 1 and metrics["bytes"] == (tmp_path / "model.tflite").stat().st_size
    if options.get("mode") == "full":
        assert metrics["io"] == "int8" and metrics["calibration_samples"] == 32
    feeds = validation_feeds(tiny)
    session = get_runtime("litert").load(tmp_path / "model.tflite", tiny.model, tiny.root)
    step = session.max_batch  # a fixed batch of 1: the check feeds it chunk by chunk too
    n = len(feeds["image"])
    got = np.concatenate([session.run({"image": feeds["image"][i:i + step]})[0] for i in range(0, n, step)])
    want = torch_outputs(tiny, feeds)[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() < tolerance * max(1.0, float(np.abs(want).max()))
    # the check's one-thread latency: the interpreter made again at one thread computes the same
    assert session.use_threads(1) == 1
    np.testing.assert_array_equal(session.run({"image": feeds["image"][:step]})[0], got[:step])


def _full_int8(tmp_path: Path, kind: str) -> tuple[dict, dict]:
    """Model `kind` through the .pt2 and litert-torch's full int8: the step's metrics and the int8 check of its
    file against PyTorch in LiteRT."""
    _needs_litert_torch()
    tiny = make_model(tmp_path / "p", kind)
    tiny.run("pt2-from-pytorch", tmp_path / "pt2")
    metrics = tiny.run("tflite-int8-from-pt2", tmp_path / "tflite", input_path=tmp_path / "pt2/model.pt2",
                       precision="int8", mode="full")
    tiny.run("reference", tmp_path / "ref", extra={"source_format": "pytorch"})
    return metrics, check(tiny, tmp_path / "check", "tflite-int8", tmp_path / "tflite/model.tflite",
                          tmp_path / "ref/reference.npz", precision="int8")


@pytest.mark.slow
def test_integer_values_are_never_quantized(tmp_path: Path) -> None:
    """Relative-position buckets computed in int64 (T5, WavLM): PT2E's annotators match their ops, and an observer
    on an int64 tensor fails calibration ("histogram_cpu" not implemented for 'Long'). Only float values are."""
    metrics, result = _full_int8(tmp_path, "buckets")
    assert metrics["mode"] == "full" and metrics["calibration_samples"] > 0
    assert result["passed"] is True, result


@pytest.mark.slow
def test_softmax_and_sigmoid_outputs_get_the_ranges_tflite_requires(tmp_path: Path) -> None:
    """TFLite's int8 SOFTMAX and LOGISTIC accept only scale 1/256 (zero point -128): a calibrated range fails the
    model at prepare ("output->params.scale not near 1.f / 256"), as YOLO's distribution head did."""
    _, result = _full_int8(tmp_path, "dfl")
    assert result["passed"] is True, result


@pytest.mark.slow
def test_values_through_transposes_and_zero_pads_keep_their_scale(tmp_path: Path) -> None:
    """TFLite's int8 TRANSPOSE and PAD keep one scale on both sides, and litert-torch's quantizer shares it through
    permute and view only: a vision encoder's patch tokens (flatten, transpose) and its stem's zero pad each got a
    second range, and the converter refused the model ("'tfl.transpose' op quantization parameters violate the
    same scale constraint"; GPT-NeoX's attention heads and RT-DETR's stem did the same)."""
    metrics, result = _full_int8(tmp_path, "patches")
    assert metrics["mode"] == "full" and metrics["calibration_samples"] > 0
    assert result["passed"] is True, result


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_expand_that_only_makes_a_broadcast_explicit_is_removed(tmp_path: Path, precision: str) -> None:
    """Separable attention multiplies its values by `context.expand_as(values)`, as MobileViTv2 does: litert-torch
    refused the pair ("'tfl.mul' op operands don't have broadcast-compatible shapes"; at int8 its file failed LiteRT's
    prepare at BROADCAST_TO), and converts the same multiply on the unexpanded context."""
    _needs_litert_torch()
    tiny = make_model(tmp_path / "p", "linear-attention")
    tiny.run("pt2-from-pytorch", tmp_path / "pt2")
    name = "tflite-from-pt2" if precision == "fp32" else "tflite-int8-from-pt2"
    metrics = tiny.run(name, tmp_path / "tflite", input_path=tmp_path / "pt2/model.pt2", precision=precision,
                       **({"mode": "full"} if precision == "int8" else {}))
    assert metrics["implicit_broadcasts"] == 1
    tiny.run("reference", tmp_path / "ref", extra={"source_format": "pytorch"})
    result = check(tiny, tmp_path / "check", "tflite" if precision == "fp32" else "tflite-int8",
                   tmp_path / "tflite/model.tflite", tmp_path / "ref/reference.npz", precision=precision)
    assert result["passed"] is True, result


def test_only_expands_whose_consumers_broadcast_to_the_same_result_are_removed() -> None:
    import torch

    from buildsys.formats.tflite.litert_passes import implicit_broadcasts

    class Expands(torch.nn.Module):
        def forward(self, v: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
            scaled = v * c.expand_as(v)  # removable: v * c broadcasts to v's shape
            wider = c + c.expand(2, 4, 3, 5)  # not: c + c is [2, 4, 3, 1]
            sliced = c.expand(-1, -1, -1, 5)[..., :2]  # not: a slice is no broadcasting op
            return scaled, wider, sliced

    v, c = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 1)
    module = torch.export.export(Expands(), (v, c)).module()
    expected = module(v, c)
    assert implicit_broadcasts(module) == ["expand_as"]
    assert [str(n.target._opname) for n in module.graph.nodes if "expand" in str(n.target)] == ["expand", "expand"]
    for got, want in zip(module(v, c), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_layout_ops_and_zero_pads_share_their_inputs_quantization() -> None:
    """The annotation itself: each transpose, reshape and zero pad after a quantized op shares that op's range; a
    pad of another value keeps its own, and what is already annotated is left as it is."""
    _needs_litert_torch()
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    from buildsys.formats.tflite.litert_passes import shared_through_layout_ops

    class Shapes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x).transpose(0, 1).reshape(3, -1)
            return torch.nn.functional.pad(y, [1, 1]) + torch.nn.functional.pad(y, [1, 1], value=9.0)

    graph = torch.export.export(Shapes(), (torch.randn(5, 4),)).module()
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.annotate(graph)
    shared = shared_through_layout_ops(graph)
    nodes = {n.name: n for n in graph.graph.nodes}
    assert [str(nodes[n].target._opname) for n in shared] == ["transpose", "reshape", "pad"]
    for name in shared:
        spec = nodes[name].meta[Q_ANNOTATION_KEY].output_qspec
        assert isinstance(spec, SharedQuantizationSpec) and spec.edge_or_node is nodes[name].args[0]
    assert shared_through_layout_ops(graph) == []  # annotated already


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "dynamic"])
def test_a_head_initialised_small_keeps_its_logits_under_int8(tmp_path: Path, mode: str) -> None:
    """litert-torch's PT2E config floors scales at 2^-12 as XNNPACK's does; logits of ~1e-4 keep their int8
    resolution at float32's epsilon (formats/torch/pt2e.finer_scales)."""
    _needs_litert_torch()
    tiny = make_model(tmp_path / "p", "small-head")
    tiny.run("pt2-from-pytorch", tmp_path / "pt2")
    tiny.run("tflite-int8-from-pt2", tmp_path / "tflite", input_path=tmp_path / "pt2/model.pt2", precision="int8",
             mode=mode)
    tiny.run("reference", tmp_path / "ref", extra={"source_format": "pytorch"})
    result = check(tiny, tmp_path / "check", "tflite-int8", tmp_path / "tflite/model.tflite",
                   tmp_path / "ref/reference.npz", precision="int8")
    assert result["passed"] is True and result["outputs"]["y"]["cosine"]["observed"] > 0.95, result


def test_the_op_table_holds_what_litert_torch_decomposes_before_lowering() -> None:
    """Op coverage orders routes by the converter's table: an op litert-torch decomposes itself (core ATen's table,
    which it runs before lowering) is one it converts, though no lowering is registered under its name."""
    _needs_litert_torch()
    from litert_torch.backend.lowerings import registry

    from buildsys.formats.tflite.litert_torch import lowering_ops

    lowered = {op.__name__.split(".")[0] for op in registry.global_registry.registered_ops}
    assert "native_group_norm" not in lowered and "native_group_norm" in lowering_ops()
    assert {"convolution", "addmm", "_softmax"} <= set(lowering_ops())


def test_full_int8_without_calibration_is_refused_at_plan_time(tmp_path: Path) -> None:
    from buildsys.formats import get_step

    tiny = make_model(tmp_path, "cnn", calibration=False)
    step = get_step("tflite-int8-from-pt2")
    problem = step.check_config(tiny.model, step.Options(), tmp_path)
    assert problem and "data.calibration" in problem
    assert step.check_config(tiny.model, step.Options(mode="dynamic"), tmp_path) is None


GRU = '''\
import torch


class Gru(torch.nn.Module):
    """A batch-first GRU over [B, frames, 9]: onnx2tf leaves TF list ops the TFLite converter rejects."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = torch.nn.GRU(9, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.head(y[:, -1])


def build():
    return Gru()
'''

DEPLOY = """\
models:
  m:
    source: {factory: gru:build}
    inputs: [{name: x, shape: [batch, 90, 9]}]
    outputs: [{name: y}]
    data: {validation: val.npz}
targets:
  t:
    model: m
    format: tflite
    ROUTING
"""


def _project(root: Path, routing: str, frames: int = 90) -> Path:
    """The GRU's project; `frames` shorter than the default where a build unrolls the GRU (its conversions grow
    with them, and nothing the test asserts depends on them), but never the GRU's width, 16: onnx2tf's layout
    guess then transposes the wrong axis, its routes miss the check (max_rel 0.99), and litert-torch's delivers."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "gru.py").write_text(GRU)
    np.savez(root / "val.npz", x=np.random.default_rng(0).standard_normal((8, frames, 9)).astype("float32"))
    (root / "deploy.yaml").write_text(textwrap.dedent(DEPLOY).replace("ROUTING", routing)
                                      .replace("[batch, 90, 9]", f"[batch, {frames}, 9]"))
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], check=False, cwd=root, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})


def test_litert_torch_leads_and_onnx2tf_follows(tmp_path: Path) -> None:
    """litert-torch's route is the default for a sequence input, declared NCL or not; onnx2tf's is the next."""
    plan = json.loads(_run(_project(tmp_path, "description: default routes"), "plan", "--json").stdout)
    assert plan["routes"]["t"] == LITERT and plan["candidate_routes"]["t"][:2] == [LITERT, ONNX2TF]
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(deploy.read_text().replace("shape: [batch, 90, 9]}", "shape: [batch, 90, 9], layout: NCL}"))
    plan = json.loads(_run(tmp_path, "plan", "--json").stdout)
    assert plan["candidate_routes"]["t"][:2] == [LITERT, ONNX2TF]


def test_via_pt2_pins_the_litert_torch_route(tmp_path: Path) -> None:
    plan = json.loads(_run(_project(tmp_path, "via: [pt2]"), "plan", "--json").stdout)
    assert plan["routes"]["t"] == LITERT and plan["candidate_routes"]["t"] == [LITERT]


@pytest.mark.slow
def test_onnx2tf_fails_and_the_build_takes_the_answers_before_litert_torch(tmp_path: Path) -> None:
    """onnx2tf's SavedModel of the GRU at a dynamic batch (`dynamic_batch`: at batch 1 its loop converts) holds
    TensorList ops the TFLite converter refuses. The refusal's answers come first, on the same route: the recurrent
    rewrite family (the GRU unrolled where the module is loaded), then onnx2tf's own RNN unrolling; the first
    delivers. (litert-torch's listed route is no candidate here: the target's saved_model options do not apply
    on it.)"""
    _needs_litert_torch()
    pytest.importorskip("onnx2tf")
    root = _project(tmp_path, "routes: [[onnx, saved_model], [pt2]]  # onnx2tf first, as listed\n"
                              "    options: {saved_model: {dynamic_batch: true}}", frames=20)
    proc = _run(root, "build")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rewritten = ["pytorch", "onnx (rewrite recurrent)", "saved_model", "tflite"]
    unrolled = ["pytorch", "onnx", "saved_model (switch onnx2tf rnn-unroll)", "tflite"]
    assert "t: made by pytorch → onnx (rewrite recurrent) → saved_model → tflite" in proc.stdout
    lock = Lock.read(root / "deploy.lock")
    assert lock.targets["t"]["route"] == rewritten and (root / "artifacts/t/model.tflite").is_file()
    [dropped] = lock.routes["t"]["dropped"]
    assert dropped["route"] == ONNX2TF and dropped["node"].startswith("m/")
    # litert-torch's route is listed by the target already: not an answer of its own
    assert dropped["rewrites"] == ["recurrent"] and dropped["answers"] == [unrolled]
    plan = json.loads(_run(root, "plan", "--json").stdout)
    assert plan["candidate_routes"]["t"] == [ONNX2TF, rewritten, unrolled] and plan["routes"]["t"] == rewritten
    again = _run(root, "build")
    assert again.returncode == 0 and "Nothing to do" in again.stdout
