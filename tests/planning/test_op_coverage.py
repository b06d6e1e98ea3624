"""Op coverage (docs/rewrites.md, "Op coverage"): `plan --ops` lists each model's ATen ops against what each
route's converter accepts (its own registry), routes whose converter lacks an op are not tried first (the
route with the rewrite that removes it is), a .pte whose operators have no kernel is refused at build time
naming the op, and the refusals that named no ATen op (ExecuTorch's, OpenVINO's) find their rewrite.

Models: the recommender (nn.EmbeddingBag) and the keyword spotter (torch.stft) of tests/rewrites/test_rewrite_routes.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tests.rewrites.test_rewrite_routes import Project


class CoveredProject(Project):
    """The rewrite routes' project, with op coverage on for its builds (tests/conftest.py turns it off)."""

    def run(self, *args: str):  # type: ignore[no-untyped-def]
        before = os.environ.get("MODELBUILD_OP_COVERAGE")
        os.environ["MODELBUILD_OP_COVERAGE"] = "1"
        try:
            return super().run(*args)
        finally:
            if before is None:
                os.environ.pop("MODELBUILD_OP_COVERAGE")
            else:
                os.environ["MODELBUILD_OP_COVERAGE"] = before


# An ExecuTorch build and three converter registries read, like tests/formats/executorch/test_executorch.py:
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("executorch") is None or importlib.util.find_spec("coremltools") is None,
                    reason="needs executorch and coremltools (pip install -c constraints.txt 'modelbuild[executorch,coreml]')")
def test_plan_lists_ops_and_coverage_and_the_working_route_goes_first(tmp_path: Path) -> None:
    project = CoveredProject(tmp_path, """\
      rec-et: {model: recsys, format: executorch}
      rec-ios: {model: recsys, format: coreml}
      raw-et: {model: recsys, format: executorch, rewrites: []}
      server: {model: spotter, format: onnx}
    """)
    before = project.run("plan")
    assert before.returncode == 0, before.stderr
    assert "recsys: ops not analysed yet (modelbuild plan --ops)" in before.stdout
    assert json.loads(project.run("plan", "--json").stdout)["candidate_routes"]["rec-et"][0] == \
        ["pytorch", "pt2", "executorch"]  # the cache knows nothing yet: the default order

    plan = json.loads(project.run("plan", "--ops", "--json").stdout)
    cov = plan["coverage"]
    assert "embedding_bag" in cov["models"]["recsys"]["ops"] and "_embedding_bag" in cov["models"]["recsys"]["core"]
    assert "stft" in cov["models"]["spotter"]["ops"]
    et = cov["targets"]["rec-et"]["steps"]["executorch-from-pt2"]
    assert et["table"] == "executorch" and et["lacks"] == ["_embedding_bag"]
    assert et["rewrites"] == {"_embedding_bag": ["scatter"]}  # the family, not its member
    assert cov["targets"]["rec-ios"]["steps"]["coreml-from-torchscript"]["lacks"] == ["embedding_bag"]
    # The legacy ONNX exporter has a symbolic for stft: its refusal (complex STFT) is one no table foresees.
    server = cov["targets"]["server"]["steps"]["onnx-from-pytorch"]
    assert server["table"] == "onnx-legacy" and server["lacks"] == []
    assert cov["targets"]["server"]["steps"]["pt2-from-pytorch"] == {"unknown": "no op registry is read for it"}
    routes = plan["candidate_routes"]
    assert routes["rec-et"] == [["pytorch", "pt2 (rewrite scatter)", "executorch"], ["pytorch", "pt2", "executorch"]]
    assert routes["rec-ios"][0] == ["pytorch", "torchscript (rewrite scatter)", "coreml"]
    assert ["pytorch", "torchscript", "coreml"] in routes["rec-ios"][1:]
    assert routes["raw-et"] == [["pytorch", "pt2", "executorch"]]  # rewrites: [] forbids the rewrite route
    assert routes["server"][0] == ["pytorch", "onnx"]  # nothing lacking: as before

    text = project.run("plan").stdout  # the cache now answers the plain plan too
    assert "rec-et: executorch-from-pt2 lacks _embedding_bag (rewrite scatter)" in text
    assert "first route pytorch → pt2 (rewrite scatter) → executorch" in text

    # The build takes the working route first: no node of rec-et fails. raw-et (no rewrites) is refused at
    # build time, the op named, instead of "error 0x14" when the check loads the .pte.
    proc = project.run("build", "-k", "-j", "1", "rec-et", "raw-et")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lock = project.lock()
    assert lock.targets["rec-et"]["route"] == ["pytorch", "pt2 (rewrite scatter)", "executorch"]
    assert project.check("rec-et")["verdict"] == "passed" and project.max_abs("rec-et") < 1e-5
    assert "rec-et" not in lock.routes  # nothing was dropped on its way
    [record] = lock.routes["raw-et"]["dropped"]
    assert record["node"].startswith("recsys/executorch")
    assert "aten::_embedding_bag.out has no kernel in the ExecuTorch runtime" in record["reason"]
    assert record["reason"].endswith("(rewrite scatter would remove what was refused; not tried: the target "
                                     "sets rewrites: [])")
    assert "verify:raw-et" not in lock.nodes or lock.nodes["verify:raw-et"].get("verdict") != "passed"


def test_order_routes_puts_the_rewrite_route_first_and_a_route_no_rewrite_saves_last() -> None:
    from buildsys.planning.ordering import order_routes
    from buildsys.planning.routes import Route

    routes = [Route.parse(["pytorch", "torchscript", "coreml"]), Route.parse(["pytorch", "pt2", "coreml"])]
    gaps = {"coremltools:exported": ["embedding_bag"], "coremltools:core": ["_embedding_bag"]}
    assert order_routes(routes, gaps, {}, auto_rewrites=True) == [
        Route.parse(["pytorch", "torchscript (rewrite scatter)", "coreml"]),
        Route.parse(["pytorch", "pt2 (rewrite scatter)", "coreml"]), *routes]  # the family that has embedding-bag
    assert order_routes(routes, gaps, {}, auto_rewrites=False) == routes  # both lack it: order kept
    only_trace = {"coremltools:exported": ["frobnicate"]}  # no rewrite removes it
    assert order_routes(routes, only_trace, {}, auto_rewrites=True) == routes[::-1]
    assert order_routes(routes, {}, {}, auto_rewrites=True) == routes
    # the target's options pin the loading stop's rewrites: no rewrite route is made there
    assert order_routes(routes, gaps, {"torchscript": {"rewrites": []}}, auto_rewrites=True) == [
        Route.parse(["pytorch", "pt2 (rewrite scatter)", "coreml"]), *routes]


def test_a_route_lacking_only_ops_pytorch_decomposes_is_tried_decomposed_before_those_that_cannot_work() -> None:
    from buildsys.planning.ordering import order_routes
    from buildsys.planning.routes import Route

    # an op PyTorch decomposes and no rewrite removes (grid_sampler_2d has the sampling family now, upsample_bicubic2d the resample family)
    server = [Route.parse(["pytorch", "onnx"]), Route.parse(["pytorch", "pt2", "onnx"])]
    lacks = {"onnx-legacy:traced": ["reflection_pad3d"], "onnx-dynamo:decomposed": ["reflection_pad3d"],
             "decomposable": ["reflection_pad3d", "linear"]}
    assert order_routes(server, lacks, {}, auto_rewrites=True) == [
        Route.parse(["pytorch", "onnx (decompose reflection_pad3d)"]),
        Route.parse(["pytorch", "pt2 (decompose reflection_pad3d)", "onnx"]), *server]
    # a route that can work stays first (the torch.export frontend reads the core ops, which lack nothing)
    ios = [Route.parse(["pytorch", "torchscript", "coreml"]), Route.parse(["pytorch", "pt2", "coreml"])]
    assert order_routes(ios, {"coremltools:exported": ["reflection_pad3d"], "decomposable": ["reflection_pad3d"]}, {},
                        auto_rewrites=True) == [ios[1], Route.parse(["pytorch", "torchscript (decompose reflection_pad3d)",
                                                                     "coreml"]), ios[0]]
    # an op no table decomposes gets no decomposition route
    assert order_routes(ios, {"coremltools:exported": ["frobnicate"], "decomposable": ["linear"]}, {},
                        auto_rewrites=True) == ios[::-1]
    # the target chose the loading stop's decompositions itself
    assert order_routes(server[:1], lacks, {"onnx": {"decompose": "core"}}, auto_rewrites=True) == server[:1]
    # where a family removes the op too, its rewrite goes first, in the route's place (the decomposition of
    # grid_sampler_2d does not reach a form litert-torch or onnx2tf take)
    sampled = {"onnx-legacy:traced": ["grid_sampler_2d"], "decomposable": ["grid_sampler_2d"]}
    assert order_routes(server[:1], sampled, {}, auto_rewrites=True)[0] == Route.parse(["pytorch", "onnx (rewrite sampling)"])


def test_missing_kernels_names_the_operator_and_overload() -> None:
    from buildsys.formats.executorch.contract import missing_kernels

    kernels = frozenset({"aten::arange.start_out", "aten::embedding.out"})
    assert missing_kernels([("aten::arange", "start_out"), ("aten::_embedding_bag", "out")], kernels) == \
        ["aten::_embedding_bag.out"]
    assert missing_kernels([("aten::embedding", "out")], kernels) == []


def test_the_onnx_exports_ops_let_openvinos_refusal_find_embedding_bag() -> None:
    """OpenVINO names ONNX ops only (ReduceSum-20, Slice-20): the ATen ops the ONNX export dispatched point at
    the rewrite, as the other refusals that name no op do."""
    from buildsys.formats.torch.rewritten import dispatched_ops
    from buildsys.planning.answers import refusal_rewrites
    from tests.helpers.rewrite_models import Recommender, recommender_inputs
    from tests.rewrites.test_rewrites_refusal import OPENVINO_BAG

    ops = dispatched_ops(Recommender().eval(), recommender_inputs())
    assert "aten::_embedding_bag" in ops
    assert refusal_rewrites(OPENVINO_BAG, ops) == ["scatter"]
    assert refusal_rewrites(OPENVINO_BAG) == []  # without the ops, as before


@pytest.mark.slow  # a Core ML build checked by the MIL reference
def test_a_build_says_while_it_analyses_ops(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The op analysis before a cold build is seconds of work: it is announced like a node, not silent."""
    pytest.importorskip("coremltools")
    from tests.conftest import tiny_deploy

    tiny.write(tiny_deploy("  ios: {model: tiny, format: coreml}\n"))  # coremltools' registry orders its routes
    monkeypatch.setenv("MODELBUILD_OP_COVERAGE", "1")
    proc = tiny.run("build", "--json", "-j", "1", "ios")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    analysis = [e for e in events if e.get("kind") == "analysis"]
    assert [(e["event"], e["node"]) for e in analysis] == [("started", "ops:tiny"), ("analysed", "ops:tiny")]
    assert analysis[0]["reasons"][0] == "op coverage: the ops of model 'tiny'" and analysis[1]["seconds"] > 0
    assert any("coreml" in r for r in analysis[0]["reasons"][1:])  # and the converter's table, read once
    assert events.index(analysis[1]) < next(i for i, e in enumerate(events) if e.get("kind") != "analysis")
    assert events[-1]["event"] == "summary" and events[-1]["ok"] is True
    # Cached: a no-op build has nothing to analyse or announce.
    again = [json.loads(line) for line in tiny.run("build", "--json", "ios").stdout.splitlines() if line.startswith("{")]
    assert not [e for e in again if e.get("kind") == "analysis"]


def test_a_kernel_that_runs_only_some_ranks_sends_a_3d_convolution_to_the_volumetric_route_first() -> None:
    """The ExecuTorch runtime registers a `convolution` kernel, so the core inventory's op name is covered, yet it
    runs 1-D and 2-D inputs only (`OpTable.ranks`): the probe records each op's input ranks, a rank-5 convolution
    lacks `conv3d`, and the route with `volumetric` (which removes it) is planned first, instead of a lowering that
    would convert and then be refused (tests/rewrites/test_rewrite_families_routes.py, analysis off, holds that)."""
    import torch

    from buildsys.formats.registry import op_tables
    from buildsys.formats.torch.rewritten import program_ops
    from buildsys.planning.coverage import Coverage
    from buildsys.planning.coverage_probe import input_ranks
    from buildsys.planning.ordering import order_routes
    from buildsys.planning.routes import Route

    clip = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    clip(torch.randn(1, 3, 4, 6, 6))
    # a 2-D convolution, then a 1-D one over the flattened rows
    frames = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(2), torch.nn.Conv1d(4, 4, 1, groups=4))
    inventories = {}
    for name, module, x in (("clip", clip, torch.randn(1, 3, 4, 6, 6)), ("frames", frames, torch.randn(1, 3, 6, 6))):
        with torch.no_grad():
            core = torch.export.export(module.eval(), (x,), strict=False).run_decompositions()
        inventories[name] = {"core": sorted({op.split(".")[1] for op in program_ops(core)}), "ranks": input_ranks(core)}
    assert inventories["clip"]["ranks"]["convolution"] == [5]
    assert inventories["frames"]["ranks"]["convolution"] == [3, 4]

    table = ("convolution", "view_copy", "addmm", "permute_copy", "t_copy", "squeeze_copy", "unsqueeze_copy")
    cov = Coverage(ops=inventories, tables={"executorch": list(table)})
    assert op_tables()["executorch"].ranks  # declared by the family, not by this test
    assert cov.lacks("clip", ("executorch", "core")) == ["conv3d"]
    assert cov.lacks("frames", ("executorch", "core")) == []
    routes = [Route.parse(["pytorch", "pt2", "executorch"])]
    gaps = cov.gaps()
    assert order_routes(routes, gaps["clip"], {}, auto_rewrites=True) == [
        Route.parse(["pytorch", "pt2 (rewrite volumetric)", "executorch"]), *routes]
    assert "frames" not in gaps


def test_the_probes_of_two_models_run_side_by_side_under_jobs(tmp_path: Path) -> None:
    """A build's op analysis runs up to `-j` probes at once (one torch.export per model, each in its own process):
    both models' probes start before either ends, each announced once, and both inventories are cached."""
    from buildsys.planning import coverage
    from buildsys.planning.project import open_project

    project = CoveredProject(tmp_path, "server: {model: spotter, format: onnx}\nrec: {model: recsys, format: onnx}\n")
    planner = open_project(str(project.root / "deploy.yaml")).planner
    events: list[tuple[str, str]] = []
    cov = coverage.analyse(planner, ["recsys", "spotter"], ["onnx-legacy"], jobs=2,
                           on_event=lambda e: events.append((e.event, e.node)))
    assert sorted(events[:2]) == [("started", "ops:recsys"), ("started", "ops:spotter")], events
    assert sorted(events[2:]) == [("analysed", "ops:recsys"), ("analysed", "ops:spotter")], events
    assert "stft" in cov.ops["spotter"]["exported"] and "onnx-legacy" in cov.tables
    assert cov.ops["recsys"]["ranks"]["_embedding_bag"] == [2]  # each core op's input ranks, as `OpTable.ranks` reads


def test_a_refused_dynamic_batch_puts_the_static_export_first_where_the_format_is_static_anyway() -> None:
    """The probe's `dynamic_refused` (torch.export refusing the dynamic axes) reaches the planner as a gap: an
    ExecuTorch route gets the static export just before it (a .pte has fixed shapes anyway); a .pt2 delivered with
    its dynamic axes, or a route loading by another step, keeps its place."""
    from buildsys.planning.ordering import order_routes
    from buildsys.planning.routes import Route

    et, pt2, onnx = (Route.parse(["pytorch", "pt2", "executorch"]), Route.parse(["pytorch", "pt2"]),
                     Route.parse(["pytorch", "onnx"]))
    gaps = {"dynamic-refused": ["torch.export failed: UserError: Constraints violated (batch)!"]}
    assert order_routes([et], gaps, {}, auto_rewrites=True) == [
        Route.parse(["pytorch", "pt2 (switch static export)", "executorch"]), et]
    assert order_routes([pt2, onnx], gaps, {}, auto_rewrites=True) == [pt2, onnx]
    assert order_routes([et], {}, {}, auto_rewrites=True) == [et]
