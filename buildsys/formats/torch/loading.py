"""Loading a PyTorch source (factory + state_dict) and shaping its calls: the helpers every torch step and runtime share.

Neutral ground: the torch steps and the torch runtimes both import it, it imports neither."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError, describe, install_command, not_installed

if TYPE_CHECKING:
    import torch

    from buildsys.config.data import Batch
    from buildsys.config.schema import Model

def torch_unavailable() -> str | None:
    """Why torch cannot run here, or None (checked without importing it)."""
    return not_installed(["torch"] if importlib.util.find_spec("torch") is None else [], "torch")


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


def _error(name: str, step: str, cause: str) -> StepError:
    prefix = f"model '{name}': " if name else ""
    suffix = f" (step {step})" if step else ""
    return StepError(f"{prefix}{cause}{suffix}")


def _forget_foreign(module_name: str, root: Path) -> None:
    """Drop cached modules of that dotted name (and its parents) that `root` defines but that were
    imported from elsewhere.

    A worker or a test session may load two projects whose factories share a module name; without
    this the second would silently get the first one's code.
    """
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        cached = sys.modules.get(prefix)
        local = root.joinpath(*parts[:i])
        if cached is None or not (local.is_dir() or local.with_suffix(".py").is_file()):
            continue  # not cached, or not a module of this project (an installed package): leave it
        places = [getattr(cached, "__file__", None), *list(getattr(cached, "__path__", None) or [])]
        places = [Path(p).resolve() for p in places if p]
        if places and not any(p.is_relative_to(root) for p in places):
            for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
                del sys.modules[key]
            return


def load_module(model: "Model", root: Path, *, name: str = "", step: str = "") -> "torch.nn.Module":
    """Import the factory with `root` on sys.path, call it, load the weights, return it in eval mode
    (a QAT module with its observers frozen and fake quantization on: `buildsys.formats.torch.qat.as_trained`).

    Every failure a user can cause (import error, factory raised, missing weights, state_dict
    mismatch) becomes a one-line StepError naming the model (`name`), the cause and the `step`.
    """
    import importlib

    import torch

    src = model.source
    if src.transformers:
        return _from_pretrained(Path(root) / src.transformers, name, step)
    if not src.factory:
        raise _error(name, step, "the model source is not a PyTorch factory")
    module_name, _, attr = src.factory.partition(":")
    root_str = str(Path(root).resolve())
    if root_str in sys.path:
        sys.path.remove(root_str)
    sys.path.insert(0, root_str)
    _forget_foreign(module_name, Path(root_str))
    importlib.invalidate_caches()
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # ImportError, SyntaxError, AttributeError, or whatever the module raises
        raise _error(name, step, f"factory '{src.factory}' could not be imported: {describe(exc)}") from exc
    try:
        module = factory(**src.kwargs)
    except Exception as exc:
        raise _error(name, step, f"factory '{src.factory}' raised {describe(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise _error(name, step, f"factory '{src.factory}' returned {type(module).__name__}, not a torch.nn.Module")
    if src.weights:
        path = Path(root) / src.weights
        if not path.is_file():
            raise _error(name, step, f"weights file '{src.weights}' does not exist")
        try:
            state = _read_state_dict(path)
        except Exception as exc:
            raise _error(name, step, f"weights '{src.weights}' could not be loaded: {describe(exc)}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]  # the common checkpoint wrapper {"state_dict": ..., "epoch": ...}
        try:
            module.load_state_dict(state, strict=True)
        except Exception as exc:
            raise _error(name, step, f"weights '{src.weights}' do not fit the factory's module: {_state_dict_problem(exc)}") from exc
    from buildsys.formats.torch.qat import as_trained

    # A quantization-aware-trained module (fake-quant modules in its graph) runs as trained: observers
    # frozen, fake quantization on (buildsys.formats.torch.qat); a float module is only put in eval mode.
    return as_trained(module).eval()


def _read_state_dict(path: Path) -> Any:
    """A checkpoint's tensors: a `.safetensors` file (read by safetensors, never unpickled) or a torch.save file
    loaded with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _from_pretrained(path: Path, name: str, step: str) -> "torch.nn.Module":
    """A transformers model directory as a causal LM in float32 and eval mode, read from disk only."""
    import torch

    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise _error(name, step, f"source.transformers needs the transformers package ({install_command('llm')})") from exc
    try:
        # float32 whatever dtype the checkpoint was saved in: the reference every artifact is held to.
        module = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # an unknown architecture, missing or mismatched weights, a broken config.json
        raise _error(name, step, f"transformers directory '{path.name}' could not be loaded as a causal LM: "
                     f"{describe(exc)}") from exc
    return module.eval()


def _state_dict_problem(exc: BaseException) -> str:
    """The first concrete line of load_state_dict's multi-line error (missing/unexpected/size mismatch)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines[1:] if line]
    return (detail[0] if detail else lines[0] if lines else type(exc).__name__).rstrip(".")


def example_args(model: "Model", batch: "Batch") -> tuple["torch.Tensor", ...]:
    """The batch's inputs as tensors, in the model's input order (what `module(*args)` takes)."""
    import torch

    return tuple(torch.from_numpy(batch.inputs[inp.name].copy()) for inp in model.inputs)


def trace_batch(model: "Model", batch: "Batch", dynamic: bool = True) -> "Batch":
    """The samples to trace/export with.

    A fixed first axis (an int) takes exactly that many samples. A dynamic first axis takes two:
    torch.export specialises a size-1 axis to the constant 1, and a tracer that sees batch 1 may bake
    it into reshapes; a single available sample is repeated. With `dynamic` false (an export with
    fixed shapes) it takes one: a fixed batch of 1 is what such artifacts are for.
    """
    import numpy as np

    from buildsys.config.data import Batch

    fixed = next((i.shape[0] for i in model.inputs if isinstance(i.shape[0], int)), None)
    want = fixed if fixed is not None else 2 if dynamic else 1
    inputs = {}
    for key, value in batch.inputs.items():
        if len(value) < want:
            value = np.concatenate([value] * -(-want // max(len(value), 1)), axis=0)
        inputs[key] = np.ascontiguousarray(value[:want])
    return Batch(inputs, None, batch.origin)


def _identifier(name: str) -> str:
    import re

    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else f"d_{ident}"


def dynamic_axes(model: "Model") -> dict[str, dict[int, str]]:
    """{input name: {axis: dim name}} for every axis the signature names with a string."""
    return {inp.name: {axis: str(dim) for axis, dim in enumerate(inp.shape) if isinstance(dim, str)}
            for inp in model.inputs if any(isinstance(d, str) for d in inp.shape)}


def export_dims(model: "Model") -> tuple[dict[int, Any] | None, ...]:
    """`dynamic_shapes` for torch.export: one entry per input, one shared Dim per dim name."""
    import torch

    dims: dict[str, Any] = {}
    shapes = []
    for inp in model.inputs:
        axes = {}
        for axis, dim in enumerate(inp.shape):
            if isinstance(dim, str):
                if dim not in dims:
                    dims[dim] = torch.export.Dim(_identifier(dim))
                axes[axis] = dims[dim]
        shapes.append(axes or None)
    return tuple(shapes)


def signature_module(module: "torch.nn.Module", model: "Model", args: tuple[Any, ...]) -> "torch.nn.Module":
    """`module`, or a thin wrapper returning a tuple in the signature's output order and, for a model that writes
    into its inputs, computing on copies of them (`inputs_copied`).

    Exporters name outputs by position: a model returning a dict (flattened in its own key order)
    or extra outputs would get the signature's names on the wrong tensors. A module that already
    returns one tensor per declared output, in a tuple, and leaves its inputs alone is exported as it is.
    """
    import torch

    result, mutates = _call_watching_inputs(module, args)
    n = len(model.outputs)
    ordered = (n == 1 and isinstance(result, torch.Tensor)) or (
        type(result) is tuple and len(result) == n and all(isinstance(r, torch.Tensor) for r in result))
    if ordered and not mutates:
        return module

    class SignatureOrder(torch.nn.Module):
        varargs = True  # forward(*inputs): torch.export wants dynamic_shapes as ((per-input specs),)

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            out = self.inner(*(_copies(inputs) if mutates else inputs))
            return out if ordered else tuple(outputs_in_order(out, model))

    return SignatureOrder(module).eval()


def inputs_copied(module: "torch.nn.Module", args: tuple[Any, ...]) -> "torch.nn.Module":
    """`module`, or, where it writes into its inputs in place (`x[:, :3] -= mean`, `x.clamp_()`, a batch norm
    updating statistics passed in; seen by their version counters on one call with copies of `args`), a wrapper
    handing it copies of them.

    A trace would record writes into graph inputs (the legacy ONNX exporter loses them); a functionalised
    torch.export program returns each write-back as an extra output, which Core ML refuses and ExecuTorch
    delivers ahead of the model's outputs. On copies, the writes are ordinary ops and the outputs the same:
    the model reads what it wrote either way."""
    import torch

    if not _call_watching_inputs(module, args)[1]:
        return module

    class InputsCopied(torch.nn.Module):
        varargs = True

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            return self.inner(*_copies(inputs))

    wrapper = InputsCopied(module)
    wrapper.training = False  # the wrapper's own flag: `.eval()` would recurse into `module` (an unlifted program refuses)
    return wrapper


def _call_watching_inputs(module: "torch.nn.Module", args: tuple[Any, ...]) -> tuple[Any, bool]:
    """`module`'s result on copies of `args` (which stay untouched), and whether it wrote into them in place."""
    import torch

    copies = _copies(args)
    versions = [a._version if isinstance(a, torch.Tensor) else 0 for a in copies]
    with torch.no_grad():
        result = module(*copies)
    return result, any(isinstance(a, torch.Tensor) and a._version != v for a, v in zip(copies, versions))


def _copies(args: Any) -> tuple[Any, ...]:
    import torch

    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def shapes_for(module: Any, shapes: tuple[Any, ...] | None) -> Any:
    """`dynamic_shapes` in the structure `module.forward` takes (see signature_module)."""
    if shapes is None:
        return None
    return (shapes,) if getattr(module, "varargs", False) else shapes
