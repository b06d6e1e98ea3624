"""The coverage matrices (benchmarks/op_matrix.py, benchmarks/model_matrix.py): their op selection, op modules and
failure classes (fast), and a small sample of each run end to end through modelbuild (slow).

The end-to-end samples use what is installed for modelbuild alone: PyTorch's own op suite, and a transformers
model built from a small config (the other architectures' packages live outside the test environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.coverage import classify, environment, opcase, opdb, render, site_packages
from tests.conftest import REPO


def test_ops_no_inference_graph_holds_are_left_out_with_their_reason() -> None:
    chosen = opdb.select(per_op=1, only={"bernoulli", "item", "empty_like", "arange", "normal.in_place", "to_sparse",
                                         "_softmax_backward_data", "bitwise_and", "add", "max.reduction_with_dim"})
    assert chosen.left_out == {
        "bernoulli": "random", "item": "returns no tensor", "empty_like": "nondeterministic",
        "arange": "no float tensor input", "normal.in_place": "random", "to_sparse": "sparse tensor",
        "_softmax_backward_data": "backward op", "bitwise_and": "no float32 kernel on CPU"}
    assert sorted(c.op for c in chosen.cases) == ["add", "max.reduction_with_dim"]
    assert all(c.key == opdb.case_key(c.op, c.index) for c in chosen.cases)


def test_an_op_case_takes_the_float_tensors_and_bakes_the_rest() -> None:
    op = opcase.find_op("index_select")
    index, sample = next((i, s) for i, s in enumerate(opcase.samples(op)) if s.input.dim() == 2)
    module = opcase.case("index_select", index)
    (x,) = module.example_inputs()  # the index tensor is a buffer, not an input
    assert x.shape == (1, *sample.input.shape)
    (got,) = module(x)
    torch.testing.assert_close(got[0], torch.index_select(sample.input, *sample.args, **sample.kwargs))


def test_complex_and_integer_results_become_float32_outputs() -> None:
    fft = opcase.case("fft.fft", 0)
    (spectrum,) = fft(*fft.example_inputs())
    assert spectrum.dtype == torch.float32 and spectrum.shape[-1] == 2  # view_as_real
    reduction = opcase.case("max.reduction_with_dim", 0)
    values, indices = reduction(*reduction.example_inputs())
    assert values.dtype == indices.dtype == torch.float32


def test_case_names_start_with_a_letter_or_digit() -> None:
    assert opdb.case_key("__getitem__", 0) == "op-__getitem__-0"
    assert opdb.case_key("div.trunc_rounding", 2) == "div-trunc_rounding-2"


#: Reasons as modelbuild's build summaries gave them in the op matrix's first run.
SPEC = ("model 'addmv-0': lowering to ExecuTorch failed: SpecViolationError: Operator torch._ops.aten.addmv.default "
        "is not in Core ATen opset (https://pytorch.org/docs/stable/torch.compiler_ir.html#core-aten-ir).\" "
        "(step executorch-from-pt2)")
CDIST = ("model 'cdist-0': Core ML cannot convert the PyTorch op 'cdist' (coremltools has no conversion for it); "
         "rewrite that part of the model or register a custom conversion (step coreml-from-torchscript)")
STFT = ("rewrite 'complex' does not apply to torch.stft: it makes a complex tensor and no rewrite represents this "
        "function on real pairs")
SPLITV = ("model 'unsafe_split-0': TFLite has no builtin kernel for the TensorFlow op(s) SplitV; rewrite that part of "
          "the model, or set select_tf_ops: true (needs the Flex delegate in the app) (step tflite-from-saved-model)")
ORMQR = ("model 'ormqr-0': ONNX export failed: operator 'aten::ormqr' is not supported at opset 18 (try another "
         "opset, the other exporter (dynamo), or rewrite that part of the model) (step onnx-from-pytorch)")


def _cell(*routes: tuple[str, str]) -> dict[str, object]:
    return {"status": "failed", "reason": routes[0][1], "node": routes[0][0],
            "routes": [{"route": "", "node": node, "reason": reason} for node, reason in routes]}


TIMEOUT = "timed out after 120 s (raise it with --timeout)"


@pytest.mark.parametrize("cell, family, ops, expected", [
    (_cell(("addmv-0/executorch", SPEC)), "executorch", ["aten.addmv"], "decomposition"),
    (_cell(("ormqr-0/executorch", SPEC.replace("addmv.default", "ormqr.default"))), "executorch", ["aten.ormqr"],
     "kernel"),  # ExecuTorch wants core ATen, and PyTorch has no decomposition of ormqr
    (_cell(("cdist-0/coreml", CDIST)), "ios", ["aten._cdist_forward"], "family-cdist"),
    (_cell(("stft-0/onnx", STFT)), "server", ["aten.stft", "aten._fft_r2c"], "family-fft"),
    (_cell(("unsafe_split-0/tflite", SPLITV)), "android", ["aten.split_with_sizes"], "switch"),
    (_cell(("ormqr-0/onnx", ORMQR)), "server", ["aten.ormqr"], "kernel"),
    (_cell(("verify:clamp-0.ios", "out0: max_rel 1.9e+00 > 1.0e-04")), "ios", ["aten.clamp"], "numerics-fp32"),
    (_cell(("x/onnx", f"model 'x': {TIMEOUT}")), "server", [], "cost"),
    (_cell(("x/executorch-int8", "stopped: still running at its 5 min time budget (peak 2.88 GB), in "
                                 "torch/_ops.py:875 (__call__)")), "executorch-int8", [], "cost"),
    (_cell(("x/pt2", "model 'x': torch.export failed: Constraints violated (batch)!")), "executorch", [], "static"),
    (_cell(("x/saved_model", "model 'x': onnx2tf could not convert the ONNX op Expand (node /Expand): TypeError: "
                             "Cannot iterate over a Tensor with unknown first dimension.")), "android", [], "static"),
    (_cell(("yolo11n/saved_model", "model 'yolo11n': onnx2tf could not convert the ONNX op Mul (node /model.23/Mul_2): "
                                   "ValueError: Exception encountered")), "android", [], "switch"),
    # the class of the route a mechanism would make work, whichever route ran first
    (_cell(("cdist-0/coreml~1", TIMEOUT), ("cdist-0/coreml", CDIST)), "ios", ["aten._cdist_forward"], "family-cdist"),
    # an artifact that was built and missed its check is a numerics cell, whatever an earlier route refused
    (_cell(("x/pt2", "model 'x': torch.export failed: Constraints violated (batch)!"),
           ("verify:x.ios", "out0: max_rel 1.9e+00 > 1.0e-04")), "ios", [], "numerics-fp32"),
    ({"status": "no result", "reason": "modelbuild build exited 3 before reporting this target: …"}, "web", [], "bug"),
])
def test_failures_are_classed_by_the_mechanism_that_answers_them(cell: dict[str, object], family: str,
                                                                 ops: list[str], expected: str) -> None:
    decomposable = {"aten.addmv": ["aten.add", "aten.mul", "aten.mv"]}
    assert classify.classify(cell, family, case_ops=ops, decomposable=decomposable) == expected


def test_a_cell_a_single_converter_delivers_is_a_switch() -> None:
    cell = _cell(("linalg-inv-0/onnx", ORMQR.replace("ormqr", "linalg_inv")))
    assert classify.classify(cell, "intel", case_ops=["aten.linalg_inv"], single=["openvino-torch"]) == "switch"
    assert classify.classify(cell, "intel", case_ops=["aten.linalg_inv"]) == "kernel"


def test_an_int8_target_that_misses_its_tolerance_is_an_int8_miss() -> None:
    cell = _cell(("verify:m.android", "logits: top1_agreement 0.62 < 0.90"))
    assert classify.classify(cell, "android", precisions={"android": "int8"}) == "numerics-int8"


def test_a_missing_package_directory_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(site_packages.MissingSite,
                       match=r"(?s)lacks timm==1\.0\.31, ultralytics==8\.4\.190.*\n  pip install --no-deps --target "):
        site_packages.check(tmp_path)


def _run(script: str, tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--work", str(tmp_path / "work"),
                           "--out", str(out), "--doc", str(tmp_path / "coverage.md"), *args],
                          capture_output=True, text=True, timeout=2400, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "MODELBUILD_WORKER_MEMORY": "3G"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def test_the_page_says_which_commit_built_the_cells() -> None:
    one = {"cells": {"a": {"server": {"code": "abc1234"}}, "b": {"server": {"code": "abc1234"}}}}
    assert render.code_lines(one)[0] == "Every cell built on modelbuild commit `abc1234`."
    mixed = {"cells": {"a": {"server": {"code": "abc1234"}, "ios": {}}, "b": {"server": {"code": "def5678"}}}}
    assert render.code_lines(mixed)[0] == ("Cells by the modelbuild commit they were built on: `abc1234` 1, "
                                           "1 from before commits were recorded, `def5678` 1.")
    assert (environment.code_version() != "unknown") == (REPO / ".git").exists()


def test_the_page_says_which_verified_cells_compared_zeros() -> None:
    zero = {"status": "verified", "caveats": ["MIL reference, not Apple's runtime", "logits checked at zero"]}
    cells = {"seg": {"ios": zero, "server": {"status": "verified", "caveats": ["logits checked at zero"]}},
             "cnn": {"server": {"status": "verified"}, "ios": {"status": "failed", "caveats": ["y checked at zero"]}}}
    [_, line] = render.zero_lines(cells)
    assert line.startswith("Of the verified cells, 2 (`seg`) compared zeros")
    assert render.zero_lines({"cnn": cells["cnn"]}) == []


def test_a_fresh_rerun_of_the_mixed_project_reports_its_own_wall_time() -> None:
    cells = {"a": {"server": {"status": "verified", "code": "abc1234"}}}
    builds = [{"project": "chunk-1", "wall_s": 264.0}, {"project": "chunk-1", "wall_s": 304.0}]
    [line, *_] = render.mixed_lines({"cells": cells, "builds": builds, "node_seconds": {}})[2:]
    assert "1/1 verified in 304 s" in line


def test_size_and_latency_name_the_cells_over_their_limit_or_slower_than_eager() -> None:
    from benchmarks.coverage import render_perf

    def cell(asked: str, vs_ideal: float, ms: float | None, route: str = "pytorch → onnx") -> dict[str, object]:
        return {"status": "verified", "route": route, "caveats": ["route fallback"] if "int8" in asked else [],
                "measures": {"asked": asked, "vs_ideal": vs_ideal, "eager_ms": 1.0, **({"ms": ms} if ms else {})}}

    results = {"cells": {"a": {"server": cell("fp32", 1.02, 0.5), "android": cell("int8", 3.1, 0.25)},
                         "b": {"server": cell("fp32", 1.05, 2.0), "android": cell("int8", 1.1, None),
                               "ios": {"status": "failed"}}}}
    table = render_perf.family_rows(results, ["server", "android", "ios"])
    assert table[2] == "| server | 2/2 | 2 | 1.04× | 0 | 1.2× | 1/2 |"
    assert table[3] == "| android | 2/2 | 2 | 2.10× | 1 | 4.0× | 1/1 |"
    assert table[4] == "| ios | 0/1 | 0 | — | 0 | — | not timed |"
    worst = render_perf.worst_rows(results)
    assert worst[2].startswith("| a | android | int8 | 3.10× | 4.00× |") and worst[2].endswith("| route fallback |")
    assert worst[3].startswith("| b | server | fp32 | 1.05× | 0.50× |") and len(worst) == 4
    assert render_perf.perf_lines({"cells": {"a": {"server": {"status": "verified"}}}}, ["server"], "cmd") == []


@pytest.mark.slow
def test_op_matrix_sample_end_to_end(tmp_path: Path) -> None:
    results = _run("op_matrix.py", tmp_path, "--only", "abs", "--only", "addmv", "--per-op", "1",
                   "--targets", "server,executorch", "--converters", "onnx-dynamo,executorch", "--jobs", "1")
    cells, anchors = results["cells"], results["anchors"]
    assert set(cells) == {"abs-0", "addmv-0"}
    assert cells["abs-0"]["server"]["status"] == "verified" and cells["abs-0"]["server"]["route"] == "pytorch → onnx"
    assert cells["abs-0"]["executorch"]["status"] == "verified"
    # ExecuTorch refuses addmv; the refusal's decomposition answer (PyTorch's tables) delivers it, and the cell
    # keeps the refused route
    answered = cells["addmv-0"]["executorch"]
    assert answered["status"] == "verified", answered
    assert answered["route"] == "pytorch → pt2 (decompose addmv) → executorch"
    [refused] = answered["routes"]
    assert refused["node"] == "addmv-0/executorch" and "aten.addmv.default is not in Core ATen opset" in refused["reason"]
    assert anchors["abs-0"]["onnx-dynamo"]["status"] == "verified"
    assert set(anchors["addmv-0"]) == {"onnx-dynamo", "executorch"}
    assert results["node_seconds"]["abs-0"]["verify:abs-0.server"][0] == "built"
    doc = (tmp_path / "coverage.md").read_text()
    assert "| server | 2/2 | 100.0 % |" in doc and "| executorch | 2/2 | 100.0 % |" in doc
    # every cell says which modelbuild commit built it, and the page says so once for the table
    code = environment.code_version()
    assert {c["code"] for row in cells.values() for c in row.values()} == {code}
    assert f"Every cell built on modelbuild commit `{code}`." in doc


@pytest.mark.slow
def test_model_matrix_sample_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    results = _run("model_matrix.py", tmp_path, "--only", "hf-bert", "--targets", "server,executorch", "--jobs", "1")
    cells = results["cells"]["hf-bert"]
    assert {f: c["status"] for f, c in cells.items()} == {"server": "verified", "executorch": "verified"}
    assert cells["server"]["route"].startswith("pytorch → onnx")
    # what it weighs and how fast it runs, from the build's own summary (docs/coverage.md's size and latency)
    measures = cells["server"]["measures"]
    assert measures["bytes"] > 0 and measures["vs_ideal"] >= 1 and measures["ms"] > 0 and measures["eager_ms"] > 0
    nodes = results["node_seconds"]["hf-bert"]
    assert nodes["verify:hf-bert.server"][0] == "built" and all(s >= 0 for _, s in nodes.values())
    assert any((tmp_path / "work").glob("chunk-*/data/hf-bert-calibration.npz"))
    assert "| hf-bert | text-encoder | transformers |" in (tmp_path / "coverage.md").read_text()
