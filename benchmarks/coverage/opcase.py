"""One small module per OpInfo sample of PyTorch's op suite: its float tensors as inputs, the rest baked in.

This file is copied verbatim into every project benchmarks/op_matrix.py generates (so its text enters the
models' cache keys) and imported by the project's deploy.yaml factory, `opcase:build`. It needs torch only.

A sample of `op_db` (torch.testing._internal.common_methods_invocations) is (input, args, kwargs). The module
takes every floating-point tensor found in them, in order, as one input with a leading batch axis of 1 (the
axis modelbuild's data and checks put samples on); integer and boolean tensors become buffers (constants of
the exported graph, as index tensors are in a deployed model); every other argument is baked in. Outputs are
every tensor the op returns, flattened, each made a float32 output with the batch axis: complex as
`view_as_real` (a trailing axis of 2), integer and boolean cast to float32, float64/float16 to float32.

Outputs are compared as PyTorch compares two implementations of an op (test_ops.py, `test_compare_cpu`: CPU
against CUDA): after the sample's `output_process_fn_grad`. It is the identity for almost every op; "we use this
function in linalg extensively to postprocess the inputs of functions that are not completely well-defined. Think
svd and multiplying the singular vectors by -1" (PyTorch's comment there): svd's samples compare |U|, S, |Vᴴ| or
U Vᴴ, which every valid SVD shares, and the module returns exactly that.

Samples are regenerated, not stored: `torch.manual_seed(SEED)` and then the op's `sample_inputs` iterated to
the index, which gives the same tensors on every host with the same torch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import nn

#: The seed every sample generator starts from.
SEED = 0


def op_name(op: Any) -> str:
    """The op's key in the matrix: its name, with the variant after a dot when it has one ('div.trunc_rounding')."""
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else str(op.name)


def find_op(name: str) -> Any:
    """The OpInfo named `name` (as `op_name` spells it)."""
    from torch.testing._internal.common_methods_invocations import op_db

    for op in op_db:
        if op_name(op) == name:
            return op
    raise KeyError(f"no OpInfo named {name!r} in torch {torch.__version__}'s op_db")


def samples(op: Any) -> Iterator[Any]:
    """The op's float32 CPU samples, from the fixed seed, in the order its generator yields them."""
    torch.manual_seed(SEED)
    yield from op.sample_inputs("cpu", torch.float32, requires_grad=False)


class _Slot:
    """Where an input (float tensor) or a buffer (any other tensor) goes back into the call's arguments."""

    def __init__(self, kind: str, index: int) -> None:
        self.kind, self.index = kind, index


def template(value: Any, floats: list[torch.Tensor], others: list[torch.Tensor]) -> Any:
    """`value` with each tensor replaced by a `_Slot`; float tensors appended to `floats`, others to `others`."""
    if isinstance(value, torch.Tensor):
        into, kind = (floats, "input") if value.is_floating_point() else (others, "buffer")
        into.append(value.detach().clone().contiguous())
        return _Slot(kind, len(into) - 1)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(template(v, floats, others) for v in value)
    if isinstance(value, dict):
        return {k: template(v, floats, others) for k, v in value.items()}
    return value


def fill(value: Any, inputs: list[torch.Tensor], buffers: list[torch.Tensor]) -> Any:
    """The inverse of `template`: each `_Slot` replaced by its input or buffer."""
    if isinstance(value, _Slot):
        return inputs[value.index] if value.kind == "input" else buffers[value.index]
    if isinstance(value, (list, tuple)):
        return type(value)(fill(v, inputs, buffers) for v in value)
    if isinstance(value, dict):
        return {k: fill(v, inputs, buffers) for k, v in value.items()}
    return value


def tensors_of(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) op result or sample (tuples, lists, dict values), in order; a complex value the
    `complex` rewrite holds as a real pair (buildsys/rewrites/pair.py) counts as the complex tensor it stands for
    (as_output takes its view_as_real, as the rewrite implements it)."""
    from buildsys.rewrites.pair import ComplexPair

    if isinstance(value, (torch.Tensor, ComplexPair)):
        yield value  # type: ignore[misc]
    elif isinstance(value, (list, tuple, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from tensors_of(item)


def as_output(t: torch.Tensor) -> torch.Tensor:
    """An op result as a float32 model output: complex → view_as_real, other dtypes cast to float32."""
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    return t if t.dtype == torch.float32 else t.to(torch.float32)


class OpCase(nn.Module):
    """`fn(sample.input, *sample.args, **sample.kwargs)` with the float tensors as batched inputs."""

    def __init__(self, fn: Callable[..., Any], sample: Any) -> None:
        super().__init__()
        self.fn = fn
        self.process = sample.output_process_fn_grad  # the identity, or what makes the result well defined
        self.example: list[torch.Tensor] = []
        others: list[torch.Tensor] = []
        self.call = template((sample.input, tuple(sample.args), dict(sample.kwargs)), self.example, others)
        for i, t in enumerate(others):
            self.register_buffer(f"const{i}", t, persistent=False)
        self.n_buffers = len(others)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        buffers = [getattr(self, f"const{i}") for i in range(self.n_buffers)]
        first, args, kwargs = fill(self.call, [x.squeeze(0) for x in xs], buffers)
        result = self.process(self.fn(first, *args, **kwargs))
        return tuple(as_output(t).unsqueeze(0) for t in tensors_of(result))

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """The sample's own float tensors with the batch axis: the inputs the matrix traces and checks with."""
        return tuple(t.unsqueeze(0) for t in self.example)


def case(name: str, index: int) -> OpCase:
    """The module of sample `index` of the op `name`."""
    op = find_op(name)
    for i, sample in enumerate(samples(op)):
        if i == index:
            return OpCase(op.op, sample).eval()
    raise IndexError(f"{name} has no sample {index}")


def build(op: str, index: int) -> nn.Module:
    """The deploy.yaml factory: `source: {factory: opcase:build, kwargs: {op: NAME, index: I}}`."""
    return case(op, index)
