"""The "torch-eager" runtime: the PyTorch factory itself (the reference), plus the session all torch runtimes share."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from buildsys.errors import StepError
from buildsys.runtimes import register
from buildsys.runtimes.base import Runtime, Session, fixed_batch

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model


def torch_unavailable() -> str | None:
    """Why torch cannot run here, or None (checked without importing it)."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install -c constraints.txt 'modelbuild[torch]')"
    return None


def outputs_in_order(result: Any, model: "Model") -> list[Any]:
    """A module's return value as a list in the signature's output order.

    A single tensor, a tuple/list (namedtuples included) or a dict keyed by output names are
    accepted; extra trailing outputs beyond the signature are ignored, missing ones are an error.
    """
    names = [o.name for o in model.outputs]
    if isinstance(result, dict):
        if all(n in result for n in names):
            items = [result[n] for n in names]
        else:
            items = list(result.values())
    elif isinstance(result, (tuple, list)):
        items = list(result)
    else:
        items = [result]
    if len(items) < len(names):
        raise StepError(f"the model returned {len(items)} output(s) but the signature declares {len(names)} "
                        f"({', '.join(names)})")
    return items[: len(names)]


class TorchSession(Session):
    """Runs a torch callable (eager module, ScriptModule, exported GraphModule) on numpy feeds."""

    def __init__(self, fn: Callable[..., Any], model: "Model"):
        self.fn = fn
        self.model = model
        self.max_batch = fixed_batch(model)

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import torch

        args = [torch.from_numpy(feeds[inp.name].copy()) for inp in self.model.inputs]
        with torch.inference_mode():
            result = self.fn(*args)
        out = []
        for item in outputs_in_order(result, self.model):
            tensor = item if isinstance(item, torch.Tensor) else torch.as_tensor(item)
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            out.append(tensor.detach().cpu().numpy())
        return out


@register
class TorchEager(Runtime):
    """The model's own factory run in eager PyTorch: how the reference outputs are made."""

    name = "torch-eager"
    packages = ("torch",)

    def unavailable(self) -> str | None:
        return torch_unavailable()

    def load(self, path: Path | None, model: "Model", root: Path) -> Session:
        from buildsys.steps.pytorch import load_module

        return TorchSession(load_module(model, root), model)
