"""The check every family rewrite's tests make: the rewritten function computes what torch's does (random
inputs, fp tolerance) and the functions it replaces are gone from the traced and exported graphs."""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from buildsys import rewrites
from buildsys.rewrites import op_base
from tests.helpers.rewrite_ops import Fn

REL = 1e-4


def assert_equivalent(got: object, want: torch.Tensor, rel: float = REL) -> None:
    """Same shape and dtype; NaN and ±inf where want has them; elsewhere max abs error ≤ rel × max|want| + 1e-6
    (bools and integers: equal)."""
    assert isinstance(got, torch.Tensor), type(got)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    if not want.is_floating_point():
        assert torch.equal(got, want)
        return
    finite = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), "NaN where torch has none, or none where it has"
    assert torch.equal(got[torch.isinf(want)], want[torch.isinf(want)]), "an infinity of torch's differs"
    got, want = got[finite], want[finite]
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    allowed = rel * want.double().abs().max().item() + 1e-6 if want.numel() else 0.0
    assert err <= allowed, f"max abs error {err:.3g} > allowed {allowed:.3g}"


def _functional(op: str) -> str:
    """An op's bare name, its in-place form (index_add_) spelled as the op (index_add)."""
    name = op_base(op)
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _traced_ops(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args, check_trace=False)
    return {_functional(n.kind()) for n in traced.inlined_graph.nodes() if n.kind().startswith("aten::")}


def _program_ops(program: torch.export.ExportedProgram) -> set[str]:
    return {_functional(str(n.target)) for n in program.graph.nodes if n.op == "call_function"}


def graph_ops(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> dict[str, set[str]]:
    """The ATen ops (bare names, in-place forms as their ops) of the TorchScript trace, the ExportedProgram and
    its core decomposition; 'complex' holds the names of exported nodes with a complex value."""
    program = torch.export.export(module, args, strict=False)
    decomposed = program.run_decompositions()
    complex_nodes = {n.name for n in decomposed.graph.nodes
                     for v in (n.meta.get("val") if isinstance(n.meta.get("val"), (list, tuple)) else [n.meta.get("val")])
                     if isinstance(v, torch.Tensor) and v.is_complex()}
    return {"traced": _traced_ops(module, args), "exported": _program_ops(program),
            "decomposed": _program_ops(decomposed), "complex": complex_nodes}


def any_graph_has(module: torch.nn.Module, args: tuple[torch.Tensor, ...], ops: set[str]) -> bool:
    """Whether one of `ops` is in the trace, the ExportedProgram or its decomposition: graph_ops's union, each
    graph made only when the cheaper ones before it have none (the sweeps' precondition, an export saved)."""
    if ops & _traced_ops(module, args):
        return True
    program = torch.export.export(module, args, strict=False)
    return bool(ops & _program_ops(program)) or bool(ops & _program_ops(program.run_decompositions()))


def check(fn: Callable[..., torch.Tensor], rewrite: str | tuple[str, ...], *args: torch.Tensor, rel: float = REL,
          graphs: bool = False) -> None:
    """fn under `rewrite` (or several, in order) computes fn; with `graphs`, none of the rewrites' ops is left in
    any graph of it (and the original had one: otherwise the check proves nothing)."""
    names = (rewrite,) if isinstance(rewrite, str) else rewrite
    want = fn(*args)
    after = rewrites.apply(Fn(fn), list(names))
    assert_equivalent(after(*args), want, rel)
    if graphs:
        removed = {op_base(o) for name in names for o in rewrites.get(name).removes}
        assert any_graph_has(Fn(fn), args, removed), "the original has none of the ops: proves nothing"
        found = graph_ops(after, args)
        for kind in ("traced", "exported", "decomposed"):
            assert not removed & found[kind], f"{kind} graph still has {removed & found[kind]}"
        assert not found["complex"], f"complex values left: {found['complex']}"


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
