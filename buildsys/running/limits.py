"""How long and how much memory one step may take (torch-free: the orchestrator computes it per node).

Time: `BASE_SECONDS` plus `SECONDS_PER_GB` for each GB of the model's weights (the weights file, a
TorchScript / .pt2 / ONNX source file, a transformers directory's weight files; for a factory without a
weights file, 4 bytes per parameter as the op analysis counted them). A target's `limits.time`, else
`build --timeout`, replaces it. Memory: a share of the host's memory (the smaller of the machine's and
its cgroup's limit) for each worker with its children, `MODELBUILD_STEP_MEMORY` ('8G', '40%'), or a
target's `limits.memory`. A node shared by several targets takes the most generous of their limits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buildsys.planning.expand import Dag
    from buildsys.planning.node import Node
    from buildsys.planning.plan import Plan
    from buildsys.planning.planner import Planner

#: A step's wall time with no weights at all: a fresh worker's imports (2–25 s) plus a small model's
#: conversion, many times over on a loaded machine.
BASE_SECONDS = 300.0
#: What each GB of weights adds: exports, conversions and calibration passes grow with the weights.
SECONDS_PER_GB = 600.0
#: The environment variable that sets each worker's memory ceiling, and its default share of the host's memory.
MEMORY_ENV, DEFAULT_MEMORY_SHARE = "MODELBUILD_STEP_MEMORY", "50%"
#: No ceiling is set below this: a worker with TensorFlow or coremltools imported weighs about 1 GB.
MIN_CEILING = 1 << 30
_UNLIMITED = 1 << 60  # cgroup files write "max" (v2) or a huge number (v1) for no limit
_GB = 10**9  # deploy.yaml's GB


@dataclass(frozen=True)
class StepBudget:
    """What one step may take: `seconds` of wall time and `memory` bytes of resident memory for its worker
    with its children (None: the executing host's default ceiling, `step_ceiling()`); `basis` says where the
    time comes from, in words (for the record and the failure)."""

    seconds: float
    memory: int | None = None
    basis: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The budget as the build record keeps it (`built.budget`)."""
        return {"seconds": round(self.seconds, 1), **({"memory": self.memory} if self.memory else {}),
                **({"basis": self.basis} if self.basis else {})}


def scaled_seconds(weight_bytes: int) -> float:
    """The default time budget of a step on a model whose weights take `weight_bytes`."""
    return BASE_SECONDS + SECONDS_PER_GB * weight_bytes / _GB


def duration(seconds: float) -> str:
    """'45 s', '5 min', '1 h 30 min': a budget in words."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min".removesuffix(" 0 min")


def size(nbytes: float) -> str:
    """'12.5 GB', '1.50 GB', '640 MB': memory in words, in deploy.yaml's units (GB = 10^9 bytes)."""
    if nbytes >= 1e10:
        return f"{nbytes / 1e9:.1f} GB"
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def host_memory() -> int:
    """Bytes of memory this process may use: the machine's (MemTotal) or, when smaller, its cgroup's limit
    (v2 `memory.max`, v1 `memory.limit_in_bytes`)."""
    total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if not total:
        try:
            import psutil

            total = int(psutil.virtual_memory().total)
        except ImportError:
            total = 8 * _GB
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit in bytes, None where there is none or it cannot be read."""
    candidates = [Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")]
    try:  # cgroup v2: the process's own group ("0::/path")
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::") and line[3:].strip("/"):
                candidates.insert(0, Path("/sys/fs/cgroup") / line[3:].strip("/") / "memory.max")
    except OSError:
        pass
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text != "max" and text.isdigit() and int(text) < _UNLIMITED:
            return int(text)
    return None


def step_ceiling(setting: str | None = None) -> int:
    """Each worker's memory ceiling in bytes: `setting` or MODELBUILD_STEP_MEMORY ('8G', '512M', '40%' of the
    host's memory), default half of it; a share never below `MIN_CEILING`. ConfigError for a malformed size."""
    from buildsys.errors import ConfigError

    text = setting or os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY_SHARE
    try:
        value = parse_memory(text, host_memory())
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MEMORY_ENV}={text!r} is not a size", hint="write e.g. 8G, 800M or 40% (of the host's memory)")
    return max(value, MIN_CEILING) if text.strip().endswith("%") else value


class Budgets:
    """The budget of each node of a plan: its targets' `limits`, else `timeout` (build --timeout), else the
    time scaled to its model's weights; memory from its targets' `limits.memory`, else the executor's ceiling."""

    def __init__(self, planner: "Planner", plan: "Plan", timeout: float | None = None):
        self.planner, self.dag, self.timeout = planner, plan.dag, timeout
        self.coverage = plan.coverage
        self._weights: dict[str, int] = {}

    def for_node(self, node: "Node") -> StepBudget:
        limits = [self.planner.config.project.targets[t].limits for t in _targets_of(self.dag, node.name)
                  if t in self.planner.config.project.targets]
        times = [lim.time for lim in limits if lim.time]
        memories = [int(lim.memory * 1e6) for lim in limits if lim.memory]
        memory = max(memories) if memories else None
        if times:
            return StepBudget(max(times), memory, "the target's limits.time")
        if self.timeout:
            return StepBudget(self.timeout, memory, "--timeout")
        weights = self.weight_bytes(node.model)
        basis = f"{duration(BASE_SECONDS)} + {duration(SECONDS_PER_GB)} per GB of weights ({size(weights)})"
        return StepBudget(scaled_seconds(weights), memory, basis)

    def weight_bytes(self, model: str) -> int:
        """Bytes of the model's weights: its weight and source files, else 4 per parameter counted by the op
        analysis (buildsys.planning.coverage_probe), else 0."""
        if model not in self._weights:
            self._weights[model] = _source_bytes(self.planner, model) or \
                4 * int(((self.coverage.ops.get(model) if self.coverage else None) or {}).get("parameters", 0))
        return self._weights[model]


def _source_bytes(planner: "Planner", model: str) -> int:
    """Bytes of the files that hold a model's weights (not its code)."""
    from buildsys.config.inputs import source_files

    if model not in planner.config.project.models:
        return 0
    try:
        files = source_files(planner.config, model)
    except Exception:  # noqa: BLE001 - a missing file is the plan's error to report, not the budget's
        return 0
    total = 0
    for role, paths in files.items():
        if role == "code":
            continue
        for path in paths:
            try:
                total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
                    else path.stat().st_size
            except OSError:
                pass
    return total


def _targets_of(dag: "Dag", name: str) -> list[str]:
    """The targets whose chain holds node `name` (its consumers' targets, and its own)."""
    seen, todo, targets = {name}, [name], set()
    while todo:
        current = todo.pop()
        node = dag.nodes.get(current)
        if node is not None and node.target:
            targets.add(node.target)
        for consumer in dag.consumers.get(current, []):
            if consumer not in seen:
                seen.add(consumer)
                todo.append(consumer)
    return sorted(targets)


def parse_memory(text: str, available: int) -> int:
    """'50%' (of available RAM), '6G', '512M', '800K' or bytes → bytes."""
    text = text.strip().upper().removesuffix("B")
    if text.endswith("%"):
        return int(available * float(text[:-1]) / 100)
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))
