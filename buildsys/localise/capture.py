"""PyTorch's side of localisation: every module's output on the reference inputs, by module path, in
the order the modules finish (forward hooks; the module runs once, in eval mode, without gradients)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch


def module_outputs(module: "torch.nn.Module", args: tuple[Any, ...]) -> tuple[list[str], dict[str, "np.ndarray"], dict[str, str]]:
    """(paths in the order their forward finished, output by path, class name by path).

    A module's output is its tensor result, or the first tensor of a tuple (an LSTM's sequence). A module
    called more than once in one forward (a shared activation) has no single output: it is left out,
    as is the root (its outputs are the check's own)."""
    import torch

    order: list[str] = []
    outputs: dict[str, np.ndarray] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook(path: str) -> Any:
        def record(_module: Any, _inputs: Any, result: Any) -> None:
            calls[path] = calls.get(path, 0) + 1
            tensor = result if isinstance(result, torch.Tensor) else next(
                (r for r in result if isinstance(r, torch.Tensor)), None) if isinstance(result, (tuple, list)) else None
            if tensor is not None and tensor.is_floating_point():
                outputs[path] = tensor.detach().float().cpu().numpy().copy()
                if path not in order:
                    order.append(path)
        return record

    types = {}
    for path, child in module.named_modules():
        if path:
            handles.append(child.register_forward_hook(hook(path)))
            types[path] = type(child).__name__
    try:
        with torch.inference_mode():
            module(*args)
    finally:
        for handle in handles:
            handle.remove()
    shared = {p for p, n in calls.items() if n > 1}
    order = [p for p in order if p not in shared]
    return order, {p: outputs[p] for p in order}, types
