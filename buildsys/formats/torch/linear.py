"""Linear layers in disguise, made `nn.Linear` where a step loads the module, so every quantizer sees them.

Quantizers recognise linear layers by type or by op: `nn.Linear` for torchao's `quantize_` (ExecuTorch's
LLM schemes), `aten.linear` for PT2E's XNNPACKQuantizer (ExecuTorch and litert-torch int8). A module that
computes the same thing another way is skipped by all of them and ships float under an int8 name:
transformers' `pytorch_utils.Conv1D` (GPT-2, GPT-J, GPT-Neo, …: `addmm(bias, x, weight)` with the weight
stored [in, out]) is the common one, and any custom layer whose forward is a `matmul` / `addmm` with a
parameter weight is the same case.

So the test is what the module computes, not its type: a leaf module (no children) whose parameters are a
2-D `weight` and at most a 1-D `bias`, whose output on random inputs equals `F.linear(x, W, b)` for its
weight read either way round ([out, in] or [in, out]), is replaced by an `nn.Linear` holding the same
numbers. Modules of torch's own layer types are left alone (they are what quantizers already know), and
so is a weight tied to another module (replacing it would untie them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _linear_equivalent(module: "torch.nn.Module") -> "torch.nn.Linear | None":
    """An nn.Linear computing what `module` computes, or None where it is not a linear layer."""
    import torch

    params = dict(module.named_parameters(recurse=False))
    weight, bias = params.get("weight"), params.get("bias")
    if (type(module).__module__.startswith("torch.") or set(params) - {"weight", "bias"} or weight is None
            or weight.dim() != 2 or not weight.dtype.is_floating_point or any(True for _ in module.children())
            or (bias is not None and (bias.dim() != 1 or bias.dtype != weight.dtype))):
        return None
    generator = torch.Generator().manual_seed(0)
    for matrix in (weight, weight.t()):  # [out, in] as nn.Linear, or [in, out] as Conv1D
        out_features, in_features = matrix.shape
        if bias is not None and bias.shape[0] != out_features:
            continue
        x = torch.randn(2, 3, in_features, generator=generator, dtype=weight.dtype)
        try:
            with torch.no_grad():
                got = module(x)
        except Exception:  # noqa: BLE001 - not this way round (a width it refuses), or not one tensor in at all
            continue
        expected = torch.nn.functional.linear(x, matrix, bias)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            linear = torch.nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(matrix)
                if bias is not None:
                    linear.bias.copy_(bias)
            return linear.train(module.training)
    return None


def as_linear(root: "torch.nn.Module") -> list[str]:
    """Replace (in place) every linear layer in disguise under `root` by an equivalent nn.Linear at the
    same path; returns the paths replaced. A GraphModule (an exported or converted program) is left as is."""
    import torch

    if isinstance(root, torch.fx.GraphModule):
        return []
    owners: dict[int, int] = {}
    for module in root.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    replaced = []
    for path, module in list(root.named_modules()):
        weight = getattr(module, "weight", None)
        if not path or not isinstance(weight, torch.nn.Parameter) or owners.get(id(weight), 0) > 1:
            continue
        linear = _linear_equivalent(module)
        if linear is None:
            continue
        parent_path, _, name = path.rpartition(".")
        setattr(root.get_submodule(parent_path), name, linear)
        replaced.append(path)
    return replaced
