"""Per-node int8 sensitivity and the keep-float search of executorch-int8's `keep_float: sensitive` (docs/repair.md).

PT2E as the `Candidates` of the one keep-float search (buildsys/formats/keep_float.py), which measures each
unit quantized alone, then keeps the most sensitive in float until the target's tolerance (`repair_goal`,
never loosened) holds on the search's data (keep_float.search_data). For PT2E:

- a unit is a node XNNPACKQuantizer annotated with a range of its own (`quantize.annotated_units`: a
  Linear, an add, a cat; the view ops that share a range go with their producer);
- a trial is prepare_pt2e with the other units' annotations dropped, the observers run on the calibration
  set, convert_pt2e, and the converted graph run on the search's data: int8 values through
  quantize/dequantize pairs, PyTorch's reference arithmetic for what XNNPACK runs. It is judged against the
  float program by the check's own comparisons (`comparison.compare`); the check then judges the lowered .pte
  in the ExecuTorch runtime, on the validation set, against PyTorch.

The search exports the program once at SEARCH_BATCH samples per call (a fixed first axis keeps its size):
fewer calls, and observers take min/max over every sample whatever the batch, so the nodes it keeps in float
quantize the program (exported at its own batch) to the same ranges.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Sequence

from buildsys.formats.keep_float import Candidates, Judge, NoRecipe, default_goal, search_data
from buildsys.formats.keep_float import search as keep_float_search

if TYPE_CHECKING:
    import torch

    import numpy as np

    from buildsys.config.schema import Model

#: Samples per call of the search's program, where the model's first axis is not fixed.
SEARCH_BATCH = 16

__all__ = ["NoRecipe", "SEARCH_BATCH", "search"]


class Trials:
    """The float program at the search's batch, the search's data in calls of it (its first `calibrating` calls
    the calibration set the observers see), and one quantization per trial."""

    def __init__(self, module: "torch.nn.Module", chunks: list[tuple[Any, ...]], counts: list[int],
                 per_channel: bool, dynamic: bool, calibrating: int | None = None, max_cells: int | None = None):
        import torch

        from buildsys.formats.executorch.quantize import recurrent_weights_as_linears
        from buildsys.formats.torch.embedding import embeddings_as_int8
        from buildsys.formats.torch.linear import weight_contractions_as_linear

        self.chunks, self.counts, self.per_channel, self.dynamic = chunks, counts, per_channel, dynamic
        self.calibration = chunks[:calibrating] if calibrating is not None else chunks
        # the float program as the step quantizes it (recurrent layers unrolled, einsum weights as linears, int8 tables)
        program, _ = recurrent_weights_as_linears(torch.export.export(module, chunks[0], strict=False), dynamic,
                                                 max_cells)
        self.float = program.module()
        weight_contractions_as_linear(self.float)
        embeddings_as_int8(self.float)
        self.units: list[str] = []

    def quantize(self, float_nodes: "Callable[[Any], bool] | None") -> "torch.fx.GraphModule":
        """The converted graph with the nodes `float_nodes` holds for left in float."""
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        from buildsys.formats.executorch.quantize import annotated_units, quantizer

        prepared = prepare_pt2e(copy.deepcopy(self.float), quantizer(per_channel=self.per_channel, dynamic=self.dynamic,
                                                                   float_nodes=float_nodes))
        if float_nodes is None:
            self.units = annotated_units(prepared)
        with torch.no_grad():
            for args in self.calibration[:1] if self.dynamic else self.calibration:  # dynamic: weights' observers
                prepared(*args)
        return convert_pt2e(prepared)

    def run(self, module: Any, model: "Model") -> dict[str, Any]:
        """Outputs by name over the search's data (each chunk's padding dropped)."""
        import numpy as np
        import torch

        from buildsys.formats.torch.loading import outputs_in_order

        parts: list[list[Any]] = []
        with torch.no_grad():
            for args, n in zip(self.chunks, self.counts):
                result = outputs_in_order(module(*args), model)
                parts.append([np.asarray(t.detach().numpy())[:n] for t in result])
        return {o.name: np.concatenate([p[i] for p in parts]) for i, o in enumerate(model.outputs)}


class PT2ECandidates(Candidates["torch.fx.GraphModule"]):
    """Converted PT2E graphs with chosen nodes' annotations dropped, run in PyTorch's reference arithmetic."""

    what = "quantized nodes"

    def __init__(self, trials: Trials, model: "Model") -> None:
        self.trials, self.model = trials, model

    def make(self, keep: Sequence[str], only: Sequence[str] | None, slot: str) -> "torch.fx.GraphModule":
        from buildsys.formats.executorch.quantize import float_filter

        if only is not None:  # every other unit in float
            return self.trials.quantize(float_filter([u for u in self.trials.units if u not in only]))
        return self.trials.quantize(float_filter(keep) if keep else None)

    def units(self, baseline: "torch.fx.GraphModule") -> list[str]:
        return list(self.trials.units)

    def run(self, artifact: "torch.fx.GraphModule") -> tuple[dict[str, "np.ndarray"], float | None]:
        return self.trials.run(artifact, self.model), None  # PyTorch's reference arithmetic: no XNNPACK latency

    def size(self, artifact: "torch.fx.GraphModule") -> int | None:
        """The converted graph's weights: int8 and float bytes (trials are not lowered to a .pte)."""
        from buildsys.formats.executorch.quantize import int8_weights

        int8, total = int8_weights(artifact)
        return int8 + 4 * (total - int8)


def search(step: Any, ctx: Any, module: "torch.nn.Module", per_channel: bool, dynamic: bool,
           batch: int) -> dict[str, Any]:
    """executorch-int8's keep_float 'sensitive' (a `StepContext` of its options; `batch`: the program's): the
    record (`kept_float`: the node names to keep in float). Raises NoRecipe when the search's bound is reached."""
    from buildsys.config.data import Batch
    from buildsys.formats.executorch.contract import fill
    from buildsys.formats.torch.loading import example_args

    data, split = search_data(ctx, ctx.options.calibration_samples)
    if data is None:
        raise step.fail(ctx, "keep_float 'sensitive' needs calibration data: add data.calibration to the model")
    n = len(data)
    parts = [(0, split), (split, n)] if split is not None else [(0, n)]  # calibration, then what the check judges
    fixed = next((i.shape[0] for i in ctx.model.inputs if i.shape and isinstance(i.shape[0], int)), None)

    def trials_at(size: int) -> Trials:
        chunks, counts = [], []
        for first, end in parts:  # no call mixes the two: the observers see calibration samples only
            for start in range(first, end, size):
                chunk = {k: v[start:min(start + size, end)] for k, v in data.inputs.items()}
                counts.append(len(next(iter(chunk.values()))))
                chunks.append(example_args(ctx.model, Batch(fill(chunk, size), None, data.origin)))
            if first == 0:
                calibrating = len(chunks)
        return Trials(module, chunks, counts, per_channel, dynamic, calibrating, ctx.options.max_unrolled_cells)

    try:
        trials = trials_at(fixed or min(SEARCH_BATCH, split or n))
    except Exception:  # a program that exports at its own batch only: the search runs at that batch
        trials = trials_at(batch)
    goal = default_goal(ctx.options.repair_goal, ctx.model.outputs, "int8")
    judge = Judge(ctx.model.outputs, goal, trials.run(trials.float, ctx.model), split)
    return keep_float_search(PT2ECandidates(trials, ctx.model), judge, "int8", deadline=ctx.deadline)[1].as_fact()
