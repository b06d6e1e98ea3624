"""Time the fp16 step's topological sort of an ONNX graph (`buildsys.formats.onnx.fp16._sort_nodes`) on
chains of 20 000 to 160 000 nodes stored in reverse order: linear work should grow linearly.

    python benchmarks/fp16_sort.py [--runs 3]

tests/e2e/test_big_model.py holds the order it produces; the time is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time


def graph(n: int):  # noqa: ANN201 - an onnx GraphProto
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"], name=f"n{i}") for i in range(n)]
    side = helper.make_node("Identity", ["v0"], ["w"], name="side")
    return helper.make_graph([side, *nodes[::-1]], "g", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info(f"v{n}", TensorProto.FLOAT, [1])])


def main() -> None:
    from buildsys.formats.onnx.fp16 import _sort_nodes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    print("| nodes | median s | min s | max s |\n|---:|---:|---:|---:|")
    for n in (20_000, 40_000, 80_000, 160_000):
        times = []
        for _ in range(opts.runs):
            g = graph(n)
            started = time.perf_counter()
            _sort_nodes(g)
            times.append(time.perf_counter() - started)
        print(f"| {n} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")


if __name__ == "__main__":
    main()
