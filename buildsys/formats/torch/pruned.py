"""Structured (channel) pruning of the PyTorch module where a route loads it: whole channels removed with
torch-pruning's dependency graph, so every format made from it is smaller and faster in any runtime.

A step that loads the module (its options derive from `RewritableOptions`: the ONNX export, torch.export,
the TorchScript trace) prunes it when its `structured_sparsity` option (or the target's) is above zero,
before it exports anything: every artifact downstream (ONNX, TFLite, ExecuTorch, OpenVINO, Core ML) carries
the smaller module. No fine-tuning follows: the check judges the pruned artifact against the DENSE PyTorch
reference with the target's own acceptance, so a ratio the model cannot afford fails the build.

The layers whose output channels are the model's outputs (a classifier, a final conv) keep their channels,
so the signature is unchanged; the rest lose `ratio` of their output channels each, the channels of
smallest L2 weight magnitude (with their BatchNorm, the next layer's input channels and any channel a
residual add ties to them, as torch-pruning's groups say).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildsys.errors import install_command

if TYPE_CHECKING:
    import torch

    from buildsys.config.data import Batch
    from buildsys.config.schema import Model

#: Enters the key of every pruned node (kinds.ArtifactKind): bump when the same ratio removes other channels.
PRUNING_VERSION = 1
#: The pip package, and the extra that installs it.
PACKAGE = "torch-pruning"
EXTRA = "pruning"


def unavailable() -> str | None:
    """Why pruning cannot run here (torch-pruning missing), or None. Cheap: no import."""
    from importlib.util import find_spec

    if find_spec("torch_pruning") is None:
        return f"structured_sparsity needs {PACKAGE} ({install_command(EXTRA)})"
    return None


def parameter_count(module: "torch.nn.Module") -> int:
    return sum(p.numel() for p in module.parameters())


def prune_channels(module: "torch.nn.Module", model: "Model", batch: "Batch", ratio: float) -> dict[str, Any]:
    """Remove `ratio` of the output channels of every prunable layer of `module`, in place, but those of the
    layers that make the outputs. Returns what it did: the ratio, the parameter counts dense and pruned,
    the layers pruned and those kept whole. Raises ValueError when it cannot (the caller names the step)."""
    import torch
    import torch_pruning as tp

    from buildsys.formats.torch.loading import (
        example_args,
        outputs_in_order,
        trace_batch,
    )

    args = example_args(model, trace_batch(model, batch))
    if any(not torch.is_floating_point(a) for a in args):
        # torch-pruning traces the graph through autograd: integer inputs (token ids) reach it through an
        # embedding, whose width is the model's own to choose, so such models are not pruned here.
        raise ValueError("structured pruning traces the module through autograd and needs float inputs; "
                         f"inputs {', '.join(i.name for i, a in zip(model.inputs, args) if not torch.is_floating_point(a))} "
                         "are integers")

    def outputs(out: Any) -> list[Any]:
        return list(outputs_in_order(out, model))

    module.eval()
    with torch.no_grad():
        dense_out = outputs(module(*args))
    dense = parameter_count(module)
    with torch.enable_grad():  # the dependency graph is read from grad_fn links
        graph = tp.DependencyGraph().build_dependency(module, example_inputs=args, output_transform=outputs)
        kept = output_layers(graph)
        pruner = tp.pruner.MetaPruner(module, args, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=list(kept), output_transform=outputs)
        pruner.step()
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        pruned_out = outputs(module(*args))
    changed = [o.name for o, a, b in zip(model.outputs, dense_out, pruned_out) if tuple(a.shape) != tuple(b.shape)]
    if changed:  # defensive: the output layers were kept, so this is a graph torch-pruning misread
        raise ValueError(f"pruning changed the shape of outputs {', '.join(changed)}")
    names = {m: n for n, m in module.named_modules()}
    pruned = parameter_count(module)
    return {"ratio": ratio, "params_dense": dense, "params_pruned": pruned,
            "kept_whole": sorted(names.get(m, type(m).__name__) for m in kept),
            "layers": len([n for n in graph.module2node.values()
                           if isinstance(n.module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear))
                           and n.module not in kept])}


def output_layers(graph: Any) -> set[Any]:
    """The layers whose output channels reach a model output without passing through another such layer:
    walking back from each output through what keeps the channel axis (activations, norms, reshapes, adds)
    to the first conv, linear, embedding or recurrent layer on each path."""
    from torch_pruning import ops

    stops = {ops.OPTYPE.CONV, ops.OPTYPE.LINEAR, ops.OPTYPE.EMBED, ops.OPTYPE.LSTM, ops.OPTYPE.MHA}
    nodes = list(graph.module2node.values())
    todo = [n for n in nodes if not n.outputs]
    seen: set[int] = set()
    found: set[Any] = set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.type in stops:
            found.add(node.module)
        else:
            todo.extend(node.inputs)
    return found


def describe(record: dict[str, Any]) -> str:
    """A pruned module in words (for `explain` and the report)."""
    dense, pruned = record["params_dense"], record["params_pruned"]
    return (f"structured pruning: {record['ratio']:g} of the channels of {record['layers']} layers removed, "
            f"{dense:,} → {pruned:,} parameters ({pruned / dense:.0%}); kept whole: {', '.join(record['kept_whole'])}")
