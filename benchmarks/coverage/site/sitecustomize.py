"""Declares torchvision's two C++ op schemas just before torchvision is first imported, in every process.

benchmarks/model_matrix.py puts this directory, then the package directory holding timm, ultralytics and
torchvision (MODELBUILD_MATRIX_SITE, default /work/matrix-site), on PYTHONPATH for the build and its workers.
The registry's torchvision 0.28 is a CUDA build: with the CPU torch its import fails ("operator torchvision::nms
does not exist"), and so does every import that touches it (transformers, timm, ultralytics, coremltools'
optional torchvision support). With `nms` and `qnms` declared first, its pure-Python model code loads; the
architectures the matrix builds need none of its C++ kernels. Nothing is imported until torchvision is.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

_KEEP: list[Any] = []  # a torch.library.Library removes its definitions when collected


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
            _KEEP.append(lib)
        return None  # the ordinary finders import it


sys.meta_path.insert(0, _DeclareTorchvisionOps())
