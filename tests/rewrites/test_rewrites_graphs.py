"""Each rewrite removes its op from what the real tracers and exporters record.

For the one-op module of each rewrite and family member (tests/helpers/rewrite_ops.py): the op is in the TorchScript graph
(torch.jit.trace) and the ExportedProgram (torch.export, strict=False) before, and in neither after, nor
after run_decompositions (what ExecuTorch, litert-torch and Core ML's export route see), where no node
has a complex dtype either; the traced and exported rewritten modules compute what the original does;
and the legacy ONNX exporter writes a graph without STFT, DFT, Loop or Col2Im that ONNX Runtime runs.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from buildsys import rewrites
from buildsys.rewrites import op_base
from tests.helpers.rewrite_checks import assert_equivalent, graph_ops
from tests.helpers.rewrite_ops import cases

CASES = cases()
#: ONNX ops that stand for what the rewrites remove (the legacy exporter's spelling of them).
ONNX_REMOVED = {"STFT", "DFT", "Loop", "Col2Im", "SequenceConstruct", "SequenceAt"}
#: ... and per family, the ONNX ops of what it removes.
ONNX_REMOVED_BY = {"scatter": {"ScatterElements", "ScatterND"}, "recurrent": {"GRU", "LSTM", "RNN"},
                   "triangular": {"Trilu"}}


def exported(module: torch.nn.Module, args: tuple[torch.Tensor, ...], strict: bool = False) -> torch.export.ExportedProgram:
    return torch.export.export(module, args, strict=strict)


def program_ops(program: torch.export.ExportedProgram) -> set[str]:
    return {op_base(str(n.target)) for n in program.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_removed_op_is_gone_from_every_graph(name: str) -> None:
    module, args, op, rewrite = CASES[name]
    removed = {op_base(o) for o in rewrites.get(rewrite).removes}
    before = graph_ops(module, args)
    assert op in before["traced"] | before["exported"], f"the original does not use {op}: the test proves nothing"

    after = rewrites.apply(module, [rewrite])
    found = graph_ops(after, args)
    for kind in ("traced", "exported", "decomposed"):
        assert not removed & found[kind], f"the {kind} graph still has {removed & found[kind]}"
    assert not found["complex"]

    program = exported(after, args)
    decomposed = program.run_decompositions()
    want = module(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(after, args, check_trace=False)
    assert_equivalent(traced(*args), want)
    assert_equivalent(program.module()(*args), want)
    assert_equivalent(decomposed.module()(*args), want)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_legacy_onnx_exporter_writes_a_plain_graph(name: str) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    module, args, _, rewrite = CASES[name]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rewrites.apply(module, [rewrite]), args, buffer, dynamo=False, opset_version=17)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    assert not (ONNX_REMOVED | ONNX_REMOVED_BY.get(rewrite, set())) & {n.op_type for n in graph.node}
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    got = session.run(None, feeds)[0]
    assert_equivalent(torch.from_numpy(np.asarray(got)), module(*args))


def test_strict_export_and_dynamic_shapes_see_the_rewrites_too() -> None:
    """torch.export strict=True (TorchDynamo) traces the mode as well, and a dynamic batch stays dynamic."""
    from tests.helpers.rewrite_models import Recommender, recommender_inputs

    for name in ("complex", "stft", "sdpa", "fft-filter", "fft2", "complex-einsum", "index-put", "gru", "pdist",
                 "triu"):  # (TorchDynamo traces NumPy too: a constant must not come back as the op it removes)
        module, args, _, rewrite = CASES[name]
        program = exported(rewrites.apply(module, [rewrite]), args, strict=True)
        assert not {op_base(o) for o in rewrites.get(rewrite).removes} & program_ops(program), name
        assert_equivalent(program.module()(*args), module(*args))

    model = Recommender().eval()
    rewritten = rewrites.apply(model, ["embedding-bag"])
    bags, ids = torch.export.Dim("bags", min=2, max=64), torch.export.Dim("ids", min=2, max=512)
    program = torch.export.export(rewritten, recommender_inputs(4), strict=False,
                                  dynamic_shapes=({0: ids}, {0: bags}, {0: bags}))
    for batch in (2, 9, 33):
        args = recommender_inputs(batch, seed=batch)
        assert_equivalent(program.module()(*args), model(*args))


def test_the_keyword_spotter_exports_with_a_dynamic_batch_and_length() -> None:
    from tests.helpers.rewrite_models import KeywordSpotter

    model = KeywordSpotter().eval()
    batch, samples = torch.export.Dim("batch", min=1, max=16), torch.export.Dim("samples", min=1024, max=16000)
    program = torch.export.export(rewrites.apply(model, ["stft"]), (torch.randn(2, 4000),), strict=False,
                                  dynamic_shapes=({0: batch, 1: samples},))
    assert "stft" not in program_ops(program)
    for shape in [(1, 4000), (5, 3001)]:
        audio = torch.randn(*shape) * 0.1
        assert_equivalent(program.module()(audio), model(audio))
