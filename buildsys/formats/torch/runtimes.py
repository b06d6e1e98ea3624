"""The torch runtimes: eager PyTorch (the reference), TorchScript, torch.export programs and the lite interpreter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch
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


@register_runtime
class TorchEager(Runtime):
    """The model's own factory run in eager PyTorch: how the reference outputs are made."""

    name = "torch-eager"
    packages = ("torch",)

    requires, extra = ("torch",), "torch"

    def load(self, path: Path | None, model: "Model", root: Path) -> Session:
        return TorchSession(load_module(model, root), model)


@register_runtime
class TorchScriptRuntime(Runtime):
    """TorchScript (traced or scripted) on the CPU, as the C++/mobile runtime would run it."""

    name = "torchscript"
    packages = ("torch",)

    requires, extra = ("torch",), "torch"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        import torch

        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise StepError(f"'{Path(path).name}' is not a loadable TorchScript file: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        return TorchSession(module.eval(), model)


@register_runtime
class TorchExportRuntime(Runtime):
    """A torch.export ExportedProgram, run through `.module()` (its graph, not the Python code)."""

    name = "torch-export"
    packages = ("torch",)

    requires, extra = ("torch",), "torch"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        import torch

        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise StepError(f"'{Path(path).name}' is not a loadable torch.export program: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
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
class LiteInterpreter(Runtime):
    """torch.jit.mobile._load_for_lite_interpreter: the mobile bytecode interpreter, on the CPU."""

    name = "lite-interpreter"
    packages = ("torch",)

    requires, extra = ("torch",), "torch"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        from torch.jit.mobile import _load_for_lite_interpreter

        try:
            module = _load_for_lite_interpreter(str(path), map_location="cpu")
        except Exception as exc:
            text = str(exc).strip()
            raise StepError(f"the lite interpreter could not load '{Path(path).name}': {type(exc).__name__}: "
                            f"{text.splitlines()[0] if text else ''}") from exc
        return TorchSession(module, model)
