"""Bad inputs a user can produce: each gets one line naming the file (and line), a non-zero exit, and
nothing written or marked fresh. A modelbuild bug gets its own exit code and says it is one."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from buildsys.storage.lock import Lock
from tests.conftest import TinyProject

BUNDLE = "bundles:\n  release:\n    targets: [server]\n    version: 1.0.0\n"


def nothing_written(tiny: TinyProject) -> bool:
    return not (tiny.root / "deploy.lock").exists() and not (tiny.root / "artifacts").exists()


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_a_deploy_file_that_is_not_utf8_names_the_line(tiny: TinyProject) -> None:
    text = tiny.config.read_text().replace("  tiny:\n", "  tiny:  # caf\u00e9\n", 1)
    tiny.config.write_bytes(text.encode("latin-1"))
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    assert one_error_line(proc) == "error: deploy.yaml:2: byte 0xe9 is not UTF-8 text (save the file as UTF-8)"
    assert nothing_written(tiny)


def test_a_recursive_yaml_anchor_is_an_error_not_a_recursion(tiny: TinyProject) -> None:
    tiny.config.write_text("a: &x [*x]\n")
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    assert one_error_line(proc) == ("error: deploy.yaml:1: a[0]: an alias refers to a node that contains it (a "
                                    "recursive anchor) (anchors may only repeat a finished node)")


def test_an_alias_bomb_is_refused_before_it_fills_memory(tiny: TinyProject) -> None:
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10^9 values
    tiny.config.write_text("\n".join(lines) + "\n")
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    assert "the file expands to more than 1,000,000 values through its aliases" in one_error_line(proc)


def test_a_data_file_that_is_no_array_archive_names_the_file(tiny: TinyProject) -> None:
    tiny.edit("validation: val.npz", "validation: tinynet.py")
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    assert "deploy.yaml:13: models.tiny.data.validation: tinynet.py is not a readable .npz/.npy file" in one_error_line(proc)


@pytest.mark.parametrize("option, message", [(("-j", "0"), "0 is not in the range x>=1"),
                                             (("--timeout", "-1"), "-1.0 is not in the range x>0")])
def test_build_options_out_of_range_are_usage_errors(tiny: TinyProject, option: tuple[str, str], message: str) -> None:
    proc = tiny.run("build", *option, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert nothing_written(tiny)


def test_an_unknown_platform_is_named_before_the_missing_format(tiny: TinyProject) -> None:
    tiny.config.write_text(tiny.config.read_text() + "  desktop:\n    model: tiny\n    platform: windows\n")
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith("error: deploy.yaml:") and "targets.desktop.platform: 'windows' is not one of ios, android, server" in line
    assert "format" not in line


def test_two_inputs_with_one_name_are_refused(tiny: TinyProject) -> None:
    tiny.edit("      - {name: x, shape: [batch, 4]}\n", "      - {name: x, shape: [batch, 4]}\n      - {name: x, shape: [batch, 2]}\n")
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    assert "deploy.yaml:7: models.tiny.inputs: inputs[1] is named 'x' like inputs[0]; each input needs its own name" in one_error_line(proc)
    assert nothing_written(tiny)


def test_plan_refuses_a_bundle_of_an_unknown_target(tiny: TinyProject) -> None:
    tiny.config.write_text(tiny.config.read_text() + BUNDLE.replace("[server]", "[server, int9]"))
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    assert "bundles.release.targets[1]: unknown target 'int9' — did you mean 'int8'?" in one_error_line(proc)


def test_labels_that_do_not_fit_the_samples_are_bad_data_at_plan_time(tiny: TinyProject) -> None:
    with np.load(tiny.root / "val.npz") as f:
        np.savez(tiny.root / "val.npz", x=f["x"], labels=f["labels"][:10])
    proc = tiny.run("build", check=False)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "deploy.yaml:13: models.tiny.data.validation: val.npz: 'labels' has shape [10], but there are 48 samples" in line
    assert nothing_written(tiny)


def test_inputs_with_different_sample_counts_are_bad_data(tiny: TinyProject) -> None:
    tiny.edit("      - {name: x, shape: [batch, 4]}\n", "      - {name: x, shape: [batch, 4]}\n      - {name: z, shape: [batch, 2]}\n")
    with np.load(tiny.root / "val.npz") as f:
        np.savez(tiny.root / "val.npz", x=f["x"], z=np.zeros((47, 2), "float32"), labels=f["labels"])
    proc = tiny.run("plan", check=False)
    assert proc.returncode == 2
    assert "val.npz: the inputs hold different numbers of samples (x: 48, z: 47)" in one_error_line(proc)


def test_nan_validation_data_is_blamed_on_the_data_not_the_artifact(tiny: TinyProject) -> None:
    with np.load(tiny.root / "val.npz") as f:
        x = f["x"].copy()
        labels = f["labels"]
    x[5:9, 1] = np.nan
    np.savez(tiny.root / "val.npz", x=x, labels=labels)
    proc = tiny.run("build", "server", check=False)
    assert proc.returncode == 1
    assert "validation: val.npz: input 'x' holds NaN or inf in 4 of 48 samples (the first: sample 5)" in proc.stdout
    assert "acceptance not met" not in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    nodes = Lock.read(tiny.root / "deploy.lock").nodes
    assert "tiny/reference" not in nodes and "verify:server" not in nodes  # nothing judged, nothing fresh
    assert not (tiny.root / "artifacts/server").exists()


def test_a_reference_with_labels_for_other_samples_fails_the_check_instead_of_dropping_accuracy() -> None:
    from buildsys.comparison import compare

    ref = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    result = compare("y", "scores", ref, ref, {"max_accuracy_drop": 0.01}, labels=np.array([0, 1, 2]))
    assert not result and result.problem == "labels have shape [3], but the output has 4 samples: accuracy cannot be judged"


# --- bundle archives as users make them --------------------------------------------------------------


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle of the tiny project, built once and unpacked."""
    from tests.conftest import make_tiny_project

    tiny = make_tiny_project(tmp_path_factory.mktemp("bundle") / "proj")
    tiny.config.write_text(tiny.config.read_text() + BUNDLE)
    tiny.run("bundle", "release")
    out = tiny.root / "unpacked"
    with tarfile.open(tiny.root / "artifacts/bundles/release-1.0.0.tar.gz") as tar:
        tar.extractall(out, filter="data")
    return out


def _repack(src: Path, dest: Path, kind: str, prefix: str) -> None:
    """Pack `src` the way `tar -czf x.tar.gz .` (prefix './'), `tar -czf x.tar.gz dir/` or zip -r would."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if kind == "tar.gz":
        with tarfile.open(dest, "w:gz") as tar:
            tar.add(src, arcname=prefix.rstrip("/") or ".", recursive=False)  # the directory entry itself
            for p in files:
                tar.add(p, arcname=prefix + p.relative_to(src).as_posix())
    else:
        with zipfile.ZipFile(dest, "w") as zf:
            if prefix:
                zf.writestr(prefix, b"")  # a directory entry, as zip -r writes one
            for p in files:
                zf.write(p, prefix + p.relative_to(src).as_posix())


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
@pytest.mark.parametrize("prefix", ["./", "release-1.0.0/", "./release-1.0.0/"])
def test_bundle_verify_accepts_the_layouts_tar_and_zip_make(unpacked: Path, tmp_path: Path, kind: str, prefix: str) -> None:
    archive = tmp_path / f"repacked.{kind}"
    _repack(unpacked, archive, kind, prefix)
    proc = subprocess.run([sys.executable, "-m", "buildsys", "bundle", "verify", str(archive)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "passed   server (onnx, 48 samples)" in proc.stdout


@pytest.mark.parametrize("content, message", [
    (b"", "is not a readable bundle archive: it is neither a tar archive (gz, bz2, xz or plain) nor a zip file"),
    (b"hello, not an archive\n", "is not a readable bundle archive: it is neither a tar archive"),
    ("truncated", "is not a readable bundle archive: "),
    ("twice", "bundle entry 'manifest.json' appears twice"),
])
def test_bundle_verify_refuses_broken_archives_in_one_line(unpacked: Path, tmp_path: Path, content: object,
                                                           message: str) -> None:
    archive = tmp_path / "bad.tar.gz"
    if content == "truncated":
        _repack(unpacked, tmp_path / "full.tar.gz", "tar.gz", "")
        archive.write_bytes((tmp_path / "full.tar.gz").read_bytes()[:600])
    elif content == "twice":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for _ in range(2):
                info = tarfile.TarInfo("manifest.json")
                data = (unpacked / "manifest.json").read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        archive.write_bytes(buf.getvalue())
    else:
        archive.write_bytes(content)  # type: ignore[arg-type]
    proc = subprocess.run([sys.executable, "-m", "buildsys", "bundle", "verify", str(archive)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1
    assert message in one_error_line(proc)


# --- modelbuild's own bugs ---------------------------------------------------------------------------


def test_an_internal_error_says_it_is_a_bug_and_exits_3(tiny: TinyProject, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from buildsys.cli import main as cli

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug in modelbuild")

    monkeypatch.setattr(cli, "open_project", broken)
    result = CliRunner().invoke(cli.cli, ["-f", str(tiny.config), "plan"])
    assert result.exit_code == 3
    assert "internal error: KeyError: 'a bug in modelbuild'" in result.output
    assert "This is a bug in modelbuild, not in your files" in result.output
    saved = Path(result.output.split("traceback saved in ")[1].split(" (exit code")[0])
    assert "KeyError" in saved.read_text() and "Traceback" in saved.read_text()
    saved.unlink()

