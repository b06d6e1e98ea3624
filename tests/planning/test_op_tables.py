"""The ONNX exporters' op tables (docs/rewrites.md, "Op coverage"): the dynamo exporter's torchlib registry and
the TorchScript exporter's symbolic registry, read for real and held to the real exporters' behaviour, and a
model with an op the legacy exporter lacks (torch.sinh) planned through the dynamo exporter first.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("onnxscript")

#: Linear then sinh: torch.onnx's TorchScript exporter has no symbolic for aten::sinh; the dynamo one has.
WAVE = '''\
import torch
from torch import nn


class Wave(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.sinh(self.fc(x))


def build():
    return Wave()
'''

DEPLOY = """\
models:
  wave:
    source: {factory: wave:build}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y}]
targets:
  server: {model: wave, format: onnx}
  legacy: {model: wave, format: onnx, routes: [[]]}
"""


def _legacy_export(module: object, args: tuple) -> str:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(module, args, io.BytesIO(), dynamo=False, opset_version=18)
        except Exception as exc:  # noqa: BLE001 - what the exporter says is the point
            return f"{type(exc).__name__}: {exc}"
    return "ok"


def _dynamo_export(module: object, args: tuple) -> str:
    import torch

    try:
        torch.onnx.export(module, args, dynamo=True, opset_version=18, verbose=False)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_the_onnx_tables_are_the_exporters_registries_and_agree_with_the_exporters() -> None:
    import torch

    from buildsys.formats.registry import op_tables

    dynamo, legacy = op_tables()["onnx-dynamo"].read(), op_tables()["onnx-legacy"].read()
    assert len(dynamo) > 300 and len(legacy) > 300
    assert {"conv2d", "linear", "_native_batch_norm_legit_no_training", "sinh"} <= set(dynamo)
    assert {"_convolution", "linear", "batch_norm", "embedding_bag", "stft"} <= set(legacy)
    assert "sinh" not in legacy and "_linalg_eigh" not in dynamo and "linalg_eigh" not in legacy

    # What each table lacks, the real exporter refuses; what it has, the exporter converts.
    namespace: dict = {}
    exec(WAVE, namespace)
    wave, x = namespace["build"]().eval(), (torch.randn(2, 4),)
    assert "Exporting the operator 'aten::sinh' to ONNX opset version 18 is not supported" in _legacy_export(wave, x)
    assert _dynamo_export(wave, x) == "ok"

    class Eigh(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigh(x.T @ x)[0]

    assert "aten._linalg_eigh" in _dynamo_export(Eigh().eval(), (torch.randn(4, 4),))
    assert "aten::linalg_eigh" in _legacy_export(Eigh().eval(), (torch.randn(4, 4),))


def test_the_probe_records_the_trace_the_legacy_exporter_reads_and_each_ops_decomposition() -> None:
    """The TorchScript exporter looks up `_convolution` and `batch_norm` in its trace, where the decomposed graph
    says `convolution` and `_native_batch_norm_legit_no_training` (which it has no symbolic for): each table
    is read against the inventory its exporter sees."""
    import torch

    from buildsys.planning.coverage import Coverage
    from buildsys.formats.registry import op_tables
    from buildsys.planning.coverage_probe import decompositions, traced_ops
    from buildsys.formats.torch.rewritten import program_ops

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
    args = (torch.randn(2, 1, 8, 8),)
    with torch.no_grad():  # as the probe exports
        program = torch.export.export(model, args, strict=False)
        core = program.run_decompositions()
    base = lambda ops: sorted({op.split(".")[1] for op in ops})  # noqa: E731
    inventory = {"exported": base(program_ops(program)), "core": base(program_ops(core)),
                 "decomposed": decompositions(program, core), "traced": traced_ops(model, args)}
    assert "_native_batch_norm_legit_no_training" in inventory["core"]
    assert {"batch_norm", "_convolution", "linear"} <= set(inventory["traced"])
    assert inventory["decomposed"]["linear"] == ["addmm", "permute"]
    assert inventory["decomposed"]["batch_norm"] == ["_native_batch_norm_legit_no_training"]
    cov = Coverage(ops={"m": inventory}, tables={n: op_tables()[n].read() for n in ("onnx-dynamo", "onnx-legacy")})
    assert cov.lacks("m", ("onnx-legacy", "traced")) == []
    assert cov.lacks("m", ("onnx-dynamo", "decomposed")) == []
    assert cov.lacks("m", ("onnx-legacy", "core")) == ["_native_batch_norm_legit_no_training"]  # the wrong read

    # An op a table lacks counts when every op of its decomposition is covered, not otherwise.
    made_up = Coverage(ops={"m": {"exported": ["frob", "blur"], "decomposed": {"frob": ["mul"], "blur": ["nope"]}}},
                       tables={"t": ["mul"]})
    assert made_up.lacks("m", ("t", "decomposed")) == ["blur"]
    assert made_up.lacks("m", ("t", "traced")) is None  # no such inventory: unknown, never refused


def test_export_assertions_never_block_a_route() -> None:
    """`x.to(dtype)` leaves `_assert_tensor_metadata` in the exported program (every transformers model holds
    some): it survives the core decompositions and no table lists it, yet no converter runs it."""
    import torch

    from buildsys.planning.coverage import Coverage
    from buildsys.formats.torch.rewritten import program_ops

    class Cast(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.to(torch.float32) * 2

    with torch.no_grad():
        core = torch.export.export(Cast(), (torch.randn(2),), strict=False).run_decompositions()
    ops = sorted({op.split(".")[1] for op in program_ops(core)})
    assert "_assert_tensor_metadata" in ops
    cov = Coverage(ops={"m": {"core": ops}}, tables={"t": ["mul"]})
    assert cov.lacks("m", ("t", "core")) == []


@pytest.mark.slow  # two probes (torch.export, the trace, both registries) and two ONNX exports
def test_plan_ops_orders_the_dynamo_export_first_for_an_op_the_legacy_exporter_lacks(tmp_path: Path) -> None:
    (tmp_path / "wave.py").write_text(WAVE)
    (tmp_path / "deploy.yaml").write_text(DEPLOY)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250", "MODELBUILD_OP_COVERAGE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=env)

    default = json.loads(run("plan", "--json").stdout)["candidate_routes"]["server"]
    assert default[0] == ["pytorch", "onnx"]  # nothing analysed yet: the legacy exporter first, as always

    plan = json.loads(run("plan", "--ops", "--json").stdout)
    cov = plan["coverage"]
    assert "sinh" in cov["models"]["wave"]["ops"] and "sinh" in cov["models"]["wave"]["traced"]
    steps = cov["targets"]["server"]["steps"]
    assert steps["onnx-from-pytorch"]["table"] == "onnx-legacy" and steps["onnx-from-pytorch"]["lacks"] == ["sinh"]
    assert steps["onnx-from-pt2"]["table"] == "onnx-dynamo" and steps["onnx-from-pt2"]["lacks"] == []
    routes = plan["candidate_routes"]["server"]
    # The two legacy routes (direct, through TorchScript) move behind the dynamo one, in their own order.
    assert routes == [["pytorch", "pt2", "onnx"], *[r for r in default if r != ["pytorch", "pt2", "onnx"]]]
    assert len(routes) == len(default) == 3
    assert plan["candidate_routes"]["legacy"] == [["pytorch", "onnx"]]  # a pinned route stays: refused at build

    text = run("plan").stdout
    line = WAVE.splitlines().index("        return torch.sinh(self.fc(x))") + 1  # where the model calls it
    assert "server: onnx-from-pytorch lacks sinh (no rewrite yet: blocks this route; called in the model (Wave) at " \
        f"wave.py:{line}); onnx-from-torchscript lacks sinh (no rewrite yet: blocks this route); first route pytorch " \
        "→ pt2 → onnx" in text

    # The build takes the working route first: nothing of `server` fails. The pinned legacy route fails as the
    # table said, naming the op; its refusal is answered by the other exporter on the same route (a converter
    # switch: the target pins its formats, not its exporter), which delivers.
    proc = run("build", "-k", "-j", "1", "--json")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "failed" and e.get("kind") != "analysis"]
    assert proc.returncode == 0 and failed, proc.stdout + proc.stderr
    assert all("'aten::sinh' is not supported at opset 18" in e.get("error", "") for e in failed if "onnx" in e["node"])
    lock = json.loads((tmp_path / "deploy.lock").read_text())
    assert lock["targets"]["legacy"]["route"] == ["pytorch", "onnx (switch onnx dynamo)"]
    [record] = lock["routes"]["legacy"]["dropped"]
    assert record["route"] == ["pytorch", "onnx"] and record["answers"] == [["pytorch", "onnx (switch onnx dynamo)"]]
    assert lock["targets"]["server"]["route"] == ["pytorch", "pt2", "onnx"]
    assert lock["nodes"]["verify:server"]["verdict"] == "passed"
    assert "server" not in lock.get("routes", {})  # no route was dropped on its way


@pytest.mark.skipif(__import__("importlib").util.find_spec("executorch") is None,
                    reason="needs executorch (pip install -c constraints.txt 'modelbuild[executorch]')")
def test_the_xnnpack_table_says_what_the_partitioner_delegates_and_what_runs_portable() -> None:
    """Information only: XNNPACK's partitioner configs against a real lowering of linear then sinh."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from buildsys.planning.coverage import Coverage
    from buildsys.formats.registry import op_tables

    table = op_tables()["xnnpack"].read()
    assert {"addmm", "convolution", "relu", "linear"} <= set(table) and "sinh" not in table
    namespace: dict = {}
    exec(WAVE, namespace)
    program = torch.export.export(namespace["build"]().eval(), (torch.randn(2, 4),), strict=False)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).exported_program()
    left = {str(n.target) for n in lowered.graph.nodes if n.op == "call_function"}
    assert any("executorch_call_delegate" in t for t in left)  # the linear layer went to XNNPACK
    assert any("aten.sinh.default" in t for t in left) and not any("addmm" in t for t in left)  # sinh: the runtime

    cov = Coverage(ops={"m": {"core": ["addmm", "permute", "sinh"]}}, tables={"xnnpack": table})
    assert cov.lacks("m", ("xnnpack", "core")) == ["sinh"]
