"""The worker side of op coverage (docs/rewrites.md, "Op coverage"): a model's ATen ops from torch.export, and
what each converter's own registry accepts. Run as `python -m buildsys.planning.coverage_probe REQUEST.json` by
`buildsys.planning.coverage`, never imported with torch by the orchestrator: torch and the converters are imported
inside the functions.

Registries read (each converter's own, never a list written here):

- `coremltools`: the torch frontend's `_TORCH_OPS_REGISTRY` (op names as its TorchScript and torch.export
  frontends look them up);
- `executorch`: the operator kernels the ExecuTorch runtime in the Python bindings registered
  (`portable_lib._get_operator_names()`, `aten::add.out`); an op counts with its functional `_copy` variant
  (`view` runs as `view_copy`), as the edge dialect rewrites it;
- `litert-torch`: its lowering registry (`backend.lowerings.global_registry`);
- `onnx-dynamo`: the torch.export-based ONNX exporter's registry (`ONNXRegistry.from_torchlib()`: the ATen
  ops torchlib has an ONNX translation for, at the highest opset the exporter writes);
- `onnx-legacy`: the TorchScript-based ONNX exporter's symbolic registry
  (`torchscript_exporter.registration.registry`, every `symbolic_opset*` module imported: an op counts when
  any opset the exporter writes has a symbolic for it, so a lower `opset:` may still lack it);
- `xnnpack`: the ops XNNPACK's partitioner has a config for (`ALL_PARTITIONER_CONFIGS`): information in
  `plan` (delegated, or run by the runtime's portable kernels), never a refusal.

A registry that cannot be read (package missing, an internal name moved) gives no table: its steps' coverage
is then "unknown", never guessed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from buildsys.lowering.decompose import decompositions  # each exported op → its core ops (also decompose's record)

#: Bump when what the probe records changes: cached inventories and tables are then recomputed.
#: 2: a quantization-aware-trained model is recognised (`qat`, buildsys.formats.torch.qat). 3: `traced` (the ops of a
#: torch.jit.trace, as the TorchScript-based ONNX exporter sees them) and `decomposed` (each exported op's
#: core ATen decomposition). 4: the QAT flow (`qat_flow`), eager QAT analysed as its ONNX export sees it.
#: 5: `sites` (where the model calls each op, localise/source_lines.py) and `parameters` (its count). 6: the
#: `decomposable` table without references (lowering/decompose.py: a reference exports as a prim). 7: litert-torch's
#: table holds the ops it decomposes before lowering (formats/tflite/litert_torch.lowering_ops). 8: the `decomposable`
#: table holds this project's own decompositions (lowering/decompose.own_decompositions: empty_permuted). 9: and
#: addbmm, exp2, erfc, angle, put (lowering/extra_decompositions.py). 10: `ranks` (each core op's input ranks: a
#: kernel that runs only some, `OpTable.ranks`). 11: `dynamic_refused` (torch.export refusing the dynamic axes).
VERSION = 11


def model_ops(deploy: Path, model_name: str) -> dict[str, Any]:
    """The model's ATen ops: `exported` (torch.export, as traced) and `core` (after the core ATen
    decompositions, what ExecuTorch's and litert-torch's lowering see); `decomposed`, each exported op's
    core ops (an op the core decompositions remove, `alias`, maps to none); `traced`, the ops of
    torch.jit.trace (what the TorchScript-based ONNX exporter looks up: `batch_norm` where torch.export
    says `_native_batch_norm_legit_no_training`), absent when the model does not trace; `qat`, the words
    for a quantization-aware-trained model when its graph carries fake-quant modules (buildsys.formats.torch.qat);
    `sites`, where the model calls each op (module path, file, line: localise/source_lines.py); `parameters`, how
    many it has (what a step's time budget scales with where no weights file says: running/limits.py); `ranks`, the
    ranks of each core op's first input (`input_ranks`); `dynamic_refused`, torch.export's refusal of the signature's
    dynamic axes (`dynamic_refusal`), absent where they export or the model has none."""
    import torch

    from buildsys.config.load import load as load_config
    from buildsys.formats.torch.qat import info_of
    from buildsys.formats.torch.rewritten import program_ops
    from buildsys.localise.source_lines import model_sites, module_and_args

    cfg = load_config(deploy)
    model = cfg.project.models[model_name]
    # A QAT model's converters see it converted with its learned parameters (what its pt2 and ONNX hold).
    module, args = module_and_args(model, cfg.root, model_name, "op coverage")
    with torch.no_grad():
        program = torch.export.export(module, args, strict=False)
        core = program.run_decompositions()
    base = lambda ops: sorted({op.split(".")[1] for op in ops})  # noqa: E731 - aten.stft.default → stft
    sites = model_sites(module, args, cfg.root.resolve(), program, core)
    out: dict[str, Any] = {"exported": base(program_ops(program)), "core": base(program_ops(core)),
                           "decomposed": decompositions(program, core), "ranks": input_ranks(core),
                           "parameters": sum(p.numel() for p in module.parameters()),
                           "sites": {op: [s.as_dict() for s in calls] for op, calls in sorted(sites.items())}}
    traced = traced_ops(module, args)
    if traced is not None:
        out["traced"] = traced
    refused = dynamic_refusal(model, cfg.root, module)
    if refused:
        out["dynamic_refused"] = refused
    info = info_of(module)
    if info is not None:
        out["qat"] = info.describe()
        out["qat_flow"] = info.flow
    return out


def dynamic_refusal(model: Any, root: Path, module: Any) -> str | None:
    """torch.export's refusal of `model`'s dynamic axes, exported as the loading steps export them
    (lowering/export.py: the signature's named axes, two samples), when it violates a constraint the code
    specialises ("Constraints violated (batch)"); None when it exports, fails otherwise, or has no named axis. The
    planner then puts the static export first where the formats after it have fixed shapes anyway."""
    import torch

    from buildsys.config import data
    from buildsys.errors import describe
    from buildsys.formats.torch.loading import example_args, export_dims, shapes_for, signature_module, trace_batch
    from buildsys.lowering.export import constraint_violated

    shapes = export_dims(model)
    if all(s is None for s in shapes):
        return None
    args = example_args(model, trace_batch(model, data.eval_batch(model, root, prefer=("example", "validation"))))
    try:
        wrapped = signature_module(module, model, args)
        with torch.no_grad():
            torch.export.export(wrapped, args, dynamic_shapes=shapes_for(wrapped, shapes), strict=False)
    except Exception as exc:  # noqa: BLE001 - only a constraint the dynamic axes violate is recorded
        return describe(exc).splitlines()[0][:300] if constraint_violated(exc) else None
    return None


def input_ranks(program: Any) -> dict[str, list[int]]:
    """Each ATen op of `program`'s graph → the ranks of the tensor its calls take first (`convolution` → [4, 5]
    for a 2-D and a 3-D convolution): what a kernel that runs only some ranks is checked against (`OpTable.ranks`)."""
    out: dict[str, set[int]] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith("aten.") or not node.args:
            continue
        value: Any = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
        if hasattr(value, "dim"):
            out.setdefault(str(node.target).split(".")[1], set()).add(value.dim())
    return {op: sorted(ranks) for op, ranks in sorted(out.items())}


def traced_ops(module: Any, args: tuple[Any, ...]) -> list[str] | None:
    """The ATen ops the TorchScript-based ONNX exporter looks up for `module`: its own trace
    (`_create_jit_graph`), then its passes before the symbolic lookup that change which ops are left
    (inlining, in-place ops made functional, `aten::Int`-like number conversions erased): `batch_norm`
    where torch.export says `_native_batch_norm_legit_no_training`. None when that fails (unknown)."""
    import warnings

    from torch._C import (
        _jit_pass_erase_number_types,
        _jit_pass_inline,
        _jit_pass_lower_all_tuples,
        _jit_pass_onnx_preprocess,
        _jit_pass_onnx_remove_inplace_ops_for_onnx,
        _jit_pass_peephole,
    )
    from torch.onnx._internal.torchscript_exporter import utils

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings: the trace is only read for its op kinds
            graph = utils._create_jit_graph(module, args)[0]
            _jit_pass_inline(graph)
            _jit_pass_lower_all_tuples(graph)
            _jit_pass_peephole(graph, True)
            _jit_pass_onnx_remove_inplace_ops_for_onnx(graph, None)
            _jit_pass_onnx_preprocess(graph)
            _jit_pass_erase_number_types(graph)
    except Exception:  # noqa: BLE001 - a model that does not trace: the tables that read it are "unknown"
        return None
    return sorted({node.kind().split("::", 1)[1] for node in graph.nodes() if node.kind().startswith("aten::")})


def main(argv: list[str]) -> int:
    """REQUEST.json: {"deploy", "model" (or null), "tables": [...], "out"}; writes the answer to "out":
    {"ops": {...} or {"error"}, "tables": {name: {"accepts"} or {"error"}}}."""
    from buildsys.formats.registry import op_tables

    request = json.loads(Path(argv[0]).read_text())
    answer: dict[str, Any] = {"tables": {}}
    if request.get("model"):
        try:
            answer["ops"] = model_ops(Path(request["deploy"]), request["model"])
        except Exception as exc:  # noqa: BLE001 - reported as "not analysed: why", the build goes on
            answer["ops"] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}
    for name in request.get("tables", []):
        try:
            answer["tables"][name] = {"accepts": op_tables()[name].read()}
        except Exception as exc:  # noqa: BLE001 - a registry that cannot be read is "unknown"
            answer["tables"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    Path(request["out"]).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
