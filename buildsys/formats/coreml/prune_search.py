"""`sparsity: auto` on Core ML: the highest pruning ratio whose package still meets the target's tolerance.

Run in the coreml worker, after conversion. Each candidate is the converted package pruned by magnitude at
one ratio (coremltools' `prune_weights`, as for a fixed `sparsity`), saved, and evaluated by the MIL
reference interpreter on the model's **validation set**; its outputs are compared with the converted
PyTorch module's outputs on the same samples by the check's comparisons (`verify.compare`) at the target's
resolved acceptance (`repair_goal`, filled in by the planner: the search never loosens it). That is the
comparison the check makes afterwards, on the same data, as in NNCF's accuracy-aware mode: pruning needs no
calibration data, and a ratio chosen on other samples missed the check on these (examples/digits: 0.6 passed
on the calibration set, then missed the check with cosine 0.6937 < 0.7). The error grows with the ratio,
so the search bisects the grid `RATIOS` (at most four packages for nine ratios) and keeps the highest ratio
that passed; the check still judges the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.data import Batch

#: The ratios `auto` chooses from, lowest first.
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class NoRatio(Exception):
    """Even the lowest ratio misses the tolerance: the record says what it measured."""

    def __init__(self, record: dict[str, Any]):
        super().__init__("no ratio meets the tolerance")
        self.record = record


def highest_ratio(prune: Callable[[float, Path], Path], reference: dict[str, "np.ndarray"], dense: Path,
                  model: "Model", root: Path, batch: "Batch", goal: dict[str, Any],
                  work: Path) -> tuple[float, dict[str, Any]]:
    """The highest of `RATIOS` whose pruned package (`prune(ratio, out_dir)` saves it, returns its path)
    meets `goal` against `reference` (PyTorch's outputs on `batch`), and the search's record: the goal, the
    dense package's size and every trial with its agreement and size. Raises NoRatio with the record when the
    lowest ratio misses."""
    trials: list[dict[str, Any]] = []

    def trial(i: int) -> bool:
        path = prune(RATIOS[i], work / f"sparsity-{RATIOS[i]:g}")
        passed, metrics = _judge(model, reference, _outputs(path, model, root, batch), goal, batch.labels)
        trials.append({"sparsity": RATIOS[i], "passed": passed, "metrics": metrics, "bytes": _bytes(path)})
        return passed

    low, high, best = 0, len(RATIOS) - 1, None  # bisect for the last index that passes
    while low <= high:
        mid = (low + high) // 2
        if trial(mid):
            best, low = mid, mid + 1
        else:
            high = mid - 1
    record = {"goal": goal, "samples": len(batch), "dense_bytes": _bytes(dense),
              "trials": sorted(trials, key=lambda t: t["sparsity"])}
    if best is None:
        raise NoRatio(record)
    return RATIOS[best], record


def describe(record: Any) -> list[str]:
    """The committed search record in words (explain, report)."""
    if not isinstance(record, dict):
        return []
    from buildsys.repair import _kb, _measured

    lines = [f"sparsity auto: tried {len(record.get('trials', []))} ratio(s) on {record.get('samples')} validation "
             f"sample(s) against PyTorch (dense package {_kb(record.get('dense_bytes'))})"]
    for t in record.get("trials", []):
        lines.append(f"sparsity {t['sparsity']:g}: {'passed' if t['passed'] else 'missed'}, {_measured(t['metrics'])}, "
                     f"{_kb(t['bytes'])}")
    return lines


def torch_outputs(module: Any, model: "Model", batch: "Batch") -> dict[str, "np.ndarray"]:
    """What the converted module (a TorchScript module or an ExportedProgram) computes on `batch`, in float32."""
    import numpy as np
    import torch

    call = module.module() if hasattr(module, "module") and not isinstance(module, torch.nn.Module) else module
    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for chunk in batch.chunks(32):
            out = call(*[torch.from_numpy(np.asarray(chunk[i.name])) for i in model.inputs])
            outs = out if isinstance(out, (tuple, list)) else [out]
            parts.append([o.detach().float().numpy() for o in outs])
    return {o.name: np.concatenate([p[i] for p in parts]) for i, o in enumerate(model.outputs)}


def _outputs(package: Path, model: "Model", root: Path, batch: "Batch") -> dict[str, "np.ndarray"]:
    import numpy as np

    from buildsys.formats.coreml.mil_runtime import CoreMLReference

    session = CoreMLReference().load(package, model, root)
    wanted = set(session.inputs)
    parts = [session.run({k: v for k, v in chunk.items() if k in wanted}) for chunk in batch.chunks(session.max_batch)]
    return {o.name: np.concatenate([p[i] for p in parts]) for i, o in enumerate(model.outputs)}


def _judge(model: "Model", reference: dict[str, "np.ndarray"], observed: dict[str, "np.ndarray"],
           goal: dict[str, Any], labels: "np.ndarray | None") -> tuple[bool, dict[str, Any]]:
    from buildsys.verify import compare

    passed, shown = True, {}
    for out in model.outputs:
        result = compare(out.name, out.kind, reference[out.name], observed[out.name], goal.get(out.name),
                         labels if out.kind == "scores" else None)
        passed = passed and result.passed
        shown[out.name] = {m.name: round(float(m.observed), 6) for m in result.metrics
                           if m.observed is not None and m.name in ("cosine", "top1_agreement", "max_rel", "range_error",
                                                               "accuracy")}
    return passed, shown


def _bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
