"""LibTorch loader benchmark: what the first LibTorch check of a toolchain pays (the compile), and each one after.

Compiles buildsys/formats/torch/libtorch_loader.cpp against the torch wheel's LibTorch into a fresh
cache directory (wall and CPU seconds of g++), then times a cache hit and one run of a traced MLP
on 64 samples through the compiled program (process start and torch::jit::load included).

    python benchmarks/libtorch_compile.py

Results go to benchmarks/results/libtorch_compile.json and are quoted in the README.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import numpy as np
    import torch

    from buildsys.config.schema import Model
    from buildsys.formats.torch import libtorch

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MODELBUILD_LIBTORCH_CACHE"] = tmp
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        binary, compile_s = libtorch.loader()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        libtorch.loader()
        hit_s = time.perf_counter() - started
        net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)).eval()
        torch.jit.save(torch.jit.trace(net, (torch.zeros(2, 4),)), f"{tmp}/model.pt")
        model = Model.model_validate({"source": {"factory": "m:f"}, "outputs": [{"name": "y"}],
                                      "inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]})
        session = libtorch.LibTorchSession(binary, Path(f"{tmp}/model.pt"), model, 0.0)
        started = time.perf_counter()
        session.run({"x": np.random.default_rng(0).random((64, 4), dtype=np.float32)})
        run_s = time.perf_counter() - started
        size = binary.stat().st_size
    result = {"compile_wall_s": round(compile_s, 1),
              "compile_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
              "cache_hit_s": round(hit_s, 4), "run_64_samples_s": round(run_s, 2),
              "binary_bytes": size,
              "torch": torch.__version__, "compiler": libtorch.compiler(), "cpus": os.cpu_count(),
              "platform": platform.platform(), "python": sys.version.split()[0]}
    out = HERE / "results" / "libtorch_compile.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
