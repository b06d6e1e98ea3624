"""Decomposition with PyTorch's own tables (buildsys/lowering/decompose.py) on the models of
tests/helpers/lowering_models.py: the named ops leave the exported program, what they became is recorded, the
program computes what the model does at every batch size, and an op no table decomposes is refused saying so."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from buildsys.lowering.decompose import NoDecomposition, decomposable_ops, decompose, describe, scriptable
from tests.helpers import lowering_models
from tests.lowering.test_lowering_answers import DECOMPOSABLE


def _exported(module: torch.nn.Module, *shape: int) -> torch.export.ExportedProgram:
    return torch.export.export(module, (torch.randn(2, *shape),), dynamic_shapes=({0: torch.export.Dim("batch")},))


def _ops(program: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target).split(".")[1] for n in program.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("aten.")}


def test_a_named_op_inside_a_composite_op_is_decomposed_and_the_program_computes_the_same() -> None:
    model = lowering_models.warp()
    program, record = decompose(_exported(model, 3, 16, 16), ["grid_sampler_2d"])
    assert not {"grid_sampler", "grid_sampler_2d"} & _ops(program)
    assert record["decompose"] == ["grid_sampler_2d"] and "index" in record["decomposed"]["grid_sampler"]
    assert set(record["decomposed"]) == {"grid_sampler"}  # only what was asked for, not the views export also lowers
    assert describe(record).startswith("decomposed with PyTorch's tables: grid_sampler_2d (grid_sampler → ")
    x = torch.randn(3, 3, 16, 16)  # another batch size than the export's: the dynamic axis survives
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


def test_what_a_decomposition_makes_that_is_not_core_aten_is_decomposed_in_turn() -> None:
    program, record = decompose(_exported(lowering_models.point_cloud(), 32, 3), ["cdist"])
    assert not {"cdist", "_cdist_forward", "_euclidean_dist"} & _ops(program)
    assert {"cdist"} == set(record["decomposed"])


def test_core_decomposes_the_whole_program_but_linear_layers_with_a_constant_weight() -> None:
    """PT2E quantizers annotate aten.linear, not the addmm the core table makes of it: a layer whose weight is a
    parameter stays linear; one whose weight the model computes (Core ML's linear takes only a constant) becomes
    matmul, then mm. The program computes what the model does at another batch size."""
    program, record = decompose(_exported(lowering_models.point_cloud(), 32, 3), "core")
    assert record["decompose"] == "core" and "cdist" in record["decomposed"] and record["linear_kept"] == 2
    assert "linear" in _ops(program) and not {"cdist", "addmm", "mm"} & _ops(program)

    model = lowering_models.normed_head()
    program, record = decompose(_exported(model, 5, 32), "core")
    linears = [n for n in program.graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
    assert [n.args[1].name for n in linears] == ["p_up_weight", "p_mid_weight"] and record["linear_kept"] == 2
    assert "mm" in _ops(program) and record["decomposed"]["matmul"]  # the computed weight's layer
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


def test_an_allocation_no_pytorch_table_lowers_is_decomposed_by_our_own() -> None:
    """torch.empty_like (a fresh buffer, then filled) decomposes to empty_permuted, which no PyTorch table lowers and
    ExecuTorch refuses as not core ATen: the project's own table makes it a plain empty, named or in the whole
    program. (hinge_embedding_loss's and cosine_embedding_loss's own decompositions make it too.)"""

    class PairScore(torch.nn.Module):  # a floor written into a fresh buffer
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.maximum(x, torch.empty_like(x).fill_(0.1))

    x = torch.randn(4, 6)
    program = torch.export.export(PairScore(), (x,))
    assert "empty_permuted" in _ops(program.run_decompositions())
    assert "empty_permuted" in decomposable_ops()
    for spec in (["empty_permuted"], "core"):
        out, _ = decompose(program, spec)
        assert "empty_permuted" not in _ops(out) and "empty_permuted" not in _ops(out.run_decompositions())
        torch.testing.assert_close(out.module()(x), PairScore()(x))


def test_an_op_no_table_decomposes_is_refused_plainly() -> None:
    class RunningMax(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cummax(x, dim=1).values

    with pytest.raises(NoDecomposition, match=r"aten::cummax has no decomposition in PyTorch's tables .*an op rewrite "
                                              r"must \(docs/rewrites.md\)"):
        decompose(_exported(RunningMax(), 5), ["cummax"])


def test_an_op_the_program_does_not_hold_is_refused_naming_what_it_holds() -> None:
    with pytest.raises(NoDecomposition, match=r"holds no aten::grid_sampler_2d to decompose \(its ops: .*linear"):
        decompose(_exported(lowering_models.per_sample().body, 6), ["grid_sampler_2d"])


def test_the_decomposed_program_scripts_to_torchscript_that_keeps_its_dynamic_batch() -> None:
    model = lowering_models.warp()
    program, _ = decompose(_exported(model, 3, 16, 16), ["grid_sampler_2d"])
    compiled = scriptable(program)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16)
        [out] = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
    assert "grid_sampler" not in str(compiled.inlined_graph)


def test_the_table_the_planner_reads_holds_what_the_classifier_tests_assume() -> None:
    table = set(decomposable_ops())
    assert DECOMPOSABLE <= table
    assert not {"cummax", "_fft_r2c", "_cdist_forward", "index_put"} & table  # the families rewrites must cover


class _Call(torch.nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args)


EXTRA = {  # op → (a call, its inputs): every op of extra_decompositions.py on arguments that exercise its schema
    "addbmm": (lambda s, a, b: torch.addbmm(s, a, b, beta=0.5, alpha=2.0), (torch.randn(3, 5), torch.randn(4, 3, 2),
                                                                            torch.randn(4, 2, 5))),
    "exp2": (torch.exp2, (torch.linspace(-30, 30, 13),)),
    "erfc": (torch.erfc, (torch.linspace(-6, 9, 31),)),
    "angle": (torch.angle, (torch.tensor([-2.0, -0.0, 0.0, 3.0, float("nan"), -float("inf")]),)),
    "put": (lambda x, s: x.put(torch.tensor([0, -1, 5, 2]), s), (torch.randn(2, 4), torch.randn(4))),
    "var_mean": (lambda x: torch.var_mean(x, dim=(0, 2), correction=0, keepdim=True), (torch.randn(3, 4, 5),)),
}


@pytest.mark.parametrize("op", sorted(EXTRA))
def test_the_projects_own_decompositions_compute_what_torch_does(op: str) -> None:
    """Ops no PyTorch table lowers to ATen ops (or only to a prim) leave the program, named or in the whole program,
    and the program computes the same."""
    fn, args = EXTRA[op]
    program = torch.export.export(_Call(fn), args)
    assert op in _ops(program) and op in decomposable_ops()
    for spec in ([op], "core"):
        out, _ = decompose(program, spec)
        assert op not in _ops(out) and not any(str(n.target).startswith("prims.") for n in out.graph.nodes)
        torch.testing.assert_close(out.module()(*args), fn(*args), rtol=1e-5, atol=1e-6, equal_nan=True)
