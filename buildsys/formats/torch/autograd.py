"""Custom autograd functions traced as the ops their forward runs, so TorchScript can save them.

A model may compute part of its forward in a `torch.autograd.Function` (a memory-efficient Swish, a
straight-through estimator, a gradient-reversal layer, transformers' Bloom GeLU). `torch.jit.trace` records
each call as one opaque Python op, which `torch.jit.save` refuses ("Could not export Python function call")
and no TorchScript consumer (coremltools, libtorch) could run. An exported artifact never runs backward, so
the function's forward is all it needs: while a trace runs, `Function.apply` calls the forward directly, with
a context that accepts what a forward may tell it (saved tensors, dirty or non-differentiable outputs) and
keeps nothing for a backward. torch.export and the TorchScript-based ONNX exporter inline these functions
themselves; only the TorchScript trace needs this.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class _ForwardOnly:
    """The `ctx` a custom function's forward gets when it runs without autograd: it may save tensors and mark
    outputs, as forwards do; nothing reads them back."""

    def __init__(self, inputs: tuple[Any, ...]) -> None:
        import torch

        self.needs_input_grad = tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in inputs)
        self.saved_tensors: tuple[Any, ...] = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors: Any) -> None:
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors: Any) -> None:
        self.saved_tensors = tensors

    def mark_dirty(self, *tensors: Any) -> None:
        pass

    def mark_non_differentiable(self, *tensors: Any) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize_grads = value


@contextlib.contextmanager
def autograd_functions_inlined() -> Iterator[None]:
    """While inside, every `torch.autograd.Function.apply` runs the function's forward as plain ops (a
    function with its own `setup_context` takes no ctx in forward); restored on exit."""
    import torch
    from torch.autograd.function import _is_setup_context_defined

    function = torch.autograd.Function
    original = function.__dict__["apply"]

    def apply(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_setup_context_defined(cls.setup_context):
            return cls.forward(*args, **kwargs)
        return cls.forward(_ForwardOnly(args), *args, **kwargs)

    setattr(function, "apply", classmethod(apply))  # noqa: B010 - a method replaced for the trace's duration
    try:
        yield
    finally:
        setattr(function, "apply", original)  # noqa: B010
