"""Model matrix: public architectures with seeded weights to every target family, with its platform preset.

The architectures (benchmarks/coverage/zoo.py): timm classifiers, transformers models from small configs
(vision, detection, segmentation, speech, text encoders and decoders), ultralytics detectors and segmenters
from their yaml, torchvision segmentation models; no download, `torch.manual_seed(0)`, small inputs. The
families, as a user would write them: server (`format: onnx`, fp32), android (`platform: android`: TFLite full
int8, calibrated), ios (`platform: ios`: Core ML fp16, checked by the MIL reference interpreter off macOS),
executorch fp32 and int8 (PT2E, calibrated), intel (`platform: intel`: OpenVINO NNCF int8) and web (fp32 ONNX
Runtime Web in headless Chromium). Every model gets seeded calibration (32 samples) and validation (16) data
saved as .npz in its project. Steps are bounded by `--timeout`; node-seconds are recorded per node.

The packages come from their own directory (benchmarks/coverage/site_packages.py says how to install it; a
loud error says so when it is missing):

    PYTHONPATH=. python benchmarks/model_matrix.py --sample 15                 # an early sample
    PYTHONPATH=. nohup nice -n 15 python benchmarks/model_matrix.py > model_matrix.log 2>&1 &   # all, resumable
    PYTHONPATH=. python benchmarks/model_matrix.py --only 'yolo*' --fresh

Writes benchmarks/results/model_matrix.json (cells already there are skipped unless --fresh) and renders
docs/coverage.md (with benchmarks/results/op_matrix.json when present).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.coverage import matrix, site_packages  # noqa: E402
from benchmarks.coverage.environment import describe_host  # noqa: E402
from benchmarks.coverage.zoo import ARCHS, UNSEEN, VOCAB, Arch  # noqa: E402

#: The families with each platform's preset and precision, as deploy.yaml target fields.
FAMILIES: dict[str, dict[str, Any]] = {
    "server": {"format": "onnx"}, "android": {"platform": "android"}, "ios": {"platform": "ios"},
    "executorch": {"format": "executorch"}, "executorch-int8": {"format": "executorch", "precision": "int8"},
    "intel": {"platform": "intel"}, "web": {"format": "web"},
}
ZOO = REPO / "benchmarks" / "coverage" / "zoo.py"
#: Samples of the generated data sets.
CALIBRATION, VALIDATION = 32, 16


def samples(arch: Arch, count: int, seed: int) -> dict[str, Any]:
    """`count` seeded samples of every input: normal images and features, quiet noise for waveforms, token ids
    in the small vocabulary, attention masks of ones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, shape, kind in arch.inputs:
        size = (count, *shape)
        if kind == "tokens":
            out[name] = rng.integers(3, VOCAB, size).astype(np.int64)
        elif kind == "mask":
            out[name] = np.ones(size, np.int64)
        elif kind == "audio":
            out[name] = (0.1 * rng.standard_normal(size)).astype(np.float32)
        else:
            out[name] = rng.standard_normal(size).astype(np.float32)
    return out


def write_data(arch: Arch) -> Callable[[Path], None]:
    """What writes data/<arch>-calibration.npz and -validation.npz (seeded by the architecture's name)."""

    def write(root: Path) -> None:
        import numpy as np

        seed = zlib.crc32(arch.name.encode())
        for which, count, offset in (("calibration", CALIBRATION, 0), ("validation", VALIDATION, 1)):
            path = root / "data" / f"{arch.name}-{which}.npz"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, **samples(arch, count, seed + offset))

    return write


def model_entry(arch: Arch) -> dict[str, Any]:
    """The deploy.yaml model of an architecture: the zoo factory, a dynamic batch axis, its data sets."""
    dtype = {"tokens": "int64", "mask": "int64"}
    return {"description": f"{arch.category}: {arch.package} {arch.builder}",
            "source": {"factory": "zoo:build", "kwargs": {"arch": arch.name}},
            "inputs": [{"name": n, "shape": ["batch", *shape], "dtype": dtype.get(kind, "float32")}
                       for n, shape, kind in arch.inputs],
            "outputs": [{"name": n, "kind": kind} for n, kind in arch.outputs],
            "data": {"calibration": f"data/{arch.name}-calibration.npz",
                     "validation": f"data/{arch.name}-validation.npz", "example": f"data/{arch.name}-validation.npz"}}


def pick(sample: int | None, only: list[str], offset: float = 0.0, archs: tuple[Arch, ...] = ARCHS) -> list[Arch]:
    """Architectures of `archs` matching any `--only` pattern (name or category), then `sample` of them spread over
    the list; in an order that takes the categories in turn, so that the first chunks (and a run stopped early)
    hold some of each."""
    chosen = matrix.spread([a for a in archs if not only or
                            any(fnmatch.fnmatchcase(a.name, p) or a.category == p for p in only)], sample, offset)
    by_category: dict[str, list[Arch]] = {}
    for arch in chosen:
        by_category.setdefault(arch.category, []).append(arch)
    queues = list(by_category.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    matrix.add_arguments(parser, "model_matrix", chunk=8, timeout=300.0, memory="4G", families=FAMILIES)
    parser.add_argument("--anchors", action="store_true", help="also run each fp32 converter alone (the anchor)")
    parser.add_argument("--site", help="the package directory (default $MODELBUILD_MATRIX_SITE or /work/matrix-site)")
    parser.add_argument("--unseen", action="store_true",
                        help="the architectures no matrix named before (zoo.UNSEEN, its rule) instead of the zoo's")
    opts = parser.parse_args()

    archs = pick(opts.sample, opts.only, opts.offset, UNSEEN if opts.unseen else ARCHS)
    site = site_packages.site_dir(opts.site)
    # transformers is in modelbuild's environment: a selection of transformers models alone needs no directory
    needs_site = any(a.package != "transformers" for a in archs)
    path = tuple(site_packages.check(site)) if needs_site else ()
    families = {f: FAMILIES[f] for f in opts.targets.split(",")}
    results = matrix.load(opts.out)
    results["meta"] = results.get("meta", {}) | describe_host() | (
        {"site": str(site), "site_packages": site_packages.installed(site),
         "site_mismatched": site_packages.mismatched(site)} if needs_site else {})
    results["families"] = families
    results.setdefault("models", {}).update({a.name: {"category": a.category, "package": a.package,
                                                      "builder": a.builder} for a in archs})
    print(f"{len(archs)} architectures × {len(families)} families", flush=True)
    rows = [matrix.Row(a.name, model_entry(a), write_data(a)) for a in archs]
    matrix.run(opts, rows, families, results, factory=ZOO, with_anchors=opts.anchors, rendered_as="model_json",
               extra_path=path)


if __name__ == "__main__":
    main()
