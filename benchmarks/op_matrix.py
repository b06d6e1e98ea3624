"""Op matrix: every op of PyTorch's OpInfo database a deployed model can contain, to every target family.

The ops and samples (benchmarks/coverage/opdb.py): each OpInfo of
`torch.testing._internal.common_methods_invocations.op_db` with float32 CPU samples, minus those no inference
graph can hold (random, in-place-only, sparse, backward-only, no float input, no tensor output…; each left out
with its reason, written to the JSON); of the rest, `--per-op` small samples each, seeded. Each sample is one
module (benchmarks/coverage/opcase.py: its float tensors as inputs with a batch axis of 1, the rest baked in).

Each module goes to every family at float precision: server (`format: onnx`), android (`tflite`), ios
(`coreml`: checked by the MIL reference interpreter off macOS, and labelled so), executorch, intel
(`openvino`) and web (`web`: ONNX Runtime Web in headless Chromium). Modules are built `--chunk` at a time, one
generated project each, with `modelbuild build -k --json -j J --timeout T`; each cell records verified or not,
the route that delivered (with rewrites) or why each route failed (first line, failing node); node-seconds per
node. Then each converter alone (benchmarks/coverage/anchors.py) on the same modules, judged the same way.

    PYTHONPATH=. python benchmarks/op_matrix.py --sample 60 --per-op 1     # an early sample
    PYTHONPATH=. nohup nice -n 15 python benchmarks/op_matrix.py > op_matrix.log 2>&1 &   # all ops, resumable
    PYTHONPATH=. python benchmarks/op_matrix.py --only 'fft.*' --only cdist --fresh      # some ops again
    PYTHONPATH=. python benchmarks/op_matrix.py --sample 60 --per-op 1 --offset 0.5 --no-anchors \
        --out benchmarks/results/op_matrix_holdout.json                                 # the second, held-out sample

Writes benchmarks/results/op_matrix.json (cells already there are skipped unless --fresh) and renders
docs/coverage.md (with benchmarks/results/model_matrix.json when present).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.coverage import matrix, opdb  # noqa: E402
from benchmarks.coverage.environment import describe_host  # noqa: E402

#: The families at float precision, as deploy.yaml target fields.
FAMILIES: dict[str, dict[str, Any]] = {
    "server": {"format": "onnx"}, "android": {"format": "tflite"}, "ios": {"format": "coreml"},
    "executorch": {"format": "executorch"}, "intel": {"format": "openvino"}, "web": {"format": "web"},
}
OPCASE = REPO / "benchmarks" / "coverage" / "opcase.py"


def selection(work: Path, per_op: int, max_numel: int, only: list[str]) -> dict[str, Any]:
    """The cases and left-out ops of the whole op_db, computed once per (torch, per_op, max_numel) and cached
    in `work`; with `only` patterns and no cache yet, of the matching ops alone (not cached)."""
    import torch

    path = work / f"selection-{torch.__version__}-{per_op}-{max_numel}.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    from torch.testing._internal.common_methods_invocations import op_db

    from benchmarks.coverage import opcase

    names = {opcase.op_name(op) for op in op_db}
    chosen = opdb.select(per_op=per_op, max_numel=max_numel,
                         only=set(pick_ops(sorted(names), None, only)) if only else None)
    data = {"torch": chosen.torch_version, "per_op": per_op, "max_numel": max_numel,
            "cases": [c.as_dict() | {"key": c.key} for c in chosen.cases], "left_out": chosen.left_out,
            "samples_left_out": chosen.samples_left_out}
    if not only:
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def pick_ops(names: list[str], sample: int | None, only: list[str], offset: float = 0.0) -> list[str]:
    """The ops to run: those matching any `--only` pattern, then `sample` of them evenly spaced (deterministic;
    `offset` shifts the picks, matrix.spread)."""
    return matrix.spread([n for n in names if not only or any(fnmatch.fnmatchcase(n, p) for p in only)], sample,
                         offset)


def write_case_data(case: dict[str, Any]) -> Any:
    """What writes the case's inputs (the sample's float tensors, batch axis 1) to data/<key>.npz."""

    def write(root: Path) -> None:
        path = root / "data" / f"{case['key']}.npz"
        if path.exists():
            return
        import numpy as np

        from benchmarks.coverage import opcase

        inputs = opcase.case(case["op"], case["index"]).example_inputs()
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {f"in{i}": t.numpy() for i, t in enumerate(inputs)}
        np.savez(path, **arrays)

    return write


def model_entry(case: dict[str, Any]) -> dict[str, Any]:
    """The deploy.yaml model of a case: the opcase factory, fixed shapes, its sample as example and validation."""
    data = f"data/{case['key']}.npz"
    return {"source": {"factory": "opcase:build", "kwargs": {"op": case["op"], "index": case["index"]}},
            "inputs": [{"name": f"in{i}", "shape": shape} for i, shape in enumerate(case["inputs"])],
            "outputs": [{"name": f"out{i}"} for i in range(len(case["outputs"]))],
            "data": {"example": data, "validation": data}}


def note_decompositions(results: dict[str, Any], keys: list[str]) -> None:
    """For each case with a failed cell: which of its ATen ops PyTorch decomposes into other ATen ops (the
    failure classes read it; benchmarks/coverage/decompose.py)."""
    import warnings

    from benchmarks.coverage import decompose, opcase

    warnings.simplefilter("ignore")
    for key in keys:
        case, cells = results["cases"][key], results.get("cells", {}).get(key, {})
        if "decomposes" in case or all(c.get("status") == "verified" for c in cells.values()):
            continue
        module = opcase.case(case["op"], case["index"])
        case["decomposes"] = decompose.decompositions(module, module.example_inputs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    matrix.add_arguments(parser, "op_matrix", chunk=40, timeout=120.0, memory="3G", families=FAMILIES)
    parser.add_argument("--per-op", type=int, default=2, help="samples per op (default 2)")
    parser.add_argument("--max-numel", type=int, default=1024, help="prefer samples with at most this many input "
                                                                    "elements (default 1024)")
    parser.add_argument("--no-anchors", action="store_true", help="skip the single-converter anchors")
    opts = parser.parse_args()

    chosen = selection(opts.work, opts.per_op, opts.max_numel, opts.only)
    all_ops = list(dict.fromkeys(c["op"] for c in chosen["cases"]))
    ops = set(pick_ops(all_ops, opts.sample, opts.only, opts.offset))
    cases = [c | {"key": opdb.case_key(c["op"], c["index"])} for c in chosen["cases"] if c["op"] in ops]
    families = {f: FAMILIES[f] for f in opts.targets.split(",")}
    results = matrix.load(opts.out)
    results["meta"] = describe_host()
    results["selection"] = {k: chosen[k] for k in ("torch", "per_op", "max_numel", "left_out", "samples_left_out")}
    results["selection"]["ops_with_cases"] = len(all_ops)
    results.setdefault("cases", {}).update({c["key"]: c for c in cases})
    print(f"{len(ops)} ops, {len(cases)} cases × {len(families)} families; "
          f"{len(chosen['left_out'])} ops left out", flush=True)
    rows = [matrix.Row(c["key"], model_entry(c), write_case_data(c)) for c in cases]
    matrix.run(opts, rows, families, results, factory=OPCASE, with_anchors=not opts.no_anchors,
               rendered_as=None if opts.offset else "op_json",  # a later sample's JSON is read by its name
               after_build=lambda r: note_decompositions(r, [c["key"] for c in cases]))


if __name__ == "__main__":
    main()
