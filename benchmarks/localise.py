"""What a localisation costs on the failing path: a residual CNN of N blocks (BatchNorm folded by every
converter) with one conv corrupted in its ONNX export and OpenVINO IR, localised on 4 samples.

Writes benchmarks/results/localise.json: per runtime, CPU and wall seconds, the module named, the rows
and the artifact tensors compared.

    python benchmarks/localise.py            # 32 blocks of 32 channels at 32x32
    python benchmarks/localise.py --blocks 8
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "localise.json"
sys.path.insert(0, str(REPO))


def main() -> None:
    import numpy as np
    import torch
    from torch import nn

    from buildsys.config.schema import Model
    from buildsys.localise import localise

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    args = parser.parse_args()

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x))) + x

    class Deep(nn.Module):
        def __init__(self, n: int, c: int) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, c, 3, padding=1)
            self.layers = nn.Sequential(*[Block(c) for _ in range(n)])
            self.fc = nn.Linear(c, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.layers(self.stem(x)).mean((2, 3)))

    torch.manual_seed(0)
    net = Deep(args.blocks, args.channels).train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, 32, 32))
    net.eval()
    faulty = f"layers.{args.blocks * 2 // 3}.conv"
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad.get_submodule(faulty).weight[0, 0] += 0.3
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    model = Model.model_validate({"source": {"factory": "deep:Deep"}, "inputs": [{"name": "x", "shape": ["batch", 3, 32, 32]}],
                                  "outputs": [{"name": "y"}]})
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, xml = Path(tmp) / "model.onnx", Path(tmp) / "model.xml"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(bad, (torch.from_numpy(x),), str(onnx_path), dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
        import openvino as ov

        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        for runtime, path in (("onnxruntime", onnx_path), ("openvino", xml)):
            cpu, wall = time.process_time(), time.perf_counter()
            found = localise(path, runtime, net, {"x": x}, model, tolerance={"max_rel": 1e-4})
            results.append({"runtime": runtime, "cpu_s": round(time.process_time() - cpu, 2),
                            "wall_s": round(time.perf_counter() - wall, 2), "faulty": faulty,
                            "named": found.first.module if found.first else None, "rows": len(found.rows),
                            "tensors": found.probes})
            print(results[-1])
    RESULTS.write_text(json.dumps({"blocks": args.blocks, "channels": args.channels, "samples": 4,
                                   "host": {"machine": platform.machine(), "python": platform.python_version()},
                                   "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
