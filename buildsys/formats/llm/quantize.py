"""Weight quantization of a decoder LM before its export to ExecuTorch (worker side): the schemes of
ExecuTorch's own LLM export (`examples/models/llama/source_transformation/quantize.py`, `-qmode int8`
and `-qmode 8da4w`), applied to the transformers module before torch.export.

- `weight-only`: every `nn.Linear` becomes `WeightOnlyInt8Linear`: int8 weights with one float32 scale
  per output channel (symmetric), `linear(x, w.float()) * scale + bias` at run time. What ExecuTorch's
  `-qmode int8` does (its own module drops a bias and keeps bf16 scales; this one does neither). The
  weights are stored as int8 and widened each call by the portable kernels (`_to_dim_order_copy`,
  `mm`): XNNPACK's partitioner does not take a linear whose weight is computed in the graph (observed:
  `aten::mm` among the program's portable operators; everything else is delegated). torchao's
  `IntxWeightOnlyConfig(weight_dtype=torch.int8)` instead was measured to be miscompiled by the XNNPACK
  partitioner of executorch 1.5.1 (its weight-dequantize → linear pattern is taken as *static* int8 with
  float activations; logits off by ~1e3), so it is not used.
- `8da4w`: torchao `quantize_` with `Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
  weight_granularity=PerGroup(group_size), intx_choose_qparams_algorithm="hqq_scale_only")` on every
  `nn.Linear`; a layer whose input width the default group size does not divide gets the largest multiple of
  32 below it that does (XNNPACK takes multiples of 32), else one scale per output channel (`PerAxis(0)`);
  a group size the user set is honoured exactly or refused, naming the layers it does not divide;
  the XNNPACK partitioner takes each such linear whole, with its per-token activation quantization
  (observed: no `mm` or torchao operator left outside the delegates).

Embeddings, norms and the KV cache stay float32 in both. torch and torchao are imported inside the
functions: the registry imports this module when modelbuild starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def weight_elements(lm: "torch.nn.Module") -> int:
    """Elements of every parameter and buffer of `lm` that is a weight (floating point, more than one
    element), each shared tensor once: the denominator of the quantized share."""
    seen: set[int] = set()
    total = 0
    for tensor in [*lm.parameters(), *lm.buffers()]:
        if id(tensor) in seen or tensor.numel() <= 1 or not tensor.dtype.is_floating_point:
            continue
        seen.add(id(tensor))
        total += tensor.numel()
    return total


def int8_weight_only(lm: "torch.nn.Module") -> int:
    """Replace every nn.Linear of `lm` (in place) by an int8 weight-only linear; returns the weight
    elements quantized."""
    import torch

    class WeightOnlyInt8Linear(torch.nn.Module):
        """int8 weight, float32 scale per output channel (symmetric), float32 bias; float activations."""

        weight: torch.Tensor
        scales: torch.Tensor

        def __init__(self, linear: torch.nn.Linear):
            super().__init__()
            weight = linear.weight.detach().float()
            scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
            self.register_buffer("weight", torch.round(weight / scale[:, None]).clamp(-128, 127).to(torch.int8))
            self.register_buffer("scales", scale)
            self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(),
                                                                           requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.nn.functional.linear(x, self.weight.to(x.dtype)) * self.scales
            return out if self.bias is None else out + self.bias

    quantized = 0
    for parent in list(lm.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, WeightOnlyInt8Linear(child))
                quantized += child.weight.numel()
    return quantized


#: XNNPACK takes int4 weight groups whose size is a multiple of this (executorch's node_visitor asserts it).
GROUP_STEP = 32


def group_for(width: int, default: int, step: int = GROUP_STEP) -> int | None:
    """The group size for a layer `width` inputs wide: the largest multiple of `step` at or below `default`
    that divides `width`; None where none does (the layer is quantized per output channel instead)."""
    for size in range(default - default % step, step - 1, -step):
        if size and width % size == 0:
            return size
    return None


def int8_dynamic_int4_weight(lm: "torch.nn.Module", group_size: int, exact: bool = False) -> dict[str, int]:
    """torchao 8da4w on every nn.Linear of `lm` (in place): int4 weights in groups of `group_size` where it
    divides the layer's input width; elsewhere, unless `exact` (a group size the user set, honoured exactly),
    in groups of `group_for(width, group_size)`, or per output channel where no group fits. Returns the
    layers quantized per group size ('per-channel' for those), a ValueError naming the layers an exact group
    size does not divide."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import IntxChooseQParamsAlgorithm

    linears = {name: m for name, m in lm.named_modules() if isinstance(m, torch.nn.Linear)}
    if exact:
        refused = [f"{name} ({m.in_features})" for name, m in linears.items() if m.in_features % group_size]
        if refused:
            raise ValueError(f"group_size {group_size} does not divide the input width of {len(refused)} linear "
                             f"layer(s): {', '.join(refused[:6])}{' …' if len(refused) > 6 else ''}")
    chosen = {name: group_size if m.in_features % group_size == 0 else None if exact else group_for(m.in_features, group_size)
              for name, m in linears.items()}
    layers: dict[str, int] = {}
    for size in sorted(set(chosen.values()), key=lambda g: g or 0):
        names = {name for name, g in chosen.items() if g == size}
        config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=getattr(torch, "int4"), weight_granularity=PerGroup(size) if size else PerAxis(0),
            intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY)  # ExecuTorch's default for 8da4w
        with torch.no_grad():
            quantize_(lm, config, filter_fn=lambda module, fqn: fqn in names)
        layers[str(size) if size else "per-channel"] = len(names)
    return layers


def describe(scheme: str, group_size: int | None) -> str:
    """The scheme in words, as the model card and the docs say it."""
    return {"dynamic": "int8 dynamic (PT2E XNNPACKQuantizer: int8 per-channel weights of linear layers, int8 "
                       "activations quantized per call)",
            "weight-only": "int8 weight-only (int8 per-channel weights of linear layers, float32 activations)",
            "8da4w": f"8da4w (int4 weights of linear layers in groups of {group_size}, int8 activations "
                     "quantized per token per call)"}.get(scheme, scheme)
