"""The lowering answers end to end through the `modelbuild` CLI (docs/lowering.md): each model of
tests/helpers/lowering_models.py is refused by a converter as written; the step's classifier (`Step.answers`) reads
the real refusal and picks its answer; the planner records it in deploy.lock beside the refused route and takes the
answered route next, in the same build, which converts and passes its numeric check against the original PyTorch
model. A second build is a no-op: the answer is found again from the lock alone.

- decomposition: grid_sample, refused by coremltools' torch.export frontend, decomposed by PyTorch's tables;
- static re-export: a per-sample loop whose dynamic batch torch.export refuses, exported at static shapes for
  ExecuTorch (a .pte is static anyway), while the .pt2 delivered dynamic still fails naming the constraint;
- data-dependent values: a chunked attention whose window count is read from its mask, exported with the example's
  value (asserted in the .pt2, written in for ExecuTorch, litert-torch and OpenVINO's PyTorch frontend);
- converter switches: onnx2tf's RNN unrolling answers TensorList ops TFLite refuses (a Conv1d+GRU model now converts
  as a loop at batch 1, first), Core ML at
  fixed shapes for a model whose symbolic batch coremltools cannot convert, and litert-torch with the model's
  generated constants stored, for an attention mask built with torch.eye (an iota LiteRT has no kernel for).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.formats import steps
from buildsys.storage.lock import Lock
from tests.conftest import TESTS

HELPERS = TESTS / "helpers" / "lowering_models.py"

pytestmark = pytest.mark.slow


class Project:
    """A project in `root` whose models are the helper's factories."""

    def __init__(self, root: Path, deploy: str) -> None:
        self.root = root
        shutil.copy(HELPERS, root / "lowering_models.py")
        (root / "deploy.yaml").write_text(textwrap.dedent(deploy))

    def build(self, *targets: str, analysis: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """Run `build -k --json` of `targets`: its exit status and its events. The op analysis is off unless
        `analysis`: these tests show the answers to refusals, which the analysis may foresee."""
        proc = subprocess.run([sys.executable, "-m", "buildsys", "build", "-k", "-j", "1", "--json", *targets],
                              cwd=self.root, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "MODELBUILD_OP_COVERAGE": "1" if analysis else "0"})
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert events, proc.stdout + proc.stderr
        return proc.returncode, events

    def lock(self) -> Lock:
        return Lock.read(self.root / "deploy.lock")

    def verdict(self, target: str) -> str:
        return str(self.lock().nodes[f"verify:{target}"]["verdict"])


def refusal(events: list[dict[str, Any]], node: str) -> str:
    """The error text a failed node reported (what deploy.lock keeps and the planner classifies)."""
    [text] = [e["error"] for e in events if e.get("event") == "failed" and e["node"].split("~")[0] == node]
    return str(text)


def summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e.get("event") == "summary")["targets"]


def test_a_decomposition_makes_grid_sample_convert_to_core_ml(tmp_path: Path) -> None:
    from buildsys.lowering.decompose import decomposable_ops

    project = Project(tmp_path, """\
        models:
          warp:
            source: {factory: lowering_models:warp}
            inputs: [{name: image, shape: [batch, 3, 16, 16], layout: NCHW}]
            outputs: [{name: features}]
        targets:
          ios: {model: warp, format: coreml, via: [pt2], rewrites: []}
        """)
    status, events = project.build("ios")
    assert status == 0, summary(events)
    text = refusal(events, "warp/coreml")
    assert "Unsupported fx node grid_sampler_2d" in text
    answers = steps()["coreml-from-pt2"].answers(text, decomposable=decomposable_ops())
    assert [a.label for a in answers] == ["decompose grid_sampler_2d", "decompose core"]
    assert answers[0].at == "loading" and answers[0].values == {"decompose": ["grid_sampler_2d"]}
    [record] = project.lock().routes["ios"]["dropped"]
    assert record["answers"] == [["pytorch", "pt2 (decompose grid_sampler_2d)", "coreml"],
                                 ["pytorch", "pt2 (decompose core)", "coreml"]]
    assert summary(events)["ios"]["route"] == record["answers"][0]
    assert project.verdict("ios") == "passed"  # the MIL reference against the original model's outputs
    nodes = project.lock().nodes
    [loading] = [n for n in nodes if n.startswith("warp/pt2") and "decompose" in nodes[n]["components"]["options"]]
    assert nodes[loading]["components"]["options"]["decompose"] == ["grid_sampler_2d"]
    facts = nodes[loading]["facts"]["decomposition"]  # what became of the composite op that held grid_sampler_2d
    assert facts["decompose"] == ["grid_sampler_2d"] and "index" in facts["decomposed"]["grid_sampler"]
    status, events = project.build("ios")  # the answer read back from the lock: nothing to do
    assert status == 0 and not [e for e in events if e.get("event") == "started"]


#: A per-sample loop whose dynamic batch torch.export refuses, to a .pt2 delivered dynamic and to ExecuTorch.
SCORER = """\
    models:
      scorer:
        source: {factory: lowering_models:per_sample}
        inputs: [{name: x, shape: [batch, 6]}]
        outputs: [{name: scores}]
    targets:
      program: {model: scorer, format: pt2}
      phone: {model: scorer, format: executorch}
    """


def test_a_static_reexport_lets_executorch_take_a_model_whose_dynamic_batch_torch_export_refuses(tmp_path: Path) -> None:
    project = Project(tmp_path, SCORER)
    status, events = project.build("program")
    assert status == 1  # a .pt2 delivered with its dynamic axes has no static answer: it names the constraint
    text = refusal(events, "scorer/pt2")
    assert "Constraints violated (batch)" in text
    [answer] = steps()["pt2-from-pytorch"].answers(text)
    assert answer.label == "static export" and answer.static_only and answer.values == {"static_fallback": True}
    assert steps()["executorch-from-pt2"].makes_static() and not steps()["onnx-from-pt2"].makes_static()

    status, events = project.build("phone")
    assert status == 0, summary(events)
    assert project.verdict("phone") == "passed"
    assert summary(events)["phone"]["route"] == ["pytorch", "pt2 (switch static export)", "executorch"]
    caveats = [c for c in summary(events)["phone"]["caveats"] if c["kind"] == "fallback" and "static" in c["what"]]
    assert [c["what"] for c in caveats] == ["exported at static shapes: x [1, 6]"]
    assert "Constraints violated (batch)" in caveats[0]["why"]


def test_the_op_analysis_foresees_the_refused_dynamic_batch_and_nothing_fails(tmp_path: Path) -> None:
    """With the op analysis on, its probe exports the model's dynamic axes as the loading steps do and records
    torch.export's refusal (`dynamic_refused`): the ExecuTorch target's first route is the static export, so no node
    fails on the way (above, without the analysis, the dynamic export fails first)."""
    project = Project(tmp_path, SCORER)
    status, events = project.build("phone", analysis=True)
    assert status == 0, summary(events)
    assert [e["node"] for e in events if e.get("event") == "analysed"] == ["ops:scorer"]
    assert not [e for e in events if e.get("event") == "failed"], summary(events)
    assert summary(events)["phone"]["route"] == ["pytorch", "pt2 (switch static export)", "executorch"]
    assert project.verdict("phone") == "passed" and "phone" not in project.lock().routes  # nothing dropped


def test_a_model_that_loops_on_a_value_read_from_its_data_reaches_pt2_executorch_and_litert_torch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("calibration", "validation"):  # attention masks of ones: the window count is the same for every sample
        np.savez(tmp_path / f"{name}.npz", features=rng.standard_normal((8, 16, 8)).astype(np.float32),
                 mask=np.ones((8, 16), np.int64))
    project = Project(tmp_path, """\
        models:
          chunked:
            source: {factory: lowering_models:chunked_attention}
            inputs: [{name: features, shape: [batch, 16, 8]}, {name: mask, shape: [batch, 16], dtype: int64}]
            outputs: [{name: scores}]
            data: {calibration: calibration.npz, validation: validation.npz, example: validation.npz}
        targets:
          program: {model: chunked, format: pt2}
          phone: {model: chunked, format: executorch}
          android: {model: chunked, format: tflite, via: [pt2]}
          intel: {model: chunked, format: openvino, via: [pt2]}
        """)
    status, events = project.build()
    assert status == 0, summary(events)
    assert summary(events)["intel"]["route"] == ["pytorch", "pt2", "openvino"]  # OpenVINO's PyTorch frontend
    for target in ("program", "phone", "android", "intel"):
        assert project.verdict(target) == "passed"
        assert "data-dependent values taken from the example: Eq(u0, 16)" in [
            c["what"] for c in summary(events)[target]["caveats"]], target


def test_a_gru_reaches_tflite_as_a_loop_and_unrolled_where_its_batch_stays_dynamic(tmp_path: Path) -> None:
    """onnx2tf writes a GRU as a TensorFlow while loop, whose TensorList ops TFLite's converter lowers only at a
    static batch: the SavedModel's signature fixes it at 1 (as for the fused LSTM), the loop is one WHILE and the
    first route passes. A target that keeps the batch dynamic (`dynamic_batch`) meets the converter's refusal,
    which the classifier answers with onnx2tf's RNN unrolling."""
    from ai_edge_litert.interpreter import Interpreter

    project = Project(tmp_path, """\
        models:
          har:
            source: {factory: lowering_models:gru_har}
            inputs: [{name: window, shape: [batch, 9, 20], layout: NCL}]  # 20 frames: the unrolled graph grows with them
            outputs: [{name: logits, kind: scores}]
        targets:
          android: {model: har, format: tflite, routes: [[onnx, saved_model]]}
          any-batch: {model: har, format: tflite, routes: [[onnx, saved_model]],
                      options: {saved_model: {dynamic_batch: true}}}
        """)
    status, events = project.build("android", "any-batch")
    assert status == 0, summary(events)
    lock = project.lock()
    assert "android" not in lock.routes and project.verdict("android") == "passed"  # the first route, verified
    ops = [d["op_name"] for d in Interpreter(model_path=str(tmp_path / "artifacts/android/model.tflite"))._get_ops_details()]
    assert "WHILE" in ops and len(ops) < 30, ops  # the main graph: the loop's body is a subgraph of its own
    [upstream] = lock.nodes[lock.targets["android"]["node"]]["components"]["inputs"]
    assert lock.nodes[upstream.removeprefix("upstream ")]["metrics"]["static_batch"] == 1

    text = refusal(events, "har/tflite")
    assert "tf.TensorListReserve" in text
    first, second = steps()["tflite-from-saved-model"].answers(text)
    assert (first.label, first.at, first.values) == ("onnx2tf rnn-unroll", "saved_model", {"enable_rnn_unroll": True})
    assert (second.label, second.via) == ("litert-torch", ("pt2",))  # another route: not for a target that lists its own
    [record] = lock.routes["any-batch"]["dropped"]
    assert record["answers"] == [["pytorch", "onnx", "saved_model (switch onnx2tf rnn-unroll)", "tflite"]]
    assert project.verdict("any-batch") == "passed"  # LiteRT against the GRU in PyTorch


def test_tflite_stores_the_generated_constant_whose_op_litert_cannot_run(tmp_path: Path) -> None:
    """litert-torch lowers torch.eye to StableHLO's iota, which LiteRT's runtime has no kernel for: the file cannot be
    prepared. The values never depend on the input, so the answer stores them (fold_constants)."""
    project = Project(tmp_path, """\
        models:
          mixer:
            source: {factory: lowering_models:masked_mixer}
            inputs: [{name: tokens, shape: [batch, 8, 16]}]
            outputs: [{name: logits}]
        targets:
          android: {model: mixer, format: tflite, routes: [[pt2]], rewrites: []}
        """)
    status, events = project.build("android")
    assert status == 0, summary(events)
    text = refusal(events, "mixer/tflite")
    assert "Didn't find op for builtin opcode 'STABLEHLO_IOTA'" in text
    first, *_ = steps()["tflite-from-pt2"].answers(text)
    assert (first.label, first.at, first.values) == ("litert constants folded", "step", {"fold_constants": True})
    assert summary(events)["android"]["route"] == ["pytorch", "pt2", "tflite (switch litert constants folded)"]
    assert project.verdict("android") == "passed"  # LiteRT against the model in PyTorch


def test_core_ml_at_fixed_shapes_converts_what_its_symbolic_batch_refused(tmp_path: Path) -> None:
    project = Project(tmp_path, """\
        models:
          grid:
            source: {factory: lowering_models:pooled_grid}
            inputs: [{name: image, shape: [batch, 1, 12, 12]}]
            outputs: [{name: logits}]
        targets:
          ios: {model: grid, format: coreml, routes: [[]], rewrites: []}
        """)
    status, events = project.build("ios")
    assert status == 0, summary(events)
    text = refusal(events, "grid/coreml")
    assert "only supported when input tensor size is known" in text and "(is" in text  # the batch's symbol
    [answer] = steps()["coreml-from-torchscript"].answers(text)
    assert (answer.label, answer.at, answer.values) == ("coreml static shapes", "step", {"static_shapes": True})
    assert summary(events)["ios"]["route"] == ["pytorch", "torchscript", "coreml (switch coreml static shapes)"]
    assert project.verdict("ios") == "passed"  # one sample per call through the MIL reference


def test_core_ml_keeps_the_dynamic_batch_of_a_group_norm(tmp_path: Path) -> None:
    """A wav2vec2-style front end (GroupNorm over time): coremltools wrote the batch's symbol into a constant shape
    ("Cannot add const [is…]") and the static-shape switch answered it; its group norm is now translated with the
    batch read at run time, so the first route converts it and the batch stays dynamic."""
    project = Project(tmp_path, """\
        models:
          audio:
            source: {factory: lowering_models:audio_frontend}
            inputs: [{name: audio, shape: [batch, 400]}]
            outputs: [{name: logits}]
        targets:
          ios: {model: audio, format: coreml, routes: [[]], rewrites: []}
        """)
    status, events = project.build("ios")
    assert status == 0, summary(events)
    assert not [e for e in events if e.get("event") == "failed"]
    assert summary(events)["ios"]["route"] == ["pytorch", "torchscript", "coreml"]
    assert project.verdict("ios") == "passed"


def test_an_int8_route_through_the_core_decomposition_keeps_its_linear_layers_quantized(tmp_path: Path) -> None:
    """The whole-program decomposition (an answer to many refusals) used to turn every linear layer into addmm, which
    XNNPACK's quantizer does not annotate: the .pte kept them float and min_quantized_share refused it. Linear
    layers with a parameter weight now stay linear and are quantized; the one whose weight the model computes is
    decomposed, as Core ML's linear needs (the ios target through the same decomposition)."""
    project = Project(tmp_path, """\
        models:
          head:
            source: {factory: lowering_models:normed_head}
            inputs: [{name: tokens, shape: [batch, 5, 32]}]
            outputs: [{name: scores}]
            data: {calibration: calibration.npz}
        targets:
          edge: {model: head, format: executorch, precision: int8, routes: [[pt2]], repair: false,
                 options: {pt2: {decompose: core}}}
          ios: {model: head, format: coreml, routes: [[pt2]], options: {pt2: {decompose: core}}}
        """)
    np.savez(tmp_path / "calibration.npz", tokens=np.random.default_rng(0).standard_normal((16, 5, 32), np.float32))
    status, events = project.build("edge", "ios")
    assert status == 0, summary(events)
    assert project.verdict("edge") == "passed" and project.verdict("ios") == "passed"
    nodes = project.lock().nodes
    [loading] = [n for n in nodes if n.startswith("head/pt2")]
    assert nodes[loading]["facts"]["decomposition"]["linear_kept"] == 2
    [int8] = [n for n in nodes if n.startswith("head/executorch-int8")]
    linear = nodes[int8]["facts"]["quantized_weights"]["by_kind"]["linear"]
    assert linear["layers"] == 2 and linear["share"] == 1.0, linear
