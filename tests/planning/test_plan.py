"""Planning without building: routes, shared nodes, and the plan-time errors for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from buildsys.config.load import load
from buildsys.planning.expand import expand
from buildsys.planning.routes import format_graph
from tests.conftest import REPO, TinyProject


def dag_for(project: TinyProject, *targets: str):
    return expand(load(project.config), list(targets) or None)


def test_routes_and_shared_nodes(tiny: TinyProject) -> None:
    dag = dag_for(tiny)
    assert dag.routes["int8"].words() == ["pytorch", "onnx", "onnx-int8"]
    assert dag.routes["ts"].words() == ["pytorch", "torchscript"]
    # server and int8 need the same ONNX export (same options): one node, not two
    assert [n for n in dag.nodes if n.startswith("tiny/onnx")] == ["tiny/onnx", "tiny/onnx-int8"]
    assert dag.nodes["verify:int8"].deps == ["tiny/onnx-int8", "tiny/reference"]
    assert dag.target_nodes == {"ts": "tiny/torchscript", "server": "tiny/onnx", "int8": "tiny/onnx-int8"}


def test_only_requested_targets_are_expanded(tiny: TinyProject) -> None:
    dag = dag_for(tiny, "ts")
    assert set(dag.nodes) == {"tiny/torchscript", "tiny/reference", "verify:ts"}


def test_different_options_make_different_nodes(tiny: TinyProject) -> None:
    tiny.edit("      onnx: {opset: 18}\n      onnx-int8", "      onnx: {opset: 17}\n      onnx-int8")
    names = sorted(n for n in dag_for(tiny).nodes if n.startswith("tiny/onnx~"))
    assert len(names) == 2  # two variants of the ONNX export, each named by its options digest


def test_via_overrides_the_route(tiny: TinyProject) -> None:
    tiny.edit("    format: onnx\n    options:\n      onnx: {opset: 18}\n  int8",
              "    format: onnx\n    via: [torchscript]\n  int8")
    dag = dag_for(tiny, "server")
    assert dag.routes["server"].words() == ["pytorch", "torchscript", "onnx"]
    assert dag.nodes[dag.target_nodes["server"]].deps == ["tiny/torchscript"]


def test_every_step_declares_a_registered_format() -> None:
    g = format_graph()
    assert "onnx" in g and g.has_edge("pytorch", "torchscript") and g.has_edge("onnx", "onnx-int8")


def test_precision_is_a_field_of_the_format_not_of_its_name() -> None:
    from buildsys.formats import formats, steps
    from buildsys.formats.precision import format_name

    for name, fmt in formats().items():
        assert format_name(fmt.family, fmt.precision) == name, name
    for name, step in steps().items():
        assert step.precision == formats()[step.produces].precision, name
    # One class body serves the Triton ONNX layouts of every precision, and Core ML's fp32 and fp16.
    bodies = {steps()[n].__mro__[1] for n in ("triton-from-onnx", "triton-fp16-from-onnx-fp16",
                                             "triton-int8-from-onnx-int8")}
    assert len(bodies) == 1 and {f.precision for f in formats().values() if f.family == "triton"} == \
        {"fp32", "fp16", "int8"}
    assert steps()["coreml-fp16-from-torchscript"]().compute == "float16"
    assert steps()["coreml-from-torchscript"]().compute == "float32"


def test_a_format_named_with_its_precision_is_judged_at_that_precision(tiny: TinyProject) -> None:
    tiny.edit("    format: onnx\n    precision: int8\n", "    format: onnx-int8\n")
    dag = dag_for(tiny, "int8")
    check = dag.nodes["verify:int8"]
    assert check.precision == "int8" and dag.nodes["tiny/onnx-int8"].precision == "int8"
    assert dag.nodes["tiny/onnx"].precision == "fp32"
    # The int8 defaults, not the fp32 ones (a cosine floor of 0.99 instead of 0.9999).
    assert check.options["outputs"]["y"]["min_cosine"] < 0.999


def test_a_precision_that_contradicts_the_format_is_an_error(tiny: TinyProject) -> None:
    tiny.edit("    format: onnx\n    precision: int8\n", "    format: onnx-int8\n    precision: fp32\n")
    with pytest.raises(Exception, match=r"format 'onnx-int8' is int8, but the target says precision: fp32"):
        dag_for(tiny, "int8")


@pytest.mark.parametrize("edit, message", [
    (("format: torchscript", "format: tflte"), r"deploy\.yaml:\d+: targets\.ts\.format: unknown format 'tflte'"),
    (("model: tiny\n    format: torchscript", "model: tinny\n    format: torchscript"),
     r"targets\.ts\.model: unknown model 'tinny' — did you mean 'tiny'\?"),
    (("format: torchscript", "format: torchscript\n    precision: int8"),
     r"targets\.ts\.precision: format 'torchscript' has no int8 variant \(int8 exists for: .*onnx"),
    (("format: torchscript", "format: onnx-file"), r"target 'ts': no route from pytorch to onnx-file"),
    (("format: torchscript", "format: onnx\n    via: [onnx, onnx]"), r"visits onnx twice \(a cycle\)"),
    ((("onnx-int8: {method: dynamic}", "onnx-int8: {method: static}"), ("      calibration: calib.npz\n", "")),
     r"deploy\.yaml:\d+: targets\.int8 \(onnx-int8\): .*static.* needs calibration data"),
    (("onnx-int8: {method: dynamic}", "onnx-int8: {methd: static}"),
     r"targets\.int8\.options\.onnx-int8: unknown option 'methd' for step onnx-int8-from-onnx — did you mean 'method'\?"),
    # torchscript is on one of an onnx target's fallback routes (pytorch → torchscript → onnx); coreml on none
    (("onnx: {opset: 18}\n  int8", "onnx: {opset: 18}\n      coreml: {compute_units: ALL}\n  int8"),
     r"targets\.server\.options: options given for 'coreml', which is not on this target's route"),
    (("format: torchscript", "format: torchscript\n    acceptance: {outputs: {z: {max_abs: 0.1}}}"),
     r"deploy\.yaml:\d+: targets\.ts\.acceptance\.outputs: '?z'?,? which is not an output of the model .*did you mean 'y'|outputs: y"),
    (("weights: tiny.pt", "weights: missing.pt"),
     r"deploy\.yaml:5: models\.tiny\.source\.weights: file 'missing.pt' does not exist"),
    (("factory: tinynet:build", "factory: tinynett:build"), r"models\.tiny\.source\.factory: factory module 'tinynett' not found"),
    (("factory: tinynet:build", "factory: tinynet:biuld"), r"module 'tinynet' \(tinynet\.py\) defines no 'biuld'"),
    (("validation: val.npz", "validation: nope.npz"), r"models\.tiny\.data\.validation: file 'nope.npz' does not exist"),
    (("shape: [batch, 4]", "shape: [batch, 5]"),
     r"models\.tiny\.data\.validation: val\.npz: 'x' has shape \[48, 4\] but the model declares \['batch', 5\] \(axis 1: 4 ≠ 5\)"),
])
def test_bad_input_is_one_clear_line(tiny: TinyProject, edit: tuple, message: str) -> None:
    for old, new in edit if isinstance(edit[0], tuple) else [edit]:
        tiny.edit(old, new)
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tiny.root / "deploy.lock").exists() and not (tiny.root / "artifacts").exists()


def test_unknown_target_on_the_command_line(tiny: TinyProject) -> None:
    proc = tiny.run("build", "sevrer", check=False)
    assert proc.returncode == 2 and "unknown target 'sevrer' — did you mean 'server'?" in proc.stderr


def test_missing_deploy_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from buildsys.cli.main import cli

    result = CliRunner().invoke(cli, ["-f", str(tmp_path / "deploy.yaml"), "plan"])
    assert result.exit_code == 2
    assert "deploy.yaml does not exist" in result.output


def test_deploy_reference_doc_is_in_sync() -> None:
    from buildsys.config.reference import render

    assert (REPO / "docs" / "deploy-yaml.md").read_text() == render(), "run: modelbuild schema --markdown > docs/deploy-yaml.md"


def test_example_plan_ios_android_shares_nodes() -> None:
    dag = expand(load(REPO / "deploy.yaml.example"), ["ios", "android"])
    # ios-pruned's coreml-fp16 (sparsity 0.5) is another variant of the format: each one's name holds its identity
    assert sorted(re.sub(r"~[0-9a-f]{6}$", "~", n) for n in dag.nodes) == [
        "digits/coreml-fp16~", "digits/pt2", "digits/reference", "digits/tflite-int8",
        "digits/torchscript", "verify:android", "verify:ios"]
    assert dag.routes["android"].words() == ["pytorch", "pt2", "tflite-int8"]
    assert dag.routes["ios"].words() == ["pytorch", "torchscript", "coreml-fp16"]
    # one reference for both checks; the .pt2 node is the one the ExecuTorch targets use too
    assert dag.nodes["verify:ios"].deps[1] == dag.nodes["verify:android"].deps[1] == "digits/reference"
    full = expand(load(REPO / "deploy.yaml.example"))
    assert full.nodes["digits/tflite-int8"].deps == ["digits/pt2"] == full.nodes["digits/executorch-int8"].deps


def test_node_names_do_not_depend_on_the_selection(tiny: TinyProject) -> None:
    tiny.edit("      onnx: {opset: 18}\n      onnx-int8", "      onnx: {opset: 17}\n      onnx-int8")
    alone = set(dag_for(tiny, "server").nodes)
    everything = set(dag_for(tiny).nodes)
    assert alone <= everything and any("~" in n for n in alone)


@pytest.mark.parametrize("edit, message", [
    (("shape: [batch, 4]}", "shape: [batch, 4, 4, 3], layout: NHWC}"),
     r"targets\.droid \(saved_model\): input 'x' is declared NHWC, but onnx2tf reads axis 1 .* channels-first \(NCHW\)"),
    (("format: tflite", "format: tflite\n    options: {saved_model: {keep_layout: true}}"),
     r"keep_layout: onnx2tf keeps the layout of 3-D to 5-D inputs only, and this model has none \(x \['batch', 4\]\)"),
])
def test_layouts_the_converter_cannot_honour(tiny: TinyProject, edit: tuple[str, str], message: str) -> None:
    import re

    tiny.config.write_text(tiny.config.read_text() + "  droid:\n    model: tiny\n    format: tflite\n"
                           "    via: [saved_model]\n")  # the onnx2tf route (litert-torch's keeps any layout)
    tiny.edit(*edit)
    proc = tiny.run("plan", "droid", check=False)
    assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr
