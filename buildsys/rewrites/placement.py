"""Slice assignment out of place: `target[key] = value` as a pad and a constant mask, where the key is ints, unit-step
slices and Ellipsis over static sizes (the complex pairs' and the scatter family's `__setitem__` share it)."""

from __future__ import annotations

import torch


def placed(target: torch.Tensor, key: object, value: torch.Tensor | float) -> torch.Tensor | None:
    """`target` with target[key] = value, out of place, where `key` is ints, unit-step slices and Ellipsis over
    static sizes: the value padded into place and a constant mask picking it (no copy_ into a slice, which the
    legacy ONNX exporter writes as a ScatterND over index grids that onnx2tf and others trip on). None for any
    other key (index tensors, steps, None): the caller assigns in place."""
    import numpy as np

    from buildsys.rewrites.mechanism import constant

    keys = list(key) if isinstance(key, tuple) else [key]
    if any(k is None or isinstance(k, (torch.Tensor, bool)) or not isinstance(k, (int, slice, type(Ellipsis)))
           for k in keys) or sum(k is Ellipsis for k in keys) > 1:
        return None
    if Ellipsis in keys:
        at = keys.index(Ellipsis)
        keys[at:at + 1] = [slice(None)] * (target.dim() - len(keys) + 1)
    keys += [slice(None)] * (target.dim() - len(keys))
    if len(keys) != target.dim() or any(isinstance(n, torch.SymInt) for n in target.shape):
        return None
    pads: list[tuple[int, int]] = []
    region: list[int] = []
    dropped: list[int] = []
    for dim, (k, size) in enumerate(zip(keys, (int(n) for n in target.shape))):
        if isinstance(k, int):
            start, stop = (k % size, k % size + 1) if -size <= k < size else (None, None)
            dropped.append(dim)
        else:
            assert isinstance(k, slice)  # Ellipsis was expanded to slices above
            if k.step not in (None, 1):
                return None
            start, stop, _ = k.indices(size)
            stop = max(start, stop)
        if start is None or stop is None:
            return None
        pads.append((start, size - stop))
        region.append(stop - start)
    kept = [n for d, n in enumerate(region) if d not in dropped]
    part = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=target.dtype)
    part = part.to(target.dtype).expand(kept)  # (not broadcast_to: coremltools has no conversion for it)
    for dim in dropped:
        part = part.unsqueeze(dim)
    flat_pads = [n for before_after in reversed(pads) for n in before_after]
    mask = np.zeros([int(n) for n in target.shape], dtype=bool)
    mask[tuple(slice(a, int(n) - b) for (a, b), n in zip(pads, target.shape))] = True
    return torch.where(constant(mask), torch.nn.functional.pad(part, flat_pads) if any(flat_pads) else part, target)
