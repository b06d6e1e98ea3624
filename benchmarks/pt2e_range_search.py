"""The histogram observers' range search at `convert_pt2e` (buildsys/formats/torch/pt2e.py, `fast_range_search`):
torchao's own loop against modelbuild's over Python floats, on public architectures with XNNPACK's static int8
quantizer, observers calibrated on the same seeded inputs; the ranges are compared too (they must be identical).

Needs the model matrix's package directory (benchmarks/coverage/site_packages.py), as the matrix does:
    PYTHONPATH=benchmarks/coverage/site:/work/matrix-site:. python benchmarks/pt2e_range_search.py [arch ...]
Writes benchmarks/results/pt2e_range_search.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ARCHS = ("hf-mobilevit-seg", "mobilevitv2_050", "resnet18")
CALLS = 8


def convert_seconds(arch: str, search: str) -> tuple[float, dict[str, tuple[float, float]]]:
    """Seconds of convert_pt2e with the `search` ('torchao' or 'modelbuild'), and each observer's range."""
    import torch
    from torchao.quantization.pt2e.observer import HistogramObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from benchmarks.coverage import zoo
    from buildsys.formats.executorch.quantize import quantizer

    q = quantizer(per_channel=True, dynamic=False)  # installs modelbuild's search
    if search == "torchao":
        HistogramObserver._non_linear_param_search = HistogramObserver.original_param_search  # type: ignore[attr-defined]
    spec = zoo.BY_NAME[arch]
    torch.manual_seed(0)
    shapes = [shape for _, shape, _ in spec.inputs]
    model = zoo.build(arch)
    prepared = prepare_pt2e(torch.export.export(model, tuple(torch.randn(1, *s) for s in shapes), strict=False).module(), q)
    torch.manual_seed(1)
    with torch.no_grad():
        for _ in range(CALLS):
            prepared(*(torch.randn(1, *s) for s in shapes))
    observers = {n: m for n, m in prepared.named_modules() if isinstance(m, HistogramObserver)}
    start = time.perf_counter()
    ranges = {n: tuple(float(v) for v in o._non_linear_param_search()) for n, o in observers.items()}
    convert_pt2e(prepared)
    return time.perf_counter() - start, ranges


def main(argv: list[str]) -> None:
    import subprocess

    if len(argv) == 3 and argv[0] == "--one":  # a child: one architecture, one search, in a fresh process
        seconds, ranges = convert_seconds(argv[1], argv[2])
        print(json.dumps({"seconds": round(seconds, 1), "ranges": ranges}))
        return
    results: dict[str, Any] = {}
    for arch in argv or ARCHS:
        runs = {}
        for search in ("torchao", "modelbuild"):
            out = subprocess.run([sys.executable, __file__, "--one", arch, search], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            runs[search] = json.loads(out)
        same = runs["torchao"]["ranges"] == runs["modelbuild"]["ranges"]
        results[arch] = {"observers": len(runs["torchao"]["ranges"]), "identical_ranges": same,
                         **{f"{s}_s": runs[s]["seconds"] for s in runs}}
        print(arch, results[arch], flush=True)
    out = REPO / "benchmarks" / "results" / "pt2e_range_search.json"
    out.write_text(json.dumps({"note": "seconds of the range searches plus convert_pt2e, one run each, 2-CPU host "
                               "(other builds running beside it: read the ratio)", "results": results},
                              indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
