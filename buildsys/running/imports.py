"""What a toolchain's worker pays to import its packages, measured in a fresh process (`doctor --imports`).

A worker (buildsys/running/worker.py) imports its toolchain's packages once and keeps them (buildsys/running/pool.py),
so these seconds are what each worker start costs a cold build. Each toolchain is timed in its own
fresh interpreter with the worker's own import blocks applied (and what a package only probes for hidden
during its import, as the worker does), importing the packages its steps
declare in a fixed order; a package's share includes whatever it imports that was not loaded yet
(torch under coremltools, for one), so the total is the honest figure and the shares show where it goes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

#: Run in the fresh interpreter: argv[1] is the toolchain, argv[2:] the modules to import in order.
_PROBE = """
import json, sys, time
from buildsys.formats.hidden_imports import hidden
from buildsys.running.worker import block_unused_imports, probed_imports
block_unused_imports(sys.argv[1])
probed = probed_imports(sys.argv[1])
shares = {}
for module in sys.argv[2:]:
    started = time.perf_counter()
    try:
        with hidden(probed.get(module, ())):
            __import__(module)
    except Exception as exc:
        shares[module] = -1.0
        continue
    shares[module] = time.perf_counter() - started
print(json.dumps(shares))
"""


@dataclass
class ImportTiming:
    """One toolchain's imports: seconds per module in import order, their sum, or why it could not run."""

    packages: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def total(self) -> float:
        return sum(max(0.0, s) for s in self.packages.values())


def toolchain_modules() -> dict[str, tuple[list[str], list[str]]]:
    """Toolchain → (the top-level modules of the distributions its steps declare, in step order; the
    declared distributions that are not installed)."""
    from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

    from buildsys.formats import steps

    provided: dict[str, list[str]] = {}  # distribution → its top-level modules
    for module, dists in packages_distributions().items():
        for dist in dists:
            if not module.startswith("_") and module not in {"google", "test", "tests"}:
                provided.setdefault(_norm(dist), []).append(module)
    out: dict[str, tuple[list[str], list[str]]] = {}
    for step in sorted(steps().values(), key=lambda s: s.name):
        modules, missing = out.setdefault(step.toolchain, ([], []))
        for package in step.packages:
            found = provided.get(_norm(package), [])
            # The module named like its distribution (torch, not functorch or torchgen), else the only one.
            chosen = next((m for m in found if _norm(m) == _norm(package)), found[0] if len(found) == 1 else None)
            try:
                distribution(package)
            except PackageNotFoundError:
                if package not in missing:
                    missing.append(package)
                continue
            if chosen and chosen not in modules:
                modules.append(chosen)
    return dict(sorted(out.items()))


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def toolchain_imports(timeout: float = 300.0) -> dict[str, ImportTiming]:
    """Toolchain → its import timing, each measured in a fresh interpreter (sequentially: no contention)."""
    timings: dict[str, ImportTiming] = {}
    for toolchain, (modules, missing) in toolchain_modules().items():
        if missing:
            timings[toolchain] = ImportTiming(error=f"not installed: {', '.join(missing)}")
            continue
        done = subprocess.run([sys.executable, "-c", _PROBE, toolchain, *modules], capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            timings[toolchain] = ImportTiming(error=tail[0][:200])
            continue
        shares = json.loads(done.stdout.strip().splitlines()[-1])
        timings[toolchain] = ImportTiming(packages={m: s for m, s in shares.items() if s >= 0},
                                          error=", ".join(m for m, s in shares.items() if s < 0))
    return timings
