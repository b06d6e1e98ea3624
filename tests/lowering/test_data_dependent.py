"""torch.export of a model that reads a value from its data and loops on it (buildsys/lowering/export.py): stopped
by a data-dependent guard, exported again with the example's values, which the program asserts; a converter that
needs a fixed program gets it with the values those assertions pin written in (buildsys/lowering/reads.py). The
models: tests/helpers/lowering_models.py's chunked local attention (the window count read from the attention mask)
and small ones below."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from buildsys.lowering.export import data_dependent, export_module  # noqa: E402
from buildsys.lowering.reads import assumptions, with_asserted_values  # noqa: E402
from tests.helpers.lowering_models import chunked_attention  # noqa: E402


def _inputs(valid: int = 16) -> tuple["torch.Tensor", "torch.Tensor"]:
    features = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 16, dtype=torch.int64)
    mask[:, :valid] = 1
    return features, mask


def test_a_data_dependent_loop_is_exported_with_the_examples_values_and_asserts_them() -> None:
    model, args = chunked_attention(), _inputs()
    with pytest.raises(Exception) as refused:
        torch.export.export(model, args, strict=False)
    assert data_dependent(refused.value)
    assert not data_dependent(ValueError("Constraints violated (batch)!"))

    caveats: list[dict[str, str]] = []
    program = export_module(model, args, None, False, caveats, "pt2-from-pytorch")
    [caveat] = caveats
    assert caveat["kind"] == "fallback" and caveat["source"] == "pt2-from-pytorch"
    assert caveat["what"] == "data-dependent values taken from the example: Eq(u0, 16)"  # its bounds left out
    assert "data-dependent expression u0" in caveat["why"]
    assert assumptions(program.graph_module) == ["Eq(u0, 16)"]
    torch.testing.assert_close(program.module()(*args), model(*args), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Runtime assertion failed"):  # other data: the program says so
        program.module()(*_inputs(valid=10))


def test_a_converter_exporting_again_gets_the_program_with_the_values_its_assertions_pin() -> None:
    model, args = chunked_attention(), _inputs()
    module = export_module(model, args, None, False, [], "pt2-from-pytorch").module()
    assert with_asserted_values(module) == 1  # u0, which Eq(u0, 16) pins
    assert not [n for n in module.graph.nodes if n.target in (torch.ops.aten.item.default,
                                                              torch.ops.aten._assert_scalar.default)]
    again = torch.export.export(module, args, strict=False)  # what ExecuTorch and litert-torch do: no refusal
    torch.testing.assert_close(again.module()(*args), model(*args), rtol=0, atol=0)
    assert with_asserted_values(module) == 0


class _Flagged(torch.nn.Module):
    """Takes one of two paths by a flag read from its data (Longformer's `is_global_attn`): torch.export keeps both
    behind a `sym_ite`, which coremltools cannot translate."""

    def forward(self, x: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
        flagged = bool((mask > 1).any())
        width = x.shape[1] if flagged else x.shape[1] // 2
        return x[:, :width].sum(dim=1)


def test_a_flag_its_assertions_leave_one_value_is_written_in_and_its_branch_taken() -> None:
    x, mask = torch.randn(2, 8), torch.ones(2, 8, dtype=torch.int64)
    program = export_module(_Flagged(), (x, mask), None, False, [], "pt2-from-pytorch")
    assert "sym_ite" in str(program.graph_module.code)
    assert with_asserted_values(program.graph_module) == 1  # u0 in [0, 1], Ne(u0, 1): 0, so the flag is False
    assert "sym_ite" not in str(program.graph_module.code) and "item" not in str(program.graph_module.code)
    torch.testing.assert_close(program.module()(x, mask), _Flagged()(x, mask), rtol=0, atol=0)


def test_a_model_without_data_dependence_is_exported_as_before() -> None:
    caveats: list[dict[str, str]] = []
    linear = torch.nn.Linear(4, 2).eval()
    program = export_module(linear, (torch.ones(1, 4),), None, False, caveats, "pt2-from-pytorch")
    assert caveats == [] and assumptions(program.graph_module) == []


class _SizedByATensor(torch.nn.Module):
    """Branches on its data, and sizes a view by a tensor (`torch.div` of two ints), as Longformer chunks its sequence."""

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        if bool((x > 0).any()):
            x = x * 2
        return x.view(x.shape[0], torch.div(x.shape[1], 4, rounding_mode="trunc"), 4).sum(-1)


def test_the_program_saves_and_loads_without_the_reads_its_example_answered(tmp_path: Path) -> None:
    """With real tensors propagated, the read of the constant view size is answered by its value and left in the graph
    without a symbol, which torch.export.save writes in a form its load refuses: such reads are removed."""
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    program = export_module(_SizedByATensor(), (x,), None, False, [], "pt2-from-pytorch")
    torch.export.save(program, str(tmp_path / "model.pt2"))
    loaded = torch.export.load(str(tmp_path / "model.pt2")).module()
    torch.testing.assert_close(loaded(x), _SizedByATensor()(x), rtol=0, atol=0)
