"""Localisation of an ExecuTorch .pte (formats/executorch/intermediates.py): the .pte's XNNPACK delegate calls
are opaque to ExecuTorch's devtools, so the program it was lowered from (debug/program.pt2 in its node, never delivered) is re-lowered
one op per XNNPACK delegate call and run with the ETDump debug buffer; a corrupted conv and a layer int8
quantizes badly are named by their module paths, and a sound fp32 .pte shows no divergence."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from buildsys.config.schema import Acceptance, Model
from buildsys.formats.executorch.intermediates import PROGRAM, STAND_IN
from buildsys.localise import NotLocalisable, localise
from buildsys.nodes.verify import resolve_acceptance
from tests.localise.test_localise import FAULTY, FP32, MODEL, X, nets  # noqa: F401 (nets: a fixture)

pytest.importorskip("executorch")


class Mlp(nn.Module):
    """Linear layers only: PT2E quantizes a Linear and the ReLU after it as one unit, so that Linear's own
    output is never materialised (the call's output is the ReLU's, which no module computes alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.fc2(self.fc1(x)))


def build_pte(module: nn.Module, args: tuple[torch.Tensor, ...], out: Path, calibrate: np.ndarray | None = None) -> Path:
    """What the .pte steps write: model.pte lowered whole to XNNPACK and the program it was lowered from
    (int8: PT2E static, per-tensor weights, calibrated on `calibrate`)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from buildsys.formats.executorch.quantize import quantizer

    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(module, args, strict=False).module()
        if calibrate is not None:
            prepared = prepare_pt2e(graph, quantizer(per_channel=False, dynamic=False))
            with torch.no_grad():
                for sample in calibrate:
                    prepared(torch.from_numpy(sample[None]))
            graph = convert_pt2e(prepared)
        program = torch.export.export(graph, args, strict=False)
        (out / PROGRAM).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(out / PROGRAM))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    plan = lowered.executorch_program.execution_plan[0]
    assert len(plan.delegates) == 1 and not plan.operators  # the whole graph in one XNNPACK call: opaque
    (out / "model.pte").write_bytes(bytes(lowered.buffer))
    return out / "model.pte"


def test_fp32_fault_is_named_and_sound_pte_shows_none(tmp_path: Path, nets: Any) -> None:
    net, bad = nets
    fixed = MODEL.model_copy(update={"inputs": [MODEL.inputs[0].model_copy(update={"shape": [1, 1, 8, 8]})]})
    args = (torch.from_numpy(X[:1]),)
    found = localise(build_pte(bad, args, tmp_path / "bad"), "executorch", net, {"x": X}, fixed, tmp_path, FP32,
                     fmt="executorch")
    table = [(r.module, r.op, r.error, r.absent) for r in found.rows]
    assert found.first is not None and found.first.module == FAULTY, table
    assert STAND_IN in found.first.tensor
    before = found.rows[:found.rows.index(found.first)]
    assert before and all(r.ok or r.absent for r in before), table
    clean = localise(build_pte(net, args, tmp_path / "clean"), "executorch", net, {"x": X}, fixed, tmp_path, FP32)
    assert clean.first is None and any(r.ok and not r.absent for r in clean.rows), \
        [(r.module, r.error) for r in clean.rows]


def test_int8_layer_that_quantizes_badly_is_named(tmp_path: Path) -> None:
    """test_localise's dead unit: one huge weight column of fc2 on an input that is always zero; per-tensor int8
    rounds every other weight of fc2 to zero, so the .pte misses int8's tolerance at fc2."""
    torch.manual_seed(1)
    net = Mlp().eval()
    with torch.no_grad():
        net.fc1.weight[0] = 0.0
        net.fc1.bias[0] = 0.0  # unit 0 of fc1 is always zero
        net.fc2.weight[:, 0] = 60.0
    x = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    model = Model.model_validate({"source": {"factory": "tests.formats.executorch.test_localise_executorch:Mlp"},
                                  "inputs": [{"name": "x", "shape": [1, 8]}], "outputs": [{"name": "y"}]})
    pte = build_pte(net, (torch.from_numpy(x[:1]),), tmp_path, calibrate=x)
    int8 = resolve_acceptance(Acceptance(), "int8", model.outputs)["outputs"]["y"]
    found = localise(pte, "executorch", net, {"x": x}, model, tmp_path, int8, fmt="executorch-int8")
    table = {r.module: r.error for r in found.rows}
    assert found.first is not None and found.first.module == "fc2", table
    assert found.worst is not None and found.worst.module == "fc2", table
    assert table["fc1"] < 0.05 < 0.1 < table["fc2"], table


def test_pte_without_its_program_says_why(tmp_path: Path, nets: Any) -> None:
    net, _ = nets
    fixed = MODEL.model_copy(update={"inputs": [MODEL.inputs[0].model_copy(update={"shape": [1, 1, 8, 8]})]})
    pte = build_pte(net, (torch.from_numpy(X[:1]),), tmp_path)
    (tmp_path / PROGRAM).unlink()
    with pytest.raises(NotLocalisable, match="delegate call of the .pte as one operator"):
        localise(pte, "executorch", net, {"x": X}, fixed, tmp_path, FP32)
