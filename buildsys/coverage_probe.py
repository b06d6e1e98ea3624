"""The worker side of op coverage (docs/rewrites.md, "Op coverage"): a model's ATen ops from torch.export, and
what each converter's own registry accepts. Run as `python -m buildsys.coverage_probe REQUEST.json` by
`buildsys.coverage`, never imported with torch by the orchestrator: torch and the converters are imported
inside the functions.

Registries read (each converter's own, never a list written here):

- `coremltools`: the torch frontend's `_TORCH_OPS_REGISTRY` (op names as its TorchScript and torch.export
  frontends look them up);
- `executorch`: the operator kernels the ExecuTorch runtime in the Python bindings registered
  (`portable_lib._get_operator_names()`, `aten::add.out`); an op counts with its functional `_copy` variant
  (`view` runs as `view_copy`), as the edge dialect rewrites it;
- `litert-torch`: its lowering registry (`backend.lowerings.global_registry`).

A registry that cannot be read (package missing, an internal name moved) gives no table: its steps' coverage
is then "unknown", never guessed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

#: Bump when what the probe records changes: cached inventories and tables are then recomputed.
#: 2: a quantization-aware-trained model is recognised (`qat`, buildsys.qat).
VERSION = 2


def _coremltools() -> list[str]:
    from coremltools.converters.mil.frontend.torch.ops import _TORCH_OPS_REGISTRY

    return sorted(_TORCH_OPS_REGISTRY.name_to_func_mapping)


def _executorch() -> list[str]:
    from buildsys.formats.executorch.contract import runtime_kernels

    return sorted({name.split("::", 1)[1].split(".", 1)[0] for name in runtime_kernels() if name.startswith("aten::")})


def _litert_torch() -> list[str]:
    from litert_torch.backend.lowerings import registry

    return sorted({op.__name__.split(".")[0] for op in registry.global_registry.registered_ops
                   if getattr(op, "namespace", "") == "aten"})


#: table name → (the distributions whose versions key it, how to read it, what its registry is).
TABLES: dict[str, tuple[tuple[str, ...], Callable[[], list[str]], str]] = {
    "coremltools": (("coremltools", "torch"), _coremltools, "coremltools' torch frontend registry"),
    "executorch": (("executorch", "torch"), _executorch, "the ExecuTorch runtime's kernels"),
    "litert-torch": (("litert-torch", "torch"), _litert_torch, "litert-torch's lowering registry"),
}


def model_ops(deploy: Path, model_name: str) -> dict[str, Any]:
    """The model's ATen ops: `exported` (torch.export, as traced) and `core` (after the core ATen
    decompositions, what ExecuTorch's and litert-torch's lowering see); `qat`, the words for a
    quantization-aware-trained model when its graph carries fake-quant modules (buildsys.qat)."""
    from buildsys.qat import info_of, quantized

    import torch

    from buildsys import data
    from buildsys.config.load import load as load_config
    from buildsys.source import example_args, load_module, trace_batch
    from buildsys.formats.torch.rewritten import program_ops

    cfg = load_config(deploy)
    model = cfg.project.models[model_name]
    # A QAT model's converters see it converted with its learned parameters (what its pt2 and ONNX hold).
    module = quantized(load_module(model, cfg.root, name=model_name, step="op coverage").eval(), step="op coverage")
    batch = data.eval_batch(model, cfg.root, prefer=("example", "validation"))
    args = example_args(model, trace_batch(model, batch, dynamic=False))
    with torch.no_grad():
        program = torch.export.export(module, args, strict=False)
        core = program.run_decompositions()
    base = lambda ops: sorted({op.split(".")[1] for op in ops})  # noqa: E731 - aten.stft.default → stft
    out: dict[str, Any] = {"exported": base(program_ops(program)), "core": base(program_ops(core))}
    info = info_of(module)
    if info is not None:
        out["qat"] = info.describe()
    return out


def main(argv: list[str]) -> int:
    """REQUEST.json: {"deploy", "model" (or null), "tables": [...], "out"}; writes the answer to "out":
    {"ops": {...} or {"error"}, "tables": {name: {"accepts"} or {"error"}}}."""
    request = json.loads(Path(argv[0]).read_text())
    answer: dict[str, Any] = {"tables": {}}
    if request.get("model"):
        try:
            answer["ops"] = model_ops(Path(request["deploy"]), request["model"])
        except Exception as exc:  # noqa: BLE001 - reported as "not analysed: why", the build goes on
            answer["ops"] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}
    for name in request.get("tables", []):
        try:
            answer["tables"][name] = {"accepts": TABLES[name][1]()}
        except Exception as exc:  # noqa: BLE001 - a registry that cannot be read is "unknown"
            answer["tables"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    Path(request["out"]).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
