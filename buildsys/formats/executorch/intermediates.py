"""A .pte's intermediates for localisation, seen through a stand-in: the same program re-lowered one op per
XNNPACK delegate call.

The shipped .pte cannot show them: ExecuTorch's devtools (an ETDump with a debug buffer, an ETRecord to
name its events) log a delegate call's inputs and outputs, and the .pte steps lower the whole graph into a
few XNNPACK delegate calls, so inside one only XNNPACK's per-op timings are logged, never a tensor (seen
with executorch 1.5.1). So the .pte steps save the torch.export program they lower (`debug/program.pt2` in
the node, a diagnostic never delivered with `model.pte`: quantized already for executorch-int8, with its calibrated scales), and this module lowers
that program again with `XnnpackPartitioner(per_op_mode=True)`: every op (with the quantize/dequantize
around it) is its own delegate call, run by the same ExecuTorch runtime and XNNPACK kernels with the ETDump
debug buffer on. Each call's output is one probe; int8 outputs are dequantized with the scale and zero point
of the quantize op that made them. The module path is the innermost `nn_module_stack` entry of the call's
compute op (the ETRecord's module hierarchy).

What it does not exercise: the shipped bytes, and XNNPACK's work across ops inside one delegate call (its
graph-level fusions, int8 tensors kept inside one call), so a fault only the whole-graph lowering makes
shows in the check but not in this table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from buildsys.localise import Probe

#: The program a .pte step saves in its node's diagnostics for localisation (stored with the node, never
#: delivered with the .pte: formats/base.py DIAGNOSTICS_DIR).
PROGRAM = "debug/program.pt2"
#: What the probes' tensor names say they come from.
STAND_IN = "per-op XNNPACK re-lowering of the .pte's program"
#: Bytes of the ETDump debug buffer per sample (every op's output of one call).
DEBUG_BUFFER = 1 << 26


class PerOpProgram:
    """The saved program lowered one op per delegate call, with what names and dequantizes its outputs."""

    def __init__(self, path: Path):
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        program = torch.export.load(str(path))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner(per_op_mode=True)],
                                              generate_etrecord=True)
        self.scales = _quantize_params(lowered.exported_program())
        executorch = lowered.to_executorch()
        self.buffer = bytes(executorch.buffer)
        self.etrecord = executorch.get_etrecord()

    def run(self, args: list[Any], modules: list[str]) -> list[tuple[str, str, str, "np.ndarray"]]:
        """(tensor, op, module, value) of every delegate call's output on one call's `args`, in order."""
        import numpy as np
        from executorch.devtools import Inspector
        from executorch.runtime import Runtime

        with tempfile.TemporaryDirectory() as tmp:
            pte, etdump, debug, record = (Path(tmp) / n for n in ("p.pte", "d.etdp", "d.bin", "r.bin"))
            pte.write_bytes(self.buffer)
            self.etrecord.save(str(record))
            program = Runtime.get().load_program(pte, enable_etdump=True, debug_buffer_size=DEBUG_BUFFER)
            program.load_method("forward").execute(args)
            program.write_etdump_result_to_file(str(etdump), str(debug))
            inspector = Inspector(etdump_path=str(etdump), etrecord=str(record), debug_buffer_path=str(debug))
            events = [e for block in inspector.event_blocks for e in block.events
                      if e.name == "DELEGATE_CALL" and e.debug_data]
        out = []
        for index, event in enumerate(events):
            value = event.debug_data[-1].detach().numpy()  # [inputs…, output]: the call's output is last
            hierarchy = {k.rstrip("_"): v for k, v in (event.module_hierarchy or {}).items()}
            if value.dtype.kind in "iu":
                # the call's own output is made by its last quantize op (the first one is its input's)
                params = next((self.scales[k] for k in reversed(list(hierarchy)) if k in self.scales), None)
                if params is None:
                    continue  # an int8 tensor of unknown scale says nothing comparable
                value = (value.astype(np.float32) - params[1]) * params[0]
            if value.dtype.kind != "f" or not value.ndim:
                continue
            compute = [k for k in hierarchy if not k.startswith(("quantized_decomposed_", "dim_order_ops_"))]
            # the output is the last compute op's: a module's output only where that op is the module's own
            # (a functional relu fused after a Linear leaves the call's output unnamed, matched by value)
            op = compute[-1] if compute else next(iter(hierarchy), "")
            module = _module(hierarchy[compute[-1]], modules) if compute else ""
            out.append((f"delegate call {index} ({STAND_IN})", op, module, value.astype(np.float32)))
        return out


def _module(stack: dict[str, tuple[str, str]], modules: list[str]) -> str:
    """The innermost path of an `nn_module_stack` that is one of `modules`."""
    known = set(modules)
    return next((p for p, _ in reversed(list(stack.values())) if p in known and p), "")


def _quantize_params(program: Any) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of every per-tensor quantize op inside the lowered program's delegates, by node name."""
    out: dict[str, tuple[float, int]] = {}
    for graph_module in program.graph_module.modules():
        original = getattr(graph_module, "original_module", None)
        if original is None:
            continue
        for node in original.graph.nodes:
            if node.op == "call_function" and "quantize_per_tensor" in str(node.target) \
                    and "dequantize" not in str(node.target) and len(node.args) >= 3:
                scale, zero = node.args[1], node.args[2]
                if isinstance(scale, (int, float)) and isinstance(zero, int):
                    out[node.name] = (float(scale), zero)
    return out


def saved_program(path: Path) -> Path:
    """The program saved in the node of the .pte at `path`; NotLocalisable, saying why, where there is none."""
    from buildsys.formats.runtime import NotLocalisable

    saved = Path(path).parent / PROGRAM
    if not saved.is_file():
        raise NotLocalisable(f"localisation not available for executorch: '{Path(path).name}' has no {PROGRAM} "
                             "beside it (the .pte was built before modelbuild saved the program it lowers, or "
                             "by hand): ExecuTorch's devtools see each XNNPACK delegate call of the .pte as one "
                             "operator, and the per-op re-lowering that shows each layer needs the program")
    return saved


def pte_intermediates(path: Path, model: Any, feeds: dict[str, "np.ndarray"], batch: int,
                      modules: list[str]) -> list["Probe"]:
    """Probes of the stand-in for the .pte at `path` (see the module's docstring), `batch` samples per call."""
    import numpy as np
    import torch

    from buildsys.localise import Probe

    saved = saved_program(path)
    lowered = PerOpProgram(saved)
    count = len(next(iter(feeds.values())))
    runs = []
    for s in range(count):  # one sample per call, padded to the program's fixed batch
        args = [torch.from_numpy(np.ascontiguousarray(np.repeat(feeds[i.name][s:s + 1], batch, axis=0)))
                for i in model.inputs]
        runs.append(lowered.run(args, modules))
    probes = []
    for group in zip(*runs):
        tensor, op, module, value = group[0]
        if all(v.shape == value.shape for *_, v in group):
            probes.append(Probe(tensor, op, module, np.concatenate([v[:1] for *_, v in group])))
    return probes
