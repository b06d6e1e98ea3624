"""Shared fixtures: a tiny real project (factory module, trained-free weights, data) in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.models import Tiny, make_model
from tests.helpers.shared import SHARED_REMOTE_MARKERS, shared_remote

#: The tests root (this directory: the tree of tests that mirrors buildsys/, and the shared helpers, models,
#: plugins and data beside it) and the repository root. A test computes its paths from these, never from its
#: own `__file__`, so that it can move within the tree.
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# `build` analyses a model's ops (torch.export and each converter's registry, in a subprocess, cached per
# project) before it runs anything; in a suite that builds hundreds of fresh projects that costs minutes and
# changes no verdict, so it is off here except in the tests of op coverage (tests/planning/test_op_coverage.py), which
# turn it on for their builds.
os.environ.setdefault("MODELBUILD_OP_COVERAGE", "0")

# --- strict runs: what the README's test command installs must be here, and every check must run ---

STRICT = "--strict-runtimes"
#: The prefix of a skip reason that no install step can fix on this host (another OS, no GPU, software
#: on no reachable registry): the only skips a strict run allows.
OUT_OF_REACH = "out of reach here: "


def out_of_reach(reason: str) -> str:
    """A skip reason that a strict run accepts: `reason` names what this host cannot have."""
    return OUT_OF_REACH + reason


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(STRICT, action="store_true",
                     help="Fail, instead of skipping, when a runtime or tool the README's test command installs is "
                          "missing (only what no install can provide here, such as macOS or a GPU, may skip).")


def missing_runtimes() -> list[str]:
    """Registered runtimes this host lacks although an install step would provide them, with why."""
    from buildsys.formats import runtimes

    missing = []
    for name, cls in sorted(runtimes().items()):
        runtime = cls()
        why = runtime.unavailable()
        if why and not runtime.out_of_reach():
            missing.append(f"{name}: {why}")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.getoption(STRICT) and not hasattr(session.config, "workerinput"):
        missing = missing_runtimes()
        if missing:
            pytest.exit(f"{STRICT}: {len(missing)} runtime(s) the README's test command installs are missing, so "
                        "their checks would say 'not run' and their tests skip:\n  " + "\n  ".join(missing), returncode=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and item.config.getoption(STRICT) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if OUT_OF_REACH not in reason:
            report.outcome = "failed"
            report.longrepr = (f"{STRICT}: skipped for a reason an install step fixes: {reason.removeprefix('Skipped: ')}")
    return None

TINYNET = '''\
"""A tiny MLP whose factory can count its calls, sleep or crash on request (kwargs)."""
import os
import signal
import time

import torch


def build(hidden: int = 8, calls: str = "", sleep: float = 0.0, crash: bool = False, fail: bool = False):
    if calls:
        with open(calls, "a") as f:
            f.write("x")
    if sleep:
        open(str(calls) + ".sleeping", "w").close()
        time.sleep(sleep)
    if crash:
        os.kill(os.getpid(), signal.SIGSEGV)
    if fail:
        raise RuntimeError("the factory refused to build")
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))
'''

def tiny_deploy(targets: str, *, calls: bool = True, calibration: bool = True) -> str:
    """A deploy.yaml for the tiny model (see make_tiny_project) with these `targets:` lines.
    `calls` counts factory calls in CALLS; `calibration` declares the calibration set."""
    return ("models:\n  tiny:\n    source:\n      factory: tinynet:build\n      weights: tiny.pt\n"
            + ("      kwargs: {calls: CALLS}\n" if calls else "")
            + "    inputs:\n      - {name: x, shape: [batch, 4]}\n    outputs:\n      - {name: y, kind: scores}\n"
            + "    data:\n" + ("      calibration: calib.npz\n" if calibration else "") + "      validation: val.npz\n"
            + "targets:\n" + targets)


DEPLOY = tiny_deploy("""\
  ts:
    model: tiny
    format: torchscript
  server:
    model: tiny
    format: onnx
    options:
      onnx: {opset: 18}
  int8:
    model: tiny
    format: onnx
    precision: int8
    options:
      onnx: {opset: 18}
      onnx-int8: {method: dynamic}
""")


@dataclass
class TinyProject:
    root: Path
    calls: Path

    @property
    def config(self) -> Path:
        return self.root / "deploy.yaml"

    def write(self, text: str) -> None:
        self.config.write_text(text.replace("CALLS", str(self.calls)))

    def edit(self, old: str, new: str, count: int = 1) -> None:
        """Replace `old` (which must be there) by `new`, `count` times (-1: everywhere)."""
        text = self.config.read_text()
        assert old in text, old
        self.config.write_text(text.replace(old, new, count))

    def factory_calls(self) -> int:
        return len(self.calls.read_text()) if self.calls.exists() else 0

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the real CLI in a subprocess, as a user would."""
        proc = subprocess.run([sys.executable, "-m", "buildsys", "-f", str(self.config), *args], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        if check and proc.returncode != 0:
            raise AssertionError(f"modelbuild {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc


def make_tiny_project(root: Path, deploy: str = DEPLOY) -> TinyProject:
    import numpy as np
    import torch

    root.mkdir(parents=True, exist_ok=True)
    (root / "tinynet.py").write_text(TINYNET)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.save(net.state_dict(), root / "tiny.pt")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 4)).astype("float32")
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    labels[:3] = (labels[:3] + 1) % 3  # the float model is not perfect: accuracy < 1
    np.savez(root / "val.npz", x=x, labels=labels)
    np.savez(root / "calib.npz", x=rng.standard_normal((32, 4)).astype("float32"))
    project = TinyProject(root, root / "calls.txt")
    project.write(textwrap.dedent(deploy))
    return project


# --- the end-to-end tiers share one remote cache per session (tests/helpers/shared.py) ---

def _shared_remote_if_marked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Inside: the session's shared remote cache, where the requesting test or module is marked `slow` or `zoo`."""
    if any(request.node.get_closest_marker(m) for m in SHARED_REMOTE_MARKERS):
        with shared_remote(tmp_path_factory):
            yield
    else:
        yield


@pytest.fixture(scope="module", autouse=True)
def _shared_remote_for_module(request: pytest.FixtureRequest,
                              tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A module marked as a whole (pytestmark): its module-scoped builds share the cache too."""
    yield from _shared_remote_if_marked(request, tmp_path_factory)


@pytest.fixture(autouse=True)
def _shared_remote_for_test(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield from _shared_remote_if_marked(request, tmp_path_factory)


# Tiny real models for in-process step tests (tests/helpers/models.py), one per test module.
@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return make_model(tmp_path_factory.mktemp("cnn"), "cnn")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return make_model(tmp_path_factory.mktemp("mlp"), "mlp")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return make_model(tmp_path_factory.mktemp("two"), "two")


@pytest.fixture(scope="module")
def cnn_onnx(cnn: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn-onnx")
    cnn.run("onnx-from-pytorch", out)
    return out / "model.onnx"


@pytest.fixture(scope="module")
def cnn_ts(cnn: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn-ts")
    cnn.run("torchscript-from-pytorch", out)
    return out / "model.pt"


@pytest.fixture(scope="module")
def cnn_reference(cnn: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn-ref")
    cnn.run("reference", out, extra={"source_format": "pytorch"})
    return out / "reference.npz"


@pytest.fixture
def tiny(tmp_path: Path) -> TinyProject:
    return make_tiny_project(tmp_path / "proj")
