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
from enum import IntEnum
from functools import lru_cache
from importlib import metadata
from typing import Any

from buildsys.storage.hashing import digest_json

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


class HostBinding(IntEnum):
    """How much of the host a node's result depends on beyond its inputs and package versions. A
    node's key names what it is bound to (`platform`, then `cpu`), so a result never travels,
    through the lock or a shared cache, to a host where it may not hold."""

    PORTABLE = 0  # the same inputs and packages give the same bytes on any OS and CPU (most converters)
    PLATFORM = 1  # the OS and CPU architecture matter (calibration on this host's kernels, a check's verdict)
    CPU_CLASS = 2  # the CPU's instruction-set class matters too: int8 kernels (VNNI, AVX-512, AMX; dotprod, i8mm)


#: The /proc/cpuinfo flags that select different kernels in the CPU runtimes (ONNX Runtime's MLAS,
#: oneDNN in OpenVINO, XNNPACK), by the name the class shows: int8 dot products (VNNI, dotprod,
#: i8mm), vector width (AVX-512, SVE), half and bfloat16 arithmetic, matrix units (AMX, SME).
CPU_FEATURES = {
    "x86_64": (("avx2", "avx2"), ("avx512", "avx512f"), ("avx512-vnni", "avx512_vnni"), ("avx-vnni", "avx_vnni"),
               ("avx512-bf16", "avx512_bf16"), ("avx512-fp16", "avx512_fp16"), ("amx", "amx_int8")),
    "aarch64": (("dotprod", "asimddp"), ("i8mm", "i8mm"), ("fp16", "asimdhp"), ("bf16", "bf16"), ("sve", "sve"),
                ("sve2", "sve2"), ("sme", "sme")),
}
#: The same features as macOS's sysctl names them (hw.optional.*).
_MACOS_FEATURES = {"dotprod": "arm.FEAT_DotProd", "i8mm": "arm.FEAT_I8MM", "fp16": "arm.FEAT_FP16",
                   "bf16": "arm.FEAT_BF16", "sme": "arm.FEAT_SME", "avx2": "avx2_0", "avx512": "avx512f",
                   "avx512-vnni": "avx512vnni"}


@lru_cache(maxsize=1)
def cpu_class() -> str:
    """This CPU's instruction-set class as its int8/fp16 kernels see it, e.g. 'avx2',
    'avx2+avx512+avx512-vnni', 'dotprod+fp16+i8mm'; 'baseline' when it has none of them, 'unknown'
    where the OS does not say. Read from /proc/cpuinfo (Linux) or sysctl (macOS), no import."""
    machine = platform.machine().lower()
    arch = "aarch64" if machine in ("arm64", "aarch64") else "x86_64" if machine in ("x86_64", "amd64") else machine
    wanted = CPU_FEATURES.get(arch, ())
    if sys.platform == "darwin":
        names = [n for n, _ in wanted if n in _MACOS_FEATURES]
        try:
            out = subprocess.run(["sysctl", "-n", *(f"hw.optional.{_MACOS_FEATURES[n]}" for n in names)],
                                 capture_output=True, text=True, timeout=5, check=False).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        present = {n for n, v in zip(names, out) if v.strip() == "1"}
    else:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                flags = next((line.split(":", 1)[1].split() for line in f
                              if line.startswith(("flags", "Features"))), None)
        except OSError:
            flags = None
        if flags is None:
            return "unknown"
        present = {n for n, flag in wanted if flag in flags}
    return "+".join(n for n, _ in wanted if n in present) or "baseline"


def host_parts(binding: HostBinding) -> dict[str, str]:
    """The key components that bind a node to this host: {} for a portable result, `platform` (OS
    and architecture) for a platform-bound one, and `cpu` (the instruction-set class) too for one
    bound to the CPU class."""
    parts: dict[str, str] = {}
    if binding >= HostBinding.PLATFORM:
        parts["platform"] = host_platform()
    if binding >= HostBinding.CPU_CLASS:
        parts["cpu"] = cpu_class()
    return parts


def action_key(components: dict[str, Any]) -> str:
    """The digest of the canonical JSON of `components` plus the key schema version."""
    return digest_json({"schema": KEY_SCHEMA, **components})


def explain(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human reasons for the difference between two component dicts (empty if they are equal).

    Component conventions: `step`/`step_version`, `options` (flat dict), `inputs` (role → digest,
    e.g. 'weights', 'code', 'data calibration', 'upstream digits/onnx'), `signature`, `toolchain`
    (package → version), `acceptance` (checks only), `platform` and `cpu` (host-bound nodes only), `device`
    (`Step.host_components`: the GPU and TensorRT an engine is built for), `rewrites` (name → version of the op
    rewrites an artifact's options apply).
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
    old_rw, new_rw = old.get("rewrites") or {}, new.get("rewrites") or {}
    for name in sorted(set(old_rw) & set(new_rw)):  # added or removed ones show as the option's change
        if old_rw[name] != new_rw[name]:
            reasons.append(f"rewrite {name} version {old_rw[name]}→{new_rw[name]}")
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
    if old.get("cpu") != new.get("cpu"):  # a verdict measured on another CPU class is measured again
        reasons.append(f"cpu class {old.get('cpu') or 'any'}→{new.get('cpu') or 'any'}")
    old_dev, new_dev = old.get("device") or {}, new.get("device") or {}
    for part in sorted(set(old_dev) | set(new_dev)):  # an engine built for another GPU / TensorRT
        if old_dev.get(part) != new_dev.get(part):
            reasons.append(f"{part} {old_dev.get(part, 'none')}→{new_dev.get(part, 'none')}")
    known = {"step", "step_version", "options", "inputs", "signature", "toolchain", "acceptance", "platform", "cpu",
             "device", "rewrites"}
    for extra in sorted((set(old) | set(new)) - known):
        if old.get(extra) != new.get(extra):
            reasons.append(f"{extra} changed")
    return reasons


def _fmt(value: Any) -> str:
    return "unset" if value is None else str(value)
