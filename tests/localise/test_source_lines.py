"""Every remaining failure names the line (buildsys/localise/source_lines.py, sites.py): a converter's refusal
names an op; the worker finds where the user's model calls it (nn.Module path and class, file:line and code,
from torch.export's stack traces, else the TorchScript trace); the failure, deploy.lock's dropped route, the
blocked target's summary (with what to do) and `plan --ops` say it.

The refusal texts below are the real ones of six converters on the model here (torch 2.13's two ONNX exporters,
coremltools 9.0's two frontends, ExecuTorch, litert-torch), copied from `modelbuild build` of it; the end-to-end
test makes them again through the real converters. onnx2tf never sees this model (both ONNX exports refuse it
first): its line follows the words of the onnx2tf step's failure (buildsys/formats/tflite/saved_model.py), which
names the ONNX node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildsys.localise.sites import Site, blocked_advice, with_sites

PROBIT = '''\
import math

import torch
from torch import nn


class ProbitHead(nn.Module):
    """Scores → probabilities → standard-normal quantiles (the probit): torch.erfinv, which no converter takes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        p = torch.sigmoid(self.fc(x)) * 0.98 + 0.01
        return torch.erfinv(2 * p - 1) * math.sqrt(2)


class Net(nn.Module):
    def __init__(self, gate=False):
        super().__init__()
        self.gate = gate
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = ProbitHead()

    def forward(self, x):
        h = self.body(x)
        if self.gate and h.sum() > 0:  # data-dependent: torch.export cannot export it, the trace can
            h = h * 2
        return self.head(h)


def build(gate=False):
    torch.manual_seed(0)
    return Net(gate)
'''
ERFINV_LINE = PROBIT.splitlines().index("        return torch.erfinv(2 * p - 1) * math.sqrt(2)") + 1
FC_LINE = PROBIT.splitlines().index("        p = torch.sigmoid(self.fc(x)) * 0.98 + 0.01") + 1
ERFINV = Site("erfinv", "head", "ProbitHead", "probit.py", ERFINV_LINE, "return torch.erfinv(2 * p - 1) * math.sqrt(2)")

#: The refusals of the probit model, one per converter (the step's own words around the converter's).
REFUSALS = {
    "onnx-legacy": "model 'probit': ONNX export failed: operator 'aten::erfinv' is not supported at opset 18 (try "
                   "another opset, the other exporter (dynamo), or rewrite that part of the model) (step onnx-from-pytorch)",
    "onnx-dynamo": "model 'probit': ONNX export failed: operator 'prims::erf_inv' has no ONNX translation at opset 18 "
                   "(try another opset, the legacy exporter (dynamo: false), or rewrite that part of the model) (step "
                   "onnx-from-pt2)",
    "coreml-trace": "model 'probit': Core ML cannot convert the PyTorch op 'erfinv' (coremltools has no conversion for "
                    "it); rewrite that part of the model or register a custom conversion (step coreml-from-torchscript)",
    "coreml-export": "model 'probit': coremltools.convert failed: NotImplementedError: Unsupported fx node erfinv, kind "
                     "erfinv (step coreml-from-pt2)",
    "executorch": "model 'probit': lowering to ExecuTorch failed: SpecViolationError: Operator "
                  "torch._ops.aten.erfinv.default is not in Core ATen opset (https://pytorch.org/docs/stable/"
                  "torch.compiler_ir.html#core-aten-ir).\" (step executorch-from-pt2)",
    "litert-torch": "model 'probit': litert-torch could not convert the model: RuntimeError: Lowering not found: "
                    "aten.erfinv.default (step tflite-from-pt2)",
}

DEPLOY = """\
models:
  probit:
    source: {factory: "probit:build"%s}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y}]
# rewrites: [] on every target: the special family removes erfinv (a default build delivers all four), so the
# targets forbid rewrites to keep erfinv an op that no converter takes
targets:
  server: {model: probit, format: onnx, rewrites: []}
  ios: {model: probit, format: coreml, rewrites: []}
  android: {model: probit, format: tflite, rewrites: []}
  et: {model: probit, format: executorch, rewrites: []}
"""


def _project(root: Path, kwargs: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "probit.py").write_text(PROBIT)
    (root / "deploy.yaml").write_text(DEPLOY % kwargs)
    return root


def _request(root: Path) -> dict:
    from buildsys.config.load import load

    cfg = load(root / "deploy.yaml")
    return {"model": cfg.project.models["probit"].model_dump(mode="json"), "model_name": "probit", "root": str(root)}


@pytest.fixture(scope="module")
def probit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _project(tmp_path_factory.mktemp("probit"))


def _module_and_args(root: Path) -> tuple:
    from buildsys.config.load import load
    from buildsys.localise.source_lines import module_and_args

    cfg = load(root / "deploy.yaml")
    return module_and_args(cfg.project.models["probit"], root, "probit", "test")


def test_the_exported_program_says_which_module_and_line_call_each_op(probit: Path) -> None:
    from buildsys.localise.source_lines import model_sites

    sites = model_sites(*_module_and_args(probit), probit.resolve())
    assert sites["erfinv"] == [ERFINV]
    assert sites["linear"][-1] == Site("linear", "head.fc", "Linear", "probit.py", FC_LINE,
                                       "p = torch.sigmoid(self.fc(x)) * 0.98 + 0.01")
    assert sites["addmm"][-1].module == "head.fc"  # an op of the core ATen decomposition keeps its call's place


def test_a_model_torch_export_refuses_is_located_through_its_trace(tmp_path: Path) -> None:
    from buildsys.localise.source_lines import model_sites

    root = _project(tmp_path / "gated", ", kwargs: {gate: true}").resolve()
    module, args = _module_and_args(root)
    with pytest.raises(Exception, match="data-dependent|Could not guard"):
        __import__("torch").export.export(module, args, strict=False)
    assert model_sites(module, args, root)["erfinv"] == [ERFINV]


@pytest.mark.parametrize("converter", sorted(REFUSALS))
def test_each_converters_refusal_is_located_in_the_model(probit: Path, converter: str) -> None:
    from buildsys.localise.source_lines import refused_sites

    sites = refused_sites(_request(probit), REFUSALS[converter])
    assert sites == [ERFINV], converter
    line = with_sites(REFUSALS[converter], sites)
    assert line.endswith(f" — erfinv is called in head (ProbitHead) at probit.py:{ERFINV_LINE}") and len(line) <= 300


def test_the_op_analysis_sites_spare_the_worker_an_export(tmp_path: Path) -> None:
    """With the op analysis' sites in the request (what the build passes when it analysed the model), a refusal is
    located without loading the model: here its factory would fail."""
    from buildsys.localise.source_lines import refused_sites

    root = _project(tmp_path / "broken")
    (root / "probit.py").write_text(PROBIT.replace("def build(gate=False):", "def build(gate=False):\n    raise SystemExit"))
    request = {**_request(root), "extra": {"sites": {"erfinv": [ERFINV.as_dict()], "mul": []}}}
    assert refused_sites(request, REFUSALS["litert-torch"]) == [ERFINV]


def test_an_onnx_node_a_converter_names_is_located_by_its_scope(probit: Path) -> None:
    from buildsys.localise.source_lines import refused_sites

    onnx2tf = "onnx2tf could not convert the ONNX op Mul (node /head/Mul): ValueError: operands could not be broadcast"
    [site] = refused_sites(_request(probit), onnx2tf)
    assert (site.op, site.module, site.module_type, site.file) == ("Mul", "head", "ProbitHead", "probit.py")
    assert site.line in (FC_LINE, ERFINV_LINE)  # a mul of head's forward
    assert refused_sites(_request(probit), "TypeError: only 0-dimensional arrays can be converted") == []


def test_the_advice_of_a_blocked_target() -> None:
    records = [{"refused": [ERFINV.as_dict()]}, {"refused": [ERFINV.as_dict()]}, {"reason": "no site"}]
    assert blocked_advice(records) == (
        f"erfinv is called in head (ProbitHead) at probit.py:{ERFINV_LINE}; to deliver it: replace that call with ops "
        "the converters take, or add a rewrite for erfinv (docs/rewrites.md, \"Adding a rewrite\")")
    assert "onnx-dynamo takes erfinv: choose a route or format through it; or replace" in \
        blocked_advice(records, takers={"erfinv": ["onnx-dynamo"]})
    assert "let the rewrite complex remove erfinv" in blocked_advice(records, rewrites={"erfinv": ["complex"]})
    assert blocked_advice([{"reason": "no site"}]) == ""


def _modelbuild(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"})


@pytest.mark.slow
def test_an_op_no_converter_takes_fails_naming_the_module_and_line_that_call_it(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    build = _modelbuild(root, "build", "-j", "1", "-k")
    assert build.returncode == 1
    where = f"erfinv is called in head (ProbitHead) at probit.py:{ERFINV_LINE}"
    lock = json.loads((root / "deploy.lock").read_text())
    reasons = {target: [r["reason"] for r in entry["dropped"]] for target, entry in lock["routes"].items()}
    assert sorted(reasons) == ["android", "et", "ios", "server"]  # et: its one route, with the rewrite not tried
    for target, dropped in reasons.items():
        # every refusal of erfinv by name says where it is called, whole, before the note on the rewrite not tried
        named = [r for r in dropped if "erfinv" in r.split(" — ")[0]]
        assert named and all(f" — {where}" in r for r in named), (target, dropped)
        assert all(r.endswith("(rewrite special would remove what was refused; not tried: the target sets "
                              "rewrites: [])") for r in named), (target, dropped)
        assert all(rec["refused"] == [ERFINV.as_dict()] for rec in lock["routes"][target]["dropped"] if "refused" in rec)
    for target in ("server", "ios", "android"):  # every route with its reason, then where and what to do
        summary = next(line for line in build.stdout.splitlines() if line.startswith(f"✗ verify:{target}: "))
        assert summary.startswith(f"✗ verify:{target}: no route passes its check (pytorch → ")
        assert f"; {where}; to deliver it: let the rewrite special remove erfinv (unset the target's `rewrites:` or " \
               "list it there); or " in summary, summary
        assert summary.endswith("replace that call with ops the converters take, or add a rewrite for erfinv "
                                "(docs/rewrites.md, \"Adding a rewrite\")"), summary
    assert "failed   probit/executorch" in build.stdout and f"(step executorch-from-pt2) — {where}" in build.stdout
    plan = _modelbuild(root, "plan", "--ops")
    assert "lacks erfinv (rewrite special)" in plan.stdout, plan.stdout  # the op analysis names the family
