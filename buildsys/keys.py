"""Action keys: a digest over everything that can change a step's output, and the reasons it changed.

The key is computed from *components*, a JSON-able dict kept in deploy.lock; diffing the old and
new components is how `plan` explains why a node is stale.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any

from buildsys.hashing import digest_json

#: Bump when the meaning of a key changes (component layout, digest algorithm): every key changes.
KEY_SCHEMA = 1

NOT_INSTALLED = "not installed"


@lru_cache(maxsize=None)
def package_version(name: str) -> str:
    """Installed version of a distribution, read from its metadata (never by importing it)."""
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def toolchain(packages: tuple[str, ...] | list[str]) -> dict[str, str]:
    return {p: package_version(p) for p in sorted(set(packages))}


@lru_cache(maxsize=1)
def host_platform() -> str:
    """This host's OS and CPU architecture, e.g. 'linux-x86_64', 'darwin-arm64'."""
    return f"{sys.platform}-{platform.machine().lower() or 'unknown'}"


#: What `Step.host_requirement` says where a step needs an NVIDIA GPU and this host has none.
NEEDS_NVIDIA_GPU = "needs an NVIDIA GPU (found none)"


@dataclass(frozen=True)
class NvidiaGpu:
    """The GPU a device-bound artifact (a TensorRT engine) is built for: only valid on that model."""

    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0"


@lru_cache(maxsize=None)
def nvidia_gpu() -> NvidiaGpu | None:
    """This host's first visible NVIDIA GPU, asked of nvidia-smi (None: no driver, no GPU, no answer).

    Cheap and import-free, so `plan` can call it: one subprocess with a short timeout, cached per
    process. CUDA_VISIBLE_DEVICES is honoured the way CUDA reads it ("" or "-1" hides every GPU, a
    list of indices picks the first), so a GPU host can plan and test as a host without one.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0].strip() if visible is not None else None
    if first is not None and (not first or first.startswith("-")):
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # no driver installed, or it hung
        return None
    rows = [[c.strip() for c in line.split(",")] for line in proc.stdout.splitlines() if line.count(",") >= 3]
    if proc.returncode != 0 or not rows:
        return None
    chosen = next((r for r in rows if first in (r[0], r[1])), None) if first else rows[0]
    return NvidiaGpu(name=chosen[2], compute_capability=chosen[3]) if chosen else None


#: Artifact steps whose output depends on the host beyond their options, inputs and toolchain,
#: keyed by step name → predicate on the node's (defaults-filled) options. Most converters only
#: rewrite a graph (tracing, export, ONNX/TFLite/Core ML serialization, fp16 casts, dynamic
#: quantization): the same inputs and package versions give the same bytes on any OS, so their keys
#: stay platform-free and deploy.lock keeps agreeing across machines. Two kinds of step do not:
#: - ORT's `all` optimization level writes layout transforms for the CPU it ran on (ORT warns that
#:   the result is hardware specific);
#: - calibrating quantizers run the float model on the host's kernels to choose activation ranges,
#:   and those kernels differ per architecture (AVX vs NEON), so the scales can differ in the last
#:   bits. These are recognized by their calibration data set (see `platform_bound`), not listed.
PLATFORM_BOUND_STEPS = {
    "onnx-optimized-from-onnx": lambda options: options.get("level") == "all",
}


def platform_bound(step: str, options: dict[str, Any], data_sets: tuple[str, ...] | list[str], judges: bool) -> bool:
    """Whether a node's result depends on the host's OS/architecture (its key then names them).

    A judging node (a check) always does: its verdict is an observation of the artifact in this
    host's runtime, which may not run at all elsewhere (Core ML's numeric check needs macOS) or may
    round differently (another CPU's kernels), so one host kind must not lend its verdict to
    another through a shared cache. Benchmarks already name the whole host.
    """
    if judges or "calibration" in data_sets:
        return True
    predicate = PLATFORM_BOUND_STEPS.get(step)
    return bool(predicate and predicate(options))


def action_key(components: dict[str, Any]) -> str:
    """The digest of the canonical JSON of `components` plus the key schema version."""
    return digest_json({"schema": KEY_SCHEMA, **components})


def explain(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human reasons for the difference between two component dicts (empty if they are equal).

    Component conventions: `step`/`step_version`, `options` (flat dict), `inputs` (role → digest,
    e.g. 'weights', 'code', 'data calibration', 'upstream digits/onnx'), `signature`, `toolchain`
    (package → version), `acceptance` (checks only), `platform` (host-dependent nodes only), `device`
    (`Step.host_components`: the GPU and TensorRT an engine is built for).
    """
    reasons: list[str] = []
    if old.get("step") != new.get("step"):  # a different step: its other differences follow from that
        return [f"step {old.get('step')}→{new.get('step')}"]
    if old.get("step_version") != new.get("step_version"):
        reasons.append(f"step {new.get('step')} version {old.get('step_version')}→{new.get('step_version')}")
    old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
    for name in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(name) != new_opts.get(name):
            reasons.append(f"option {name} {_fmt(old_opts.get(name))}→{_fmt(new_opts.get(name))}")
    old_in, new_in = old.get("inputs") or {}, new.get("inputs") or {}
    for role in sorted(set(old_in) | set(new_in)):
        if role not in old_in:
            reasons.append(f"new input {role}")
        elif role not in new_in:
            reasons.append(f"input {role} removed")
        elif old_in[role] != new_in[role]:
            reasons.append(f"{role} changed")
    if old.get("signature") != new.get("signature"):
        reasons.append("model signature changed")
    old_tc, new_tc = old.get("toolchain") or {}, new.get("toolchain") or {}
    for pkg in sorted(set(old_tc) | set(new_tc)):
        if old_tc.get(pkg) != new_tc.get(pkg):
            reasons.append(f"toolchain {pkg} {old_tc.get(pkg, 'none')}→{new_tc.get(pkg, 'none')}")
    if old.get("acceptance") != new.get("acceptance"):
        reasons.append("tolerance changed")
    if old.get("platform") != new.get("platform"):
        reasons.append(f"platform {old.get('platform') or 'any'}→{new.get('platform') or 'any'}")
    old_dev, new_dev = old.get("device") or {}, new.get("device") or {}
    for part in sorted(set(old_dev) | set(new_dev)):  # an engine built for another GPU / TensorRT
        if old_dev.get(part) != new_dev.get(part):
            reasons.append(f"{part} {old_dev.get(part, 'none')}→{new_dev.get(part, 'none')}")
    known = {"step", "step_version", "options", "inputs", "signature", "toolchain", "acceptance", "platform", "device"}
    for extra in sorted((set(old) | set(new)) - known):
        if old.get(extra) != new.get(extra):
            reasons.append(f"{extra} changed")
    return reasons


def _fmt(value: Any) -> str:
    return "unset" if value is None else str(value)
