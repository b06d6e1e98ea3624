"""Big models: ONNX with external data through export, ORT optimization, fp16, int8, the checks, a
bundle and `bundle verify`, with the peak RSS of every process held to a small multiple of the
largest weight file (streaming hashes, archives and extraction; no second copy of the weights).

The >2 GB build is marked `bigmodel` (several GB of disk, minutes); the same code paths run always
on a ~50 MB model with external data forced.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from buildsys.storage.archive import FIXED_MTIME, write_archive
from buildsys.release.bundle import MANIFEST
from tests.conftest import REPO, out_of_reach


BIGNET = '''\
"""A stack of wide Linear layers with seeded weights: no weights file, no download."""
import torch


def build(width: int = 2048, layers: int = 3, outputs: int = 8, seed: int = 0):
    dims = [width] * (layers + 1)
    blocks = []
    for i in range(layers):
        blocks += [torch.nn.Linear(dims[i], dims[i + 1], device="meta"), torch.nn.ReLU()]
    net = torch.nn.Sequential(*blocks, torch.nn.Linear(width, outputs, device="meta")).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # filled in place: the module is the only copy of its weights
        for p in net.parameters():
            p.uniform_(-(3 / width) ** 0.5, (3 / width) ** 0.5, generator=gen)
    return net.eval()
'''

DEPLOY = """\
models:
  big:
    source:
      factory: bignet:build
      kwargs: {{width: {width}, layers: {layers}}}
    inputs:
      - {{name: x, shape: [batch, {width}]}}
    outputs:
      - {{name: y, kind: values}}
    samples: 2
targets:
  optimized:
    model: big
    format: onnx-optimized
    options: {{onnx: {{dynamo: true, external_data: true}}}}
  fp16:
    model: big
    format: onnx
    precision: fp16
    via: [onnx-optimized]
    options: {{onnx: {{dynamo: true, external_data: true}}}}
  int8:
    model: big
    format: onnx
    precision: int8
    options:
      onnx: {{dynamo: true, external_data: true}}
      onnx-int8: {{method: dynamic}}
bundles:
  release:
    targets: [optimized, fp16, int8]
    version: 1.0.0
"""

# Peak RSS of one process, in bytes, of a command run under this wrapper (getrusage of its children:
# the build process and every worker it waited for).
_MEASURE = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr); sys.exit(rc)")


def make_big_project(root: Path, width: int, layers: int) -> Path:
    """Write the factory and deploy.yaml of a `layers` × Linear(width, width) model; return the config."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bignet.py").write_text(BIGNET)
    config = root / "deploy.yaml"
    config.write_text(DEPLOY.format(width=width, layers=layers))
    return config


def run_measured(config: Path, *args: str, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI as a user would; return the result and the peak RSS (bytes) of its processes."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "buildsys", "-f", str(config), *args],
                          check=False, cwd=config.parent, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    lines = proc.stderr.strip().splitlines()
    peak = int(lines[-1])
    proc.stderr = "\n".join(lines[:-1])
    assert proc.returncode == 0, f"modelbuild {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc, peak


def side_files(root: Path) -> dict[str, int]:
    """Size of every target's model.onnx.data under artifacts/."""
    return {p.parent.name: p.stat().st_size for p in sorted((root / "artifacts").glob("*/model.onnx.data"))}


def _check_external_everywhere(root: Path) -> None:
    import onnx
    from onnx.external_data_helper import uses_external_data

    for target in ("optimized", "fp16", "int8"):
        head = onnx.load(str(root / "artifacts" / target / "model.onnx"), load_external_data=False)
        assert any(uses_external_data(t) for t in head.graph.initializer), target
        assert (root / "artifacts" / target / "model.onnx").stat().st_size < 1 << 20, target
    fp16 = onnx.load(str(root / "artifacts/fp16/model.onnx"), load_external_data=False)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    int8 = onnx.load(str(root / "artifacts/int8/model.onnx"), load_external_data=False)
    assert any(n.op_type == "DynamicQuantizeLinear" or n.op_type.endswith("Integer") for n in int8.graph.node)


# --- the same code paths on ~50 MB, always ------------------------------------------------------------


def checks_passed(verify_output: str) -> list[str]:
    """The targets whose re-run check `bundle verify` printed as passed (not the signature,
    provenance or SBOM lines)."""
    return [line.split()[1] for line in verify_output.splitlines()
            if line.strip().startswith("passed") and line.rstrip().endswith("samples)")]


@pytest.mark.slow
def test_external_data_model_builds_bundles_and_verifies(tmp_path: Path) -> None:
    config = make_big_project(tmp_path / "proj", width=2048, layers=3)
    build, build_peak = run_measured(config, "build")
    root = config.parent
    assert build.stdout.count("passed") == 3, build.stdout  # one row per target
    _check_external_everywhere(root)
    sides = side_files(root)
    assert sides["optimized"] > 48e6 and sides["int8"] < sides["fp16"] < sides["optimized"]
    _, bundle_peak = run_measured(config, "bundle", "release")
    path = root / "artifacts/bundles/release-1.0.0.tar.gz"
    assert path.stat().st_size > sum(sides.values()) * 0.8  # random weights do not compress
    verify, verify_peak = run_measured(config, "bundle", "verify", str(path))
    assert "every sha256 matches" in verify.stdout and checks_passed(verify.stdout) == ["optimized", "fp16", "int8"], verify.stdout
    records = json.loads(next((root / ".modelbuild").glob("*.record.json")).read_text())
    assert records  # per-node seconds for the benchmark
    # Every process stays below 3x the largest weight file plus the interpreter and its imports.
    assert max(build_peak, bundle_peak, verify_peak) < 3 * max(sides.values()) + 1.2e9


def test_weights_past_2gb_need_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.errors import StepError
    from buildsys.formats.onnx import export
    from tests.helpers.models import make_model

    tiny = make_model(tmp_path / "m", "cnn")
    monkeypatch.setattr(export, "PROTOBUF_LIMIT", 100)  # the tiny model's weights stand in for 2 GB
    with pytest.raises(StepError, match=r"past the 2 GB a single ONNX file can hold: set options: "
                                        r"\{onnx: \{dynamo: true, external_data: true\}\}"):
        tiny.run("onnx-from-pytorch", tmp_path / "out")
    assert tiny.run("onnx-from-pytorch", tmp_path / "ext", dynamo=True, external_data=True)["external_data"] is True


# --- streaming archives, without converters ------------------------------------------------------------


def _fake_bundle(tmp_path: Path, size: int) -> tuple[Path, dict]:
    """A bundle holding one `size`-byte artifact file, written by the streaming writer."""
    from buildsys.release import bundle as b

    blob = tmp_path / "blob.bin"
    with open(blob, "wb") as f:
        f.writelines(hashlib.sha256(str(i).encode()).digest() * (1 << 15) for i in range(size >> 20))
    sha = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    manifest = {"schema": 1, "bundle": "r", "version": "1", "modelbuild": "0", "references": [], "artifacts": [{
        "target": "t", "model": "m", "format": "onnx", "precision": "fp32", "main": "t/model.onnx",
        "files": [{"path": "t/model.onnx", "sha256": sha.hexdigest(), "size": size}], "signature": {},
        "sources": {}, "chain": [], "toolchain": {}, "acceptance": {}, "check": {}, "reference": "",
        "model_config": {}}]}
    entries = {"t/model.onnx": blob, b.MANIFEST: json.dumps(manifest).encode()}
    return write_archive(entries, tmp_path / "r-1.tar.gz", "tar.gz"), entries


def test_streamed_archive_is_the_in_memory_archive(tmp_path: Path) -> None:
    import gzip
    import zipfile

    path, entries = _fake_bundle(tmp_path, 3 << 20)
    raw = io.BytesIO()  # the archive as earlier versions built it, in memory
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            data = entries[name] if isinstance(entries[name], bytes) else entries[name].read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                len(data), FIXED_MTIME, 0o644, 0, 0, "", "")
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    assert path.read_bytes() == out.getvalue()
    zipped = write_archive(entries, tmp_path / "r-1.zip", "zip")
    with zipfile.ZipFile(zipped) as zf:
        assert [i.filename for i in zf.infolist()] == sorted(entries)
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert zf.read(MANIFEST) == entries[MANIFEST]


def test_verify_streams_to_disk(tmp_path: Path) -> None:
    """Unpacking a 256 MB bundle raises the process's peak RSS by far less than the file's size."""
    path, _ = _fake_bundle(tmp_path, 256 << 20)
    script = textwrap.dedent(f"""
        import resource
        from pathlib import Path
        from buildsys.release import bundle
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        manifest = bundle.unpack_and_check(Path({str(path)!r}), Path({str(tmp_path / "out")!r}))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert int(proc.stdout) < 64 << 20, f"peak RSS grew by {int(proc.stdout) / 2**20:.0f} MiB"
    assert (tmp_path / "out/t/model.onnx").stat().st_size == 256 << 20
    assert not list(tmp_path.glob(".out.partial*"))


def test_verify_rejects_a_truncated_member_and_leaves_nothing(tmp_path: Path) -> None:
    from buildsys.release import bundle as b

    path, _ = _fake_bundle(tmp_path, 2 << 20)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(b.BundleError, match="cut.tar.gz is not a readable bundle archive"):
        b.unpack_and_check(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial"))


# --- the fp16 step's sort ------------------------------------------------------------------------------


def test_fp16_sort_is_linear_and_stable() -> None:
    """A 20,000-node chain listed backwards sorts in well under the time an O(n²) loop needs (minutes)."""
    from onnx import TensorProto, helper

    from buildsys.formats.onnx.fp16 import _sort_nodes

    n = 20_000
    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"], name=f"n{i}") for i in range(n)]
    side = helper.make_node("Identity", ["v0"], ["w"], name="side")  # independent: keeps its place
    graph = helper.make_graph([side, *nodes[::-1]], "g", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"v{n}", TensorProto.FLOAT, [1])])
    _sort_nodes(graph)  # its time on 20 000 nodes is a benchmark (benchmarks/big_model.py), not an assertion
    assert [node.name for node in graph.node] == ["side"] + [f"n{i}" for i in range(n)]


# --- over 2 GB ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.bigmodel
def test_model_over_2gb(tmp_path: Path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    if free < 24e9:
        pytest.skip(out_of_reach(f"needs about 24 GB of free disk under {tmp_path} (has {free / 1e9:.0f} GB)"))
    config = make_big_project(tmp_path / "proj", width=16384, layers=2)
    root = config.parent
    _, build_peak = run_measured(config, "build")
    _check_external_everywhere(root)
    sides = side_files(root)
    assert sides["optimized"] > 2**31, sides  # past protobuf's 2 GB limit
    _, bundle_peak = run_measured(config, "bundle", "release")
    verify, verify_peak = run_measured(config, "bundle", "verify", str(root / "artifacts/bundles/release-1.0.0.tar.gz"))
    assert checks_passed(verify.stdout) == ["optimized", "fp16", "int8"], verify.stdout
    largest = max(sides.values())
    assert build_peak < 3 * largest, f"build peak RSS {build_peak / 1e9:.1f} GB, largest weight file {largest / 1e9:.1f} GB"
    assert bundle_peak < largest / 4, f"bundle peak RSS {bundle_peak / 1e9:.1f} GB"  # streamed: the interpreter only
    assert verify_peak < 3 * largest, f"verify peak RSS {verify_peak / 1e9:.1f} GB"
