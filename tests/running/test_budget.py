"""Bounded cost (buildsys/budget): each step runs under a time budget scaled to its model and a memory ceiling
on its worker's process tree; past either it is stopped with its Python stack, reported in one line that says
which limit, after how long and where, and the next route is tried.

The watchdog is tested on real processes (a Python script that grows or stalls, with a child); the budgets on
a real plan; end to end, a project of three models through the real ONNX exporters: one whose trace (the
TorchScript exporter's route) allocates past its target's memory ceiling, one whose trace never returns within
its target's time budget, and a plain one whose build the budgets do not touch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from buildsys.running.limits import BASE_SECONDS, MEMORY_ENV, MIN_CEILING, Budgets, host_memory, step_ceiling
from buildsys.running.stack import step_stack, where
from buildsys.running.watchdog import Watchdog, stopped_lines
from buildsys.errors import ConfigError
from tests.conftest import TinyProject

RUNAWAY = '''\
import faulthandler
import signal
import subprocess
import sys
import time

faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


def grow():
    held = []
    while True:
        held.append(b"x" * (32 << 20))  # 32 MB, written
        time.sleep(0.01)


def stall():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(f"child {child.pid}", flush=True)
    time.sleep(120)


print("starting", sys.argv[1], flush=True)
grow() if sys.argv[1] == "grow" else stall()
'''


def _watch(tmp_path: Path, what: str, seconds: float, ceiling: int | None) -> tuple[Watchdog, subprocess.Popen, Path]:
    script, log = tmp_path / "runaway.py", tmp_path / "step.log"
    script.write_text(RUNAWAY)
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, str(script), what], stdout=err, stderr=err)
    return Watchdog(proc.pid, seconds, ceiling), proc, log


def _until_over(dog: Watchdog) -> str:
    while (limit := dog.over()) is None:
        time.sleep(dog.next_wait())
    return limit


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_process_past_its_memory_ceiling_is_stopped_with_its_stack(tmp_path: Path) -> None:
    dog, proc, log = _watch(tmp_path, "grow", seconds=120, ceiling=300 << 20)
    limit = _until_over(dog)
    stop = dog.stop(limit, log, root=tmp_path)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    lines = RUNAWAY.splitlines()
    grow = lines.index('        held.append(b"x" * (32 << 20))  # 32 MB, written') + 1  # allocating, or sleeping after it
    assert limit == "memory" and dog.peak > 300 << 20
    assert stop.line().startswith("stopped: ") and "over its 315 MB memory ceiling after" in stop.line()
    line = next(n for n in (grow, grow + 1) if stop.where == f"in runaway.py:{n} (grow)")
    assert stop.line().endswith(stop.where)
    assert stop.stack[0] == f"runaway.py:{line} (grow)" and stop.log_tail == ["starting grow"]
    assert "starting grow" in "\n".join(stopped_lines({**stop.as_dict(), "basis": "a test"}))


def test_a_process_past_its_time_budget_is_stopped_with_its_children(tmp_path: Path) -> None:
    dog, proc, log = _watch(tmp_path, "stall", seconds=3, ceiling=None)
    limit = _until_over(dog)
    child = int(next(line for line in log.read_text().splitlines() if line.startswith("child ")).split()[1])
    stop = dog.stop(limit, log, root=tmp_path)
    assert limit == "time" and proc.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child), "the stalled process's child outlived it"
    line = RUNAWAY.splitlines().index("    time.sleep(120)") + 1
    assert stop.line() == f"stopped: still running at its 3 s time budget (peak {stop.line().split('(peak ')[1]}"
    assert f"in runaway.py:{line} (stall)" in stop.line()


def test_a_watched_subprocess_is_killed_past_either_limit(tmp_path: Path) -> None:
    """The op analysis' probe runs this way (buildsys.planning.coverage)."""
    from buildsys.running.watchdog import run_watched

    python = [sys.executable, "-c"]
    assert run_watched(python + ["import time; time.sleep(60)"], tmp_path, dict(os.environ), 1.0) == "time"
    assert run_watched(python + ["x = [b'x' * (32 << 20) for _ in range(40)]"], tmp_path, dict(os.environ), 60,
                       300 << 20) == "memory"
    assert run_watched(python + ["pass"], tmp_path, dict(os.environ), 60) is None


def test_the_step_thread_is_found_among_the_dumped_threads() -> None:
    dump = textwrap.dedent('''\
        Thread 0x00007f01 (most recent call first):
          File "/usr/lib/python3.11/threading.py", line 320 in wait
          File "/x/buildsys/running/worker.py", line 61 in watch

        Current thread 0x00007f02 (most recent call first):
          File "/usr/lib/python3.11/selectors.py", line 415 in select
        ''')
    assert [f.function for f in step_stack(dump)] == ["select"]  # no thread runs a step: the interrupted one
    dump += textwrap.dedent('''\

        Thread 0x00007f03 (most recent call first):
          File "/v/lib/python3.11/site-packages/numpy/linalg.py", line 9 in solve
          File "/v/lib/python3.11/site-packages/onnx2tf/onnx2tf.py", line 610 in convert
          File "/x/buildsys/formats/tflite/saved_model.py", line 140 in _run
          File "/x/buildsys/running/worker.py", line 37 in handle
        ''')
    frames = step_stack(dump)
    assert where(frames) == "in numpy/linalg.py:9 (solve), from onnx2tf/onnx2tf.py:610 (convert)"


def test_step_memory_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert step_ceiling("1G") == 1 << 30 and step_ceiling("700M") == 700 << 20  # an explicit size is kept
    assert step_ceiling("1%") == max(host_memory() // 100, MIN_CEILING)  # a share never goes below the floor
    monkeypatch.setenv(MEMORY_ENV, "25%")
    assert step_ceiling() == max(host_memory() // 4, MIN_CEILING)
    with pytest.raises(ConfigError, match=r"MODELBUILD_STEP_MEMORY='lots' is not a size \(write e.g. 8G, 800M or 40%"):
        step_ceiling("lots")
    assert 0 < host_memory() <= int(Path("/proc/meminfo").read_text().split()[1]) * 1024


def test_the_step_memory_option_is_checked(tiny: TinyProject) -> None:
    out = tiny.run("build", "--help").stdout
    assert "--step-memory" in out and "MODELBUILD_STEP_MEMORY" in out
    bad = tiny.run("build", "--step-memory", "lots", check=False)
    assert bad.returncode == 2 and "'lots' is not a size: write e.g. 6G, 800M or 40%" in bad.stderr


def test_budgets_scale_with_the_weights_and_yield_to_limits_and_timeout(tiny: TinyProject) -> None:
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project

    tiny.edit("  server:\n    model: tiny\n", "  server:\n    model: tiny\n    limits: {time: 20 min, memory: 3 GB}\n")
    planner = open_project(tiny.config).planner
    plan = make_plan(planner, PlanRequest())
    budgets, weights = Budgets(planner, plan), (tiny.root / "tiny.pt").stat().st_size
    ts = budgets.for_node(plan.dag.nodes[plan.dag.target_nodes["ts"]])
    assert ts.seconds == pytest.approx(BASE_SECONDS + 600 * weights / 1e9) and ts.memory is None
    assert ts.basis == f"5 min + 10 min per GB of weights ({weights / 1e6:.0f} MB)"
    onnx = plan.dag.nodes[plan.dag.target_nodes["server"]]  # shared by `server` and `int8`: the largest limit
    assert budgets.for_node(onnx).seconds == 1200 and budgets.for_node(onnx).memory == 3 * 10**9
    assert Budgets(planner, plan, timeout=42).for_node(onnx).seconds == 1200  # the target's limits win
    assert Budgets(planner, plan, timeout=42).for_node(plan.dag.nodes[plan.dag.target_nodes["ts"]]).seconds == 42


def test_a_limit_without_a_known_unit_is_a_config_error_naming_the_field(tiny: TinyProject) -> None:
    from buildsys.config.load import load

    tiny.edit("  ts:\n    model: tiny\n", "  ts:\n    model: tiny\n    limits: {time: 3 fortnights}\n")
    with pytest.raises(ConfigError, match=r"deploy.yaml:\d+: targets.ts.limits.time: .*a budget in s: write a "
                                          r"number \(of s\) or a value with one of the units ms, s, min, h"):
        load(tiny.config)


# --- end to end -----------------------------------------------------------------------------------------------

HOG = '''\
"""Models whose trace (the TorchScript ONNX exporter's route) runs away, in memory or in time, and a plain one."""
import time

import torch
from torch import nn


class Grows(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if torch.jit.is_tracing():  # a converter that runs away: 64 MB more every 20 ms, up to 4 GB
            held = []
            for _ in range(64):
                held.append(torch.ones(16 << 20))
                time.sleep(0.02)
        return self.fc(x)


class Stalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if torch.jit.is_tracing():  # a converter that never returns
            time.sleep(600)
        return self.fc(x)


def build(kind):
    torch.manual_seed(0)
    return {"grows": Grows, "stalls": Stalls, "plain": lambda: nn.Sequential(nn.Linear(4, 3))}[kind]()
'''

HOG_DEPLOY = """\
models:
  grows:
    source: {factory: "hog:build", kwargs: {kind: grows}}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y}]
  stalls:
    source: {factory: "hog:build", kwargs: {kind: stalls}}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y}]
  plain:
    source: {factory: "hog:build", kwargs: {kind: plain}}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y}]
targets:
  grows-server: {model: grows, format: onnx, limits: {memory: 1500 MB}}
  stalls-server: {model: stalls, format: onnx, limits: {time: 45 s}}
  plain-server: {model: plain, format: onnx}
"""


def _modelbuild(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "buildsys", *args], cwd=root, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def hogs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("hogs")
    (root / "hog.py").write_text(HOG)
    (root / "deploy.yaml").write_text(HOG_DEPLOY)
    return root, _modelbuild(root, "build", "-j", "1", "-k")


def _dropped(root: Path, target: str) -> dict:
    [record] = json.loads((root / "deploy.lock").read_text())["routes"][target]["dropped"]
    return dict(record)


def _line(code: str) -> int:
    return HOG.splitlines().index(code) + 1


@pytest.mark.slow
def test_a_step_past_its_memory_ceiling_is_stopped_and_the_next_route_delivers(hogs: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, build = hogs
    assert build.returncode == 0, build.stdout + build.stderr
    record = _dropped(root, "grows-server")
    lines = [_line("                held.append(torch.ones(16 << 20))"), _line("                time.sleep(0.02)")]
    assert record["route"] == ["pytorch", "onnx"] and record["node"] == "grows/onnx"
    assert record["reason"].startswith("stopped: ") and "over its 1.50 GB memory ceiling after" in record["reason"]
    line = next(n for n in lines if f"in hog.py:{n} (forward)" in record["reason"])  # where the worker was
    assert "from torch/onnx/" in record["reason"]  # the call from the step into the converter
    lock = json.loads((root / "deploy.lock").read_text())
    assert lock["targets"]["grows-server"]["route"] == ["pytorch", "pt2", "onnx"]
    assert f"grows-server: route pytorch → onnx dropped at grows/onnx: {record['reason']}" in build.stdout
    assert "its stack, innermost first:" in build.stdout and f"    hog.py:{line}" in build.stdout


@pytest.mark.slow
def test_a_step_past_its_time_budget_is_stopped_and_the_next_route_delivers(hogs: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, build = hogs
    record = _dropped(root, "stalls-server")
    assert record["reason"].startswith("stopped: still running at its 45 s time budget (peak ")
    assert f"in hog.py:{_line('            time.sleep(600)')} (forward), from torch/onnx/" in record["reason"]
    lock = json.loads((root / "deploy.lock").read_text())
    assert lock["targets"]["stalls-server"]["route"] == ["pytorch", "pt2", "onnx"]
    built = json.loads((root / ".modelbuild/deploy.record.json").read_text())["nodes"]
    assert built["verify:stalls-server"]["built"]["budget"]["seconds"] == 45  # the budget each node ran under


@pytest.mark.slow
def test_a_normal_build_runs_under_its_scaled_budget_untouched(hogs: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, build = hogs
    lock = json.loads((root / "deploy.lock").read_text())
    assert "plain-server" not in lock.get("routes", {}) and lock["targets"]["plain-server"]["route"] == ["pytorch", "onnx"]
    built = json.loads((root / ".modelbuild/deploy.record.json").read_text())["nodes"]
    for name in ("plain/onnx", "plain/reference", "verify:plain-server"):
        budget = built[name]["built"]["budget"]
        assert budget == {"seconds": BASE_SECONDS, "memory": step_ceiling(),
                          "basis": "5 min + 10 min per GB of weights (0 MB)"}, name
        assert 0 < built[name]["built"]["peak_rss"] < budget["memory"]
    again = _modelbuild(root, "build", "-j", "1")  # a stopped route is not tried again under the same key
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stdout
