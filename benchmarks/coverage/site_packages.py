"""The model matrix's package directory: where timm, ultralytics and torchvision come from, checked before use.

They are not in modelbuild's environment on purpose: the registry's torchvision 0.28 is a CUDA build that,
installed beside the CPU torch, breaks every transformers import. They live in their own directory, installed
without dependencies (so nothing pulls another torch):

    pip install --no-deps --target /work/matrix-site timm==1.0.31 ultralytics==8.4.190 ultralytics-thop==2.2.3 \
        torchvision==0.28.0 opencv-python-headless==5.0.0.93 matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 \
        fonttools==4.68.0 kiwisolver==1.5.1 pyparsing==3.3.3

`MODELBUILD_MATRIX_SITE` (or `--site`) names another directory. The benchmark puts benchmarks/coverage/site (its
sitecustomize.py declares torchvision's `nms`/`qnms` op schemas just before torchvision is first imported), then
this directory, on the PYTHONPATH of the build and of every worker it starts.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Distribution → the version the matrix was measured with.
PINNED = {"timm": "1.0.31", "ultralytics": "8.4.190", "ultralytics_thop": "2.2.3", "torchvision": "0.28.0",
          "opencv_python_headless": "5.0.0.93", "matplotlib": "3.11.2", "contourpy": "1.3.3", "cycler": "0.12.1",
          "fonttools": "4.68.0", "kiwisolver": "1.5.1", "pyparsing": "3.3.3"}
DEFAULT = Path("/work/matrix-site")
HOOK = Path(__file__).resolve().parent / "site"
INSTALL = ("pip install --no-deps --target {dir} " +
           " ".join(f"{name.replace('_', '-')}=={version}" for name, version in PINNED.items()))


class MissingSite(SystemExit):
    """The package directory is missing or incomplete: the message says what and the line that installs it."""


def site_dir(given: str | None = None) -> Path:
    """The package directory: `given`, else $MODELBUILD_MATRIX_SITE, else /work/matrix-site."""
    return Path(given or os.environ.get("MODELBUILD_MATRIX_SITE") or DEFAULT)


def installed(directory: Path) -> dict[str, str]:
    """Distribution → version of what `directory` holds, from its *.dist-info folder names (nothing imported)."""
    out = {}
    for info in directory.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].rpartition("-")
        out[name.lower()] = version
    return out


def check(directory: Path) -> list[str]:
    """The PYTHONPATH entries the build needs (the hook, then `directory`); MissingSite when a package is absent."""
    have = installed(directory) if directory.is_dir() else {}
    missing = [f"{name.replace('_', '-')}=={version}" for name, version in PINNED.items() if name.lower() not in have]
    if missing:
        raise MissingSite(
            f"model matrix: {directory} lacks {', '.join(missing)} (the public architectures' packages, kept out of "
            f"modelbuild's environment).\nInstall them with:\n  {INSTALL.format(dir=directory)}\n"
            "or name another directory with --site / MODELBUILD_MATRIX_SITE.")
    return [str(HOOK), str(directory)]


def mismatched(directory: Path) -> dict[str, str]:
    """Packages present at another version than the one measured: name → 'have (measured with X)'."""
    have = installed(directory)
    return {n: f"{have[n.lower()]} (measured with {v})" for n, v in PINNED.items()
            if n.lower() in have and have[n.lower()] != v}
