"""The torch runtimes: eager PyTorch (the reference), TorchScript, torch.export programs and the lite interpreter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch, loading
from buildsys.formats.torch.loading import load_module, outputs_in_order

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model


class TorchSession(Session):
    """Runs a torch callable (eager module, ScriptModule, exported GraphModule) on numpy feeds."""

    def __init__(self, fn: Callable[..., Any], model: "Model"):
        self.fn = fn
        self.model = model
        self.max_batch = fixed_batch(model)

    def use_threads(self, threads: int | None) -> int | None:
        """torch follows torch.set_num_threads, which the bench sets around its whole run."""
        import torch

        return int(torch.get_num_threads())

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


class TorchRuntime(Runtime):
    """A runtime of the torch wheel itself (eager, TorchScript, torch.export, the lite interpreter, a .mar's
    TorchScript): it needs torch, which the `torch` extra installs."""

    requires, extra = ("torch",), "torch"


def load_torchscript(path: Path, shown: str) -> Any:
    """torch.jit.load of a TorchScript file onto the CPU, in eval mode; a file it cannot load is a StepError that
    names it as `shown` ("'model.pt'", "'model.pt' in 'cnn.mar'")."""
    import torch

    with loading(f"{shown} is not a loadable TorchScript file"):
        module = torch.jit.load(str(path), map_location="cpu")
    return module.eval()


@register_runtime
class TorchEager(TorchRuntime):
    """The model's own factory run in eager PyTorch: how the reference outputs are made."""

    name = "torch-eager"

    def load(self, path: Path | None, model: "Model", root: Path) -> Session:
        return TorchSession(load_module(model, root), model)


@register_runtime
class TorchScriptRuntime(TorchRuntime):
    """TorchScript (traced or scripted) on the CPU, as the C++/mobile runtime would run it."""

    name = "torchscript"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        return TorchSession(load_torchscript(path, f"'{Path(path).name}'"), model)


@register_runtime
class TorchExportRuntime(TorchRuntime):
    """A torch.export ExportedProgram, run through `.module()` (its graph, not the Python code)."""

    name = "torch-export"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        import torch

        with loading(f"'{Path(path).name}' is not a loadable torch.export program"):
            program = torch.export.load(str(path))
        session = TorchSession(program.module(), model)
        if _fixed_batch_of_one(program):  # exported with dynamic: false
            session.max_batch = 1
        return session


def _fixed_batch_of_one(program: object) -> bool:
    """Whether a user input of the program has a first axis fixed to 1 (symbolic sizes are not ints)."""
    user_inputs = set(program.graph_signature.user_inputs)  # type: ignore[attr-defined]
    for node in program.graph.nodes:  # type: ignore[attr-defined]
        val = node.meta.get("val") if node.op == "placeholder" and node.name in user_inputs else None
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) and type(shape[0]) is int and shape[0] == 1:
            return True
    return False


@register_runtime
class LiteInterpreter(TorchRuntime):
    """torch.jit.mobile._load_for_lite_interpreter: the mobile bytecode interpreter, on the CPU."""

    name = "lite-interpreter"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        from torch.jit.mobile import _load_for_lite_interpreter

        with loading(f"the lite interpreter could not load '{Path(path).name}'"):
            module = _load_for_lite_interpreter(str(path), map_location="cpu")
        return TorchSession(module, model)
