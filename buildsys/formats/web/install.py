"""Install the pinned npm packages of browser checks from the npm registry where the checks look for them.

    python -m buildsys.formats.web.install [--prefix DIR]

runs one `npm install --prefix DIR <name>@<pin> ...` for the `npm_packages` every registered runtime
declares (onnxruntime-web for the web family, TensorFlow.js for tfjs; DIR: the parent of
artifact.node_modules(), i.e. $MODELBUILD_WEB_NODE_MODULES/.. or ~/.cache/modelbuild/web). This happens
once, at install time: checks never fetch anything, from npm or from a CDN. It needs no toolchain,
so CI and Docker images can run it on its own.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from buildsys.formats.web import artifact


def pins() -> dict[str, str]:
    """Every npm package (name → exact version) a registered runtime serves to its browser."""
    from buildsys.formats import runtimes

    wanted: dict[str, str] = {}
    for name, cls in sorted(runtimes().items()):
        for package, version in cls.npm_packages.items():
            if wanted.setdefault(package, version) != version:
                raise ValueError(f"runtime {name} pins {package}@{version}, another runtime {wanted[package]}")
    return wanted


def install(prefix: Path | None = None) -> Path:
    """npm-install every runtime's pinned packages under `prefix`; returns its node_modules directory."""
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not on PATH: install Node.js (Debian: apt-get install nodejs npm)")
    prefix = prefix or artifact.node_modules().parent
    prefix.mkdir(parents=True, exist_ok=True)
    # --ignore-scripts: the wasm files are in the tarball; no package needs to run code on install.
    cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--ignore-scripts",
           "--save-exact", *(f"{name}@{version}" for name, version in sorted(pins().items()))]
    subprocess.run(cmd, check=True)
    return prefix / "node_modules"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", type=Path, default=None,
                        help=f"npm prefix (default: {artifact.node_modules().parent}); checks find it when "
                        "MODELBUILD_WEB_NODE_MODULES is set to PREFIX/node_modules")
    args = parser.parse_args(argv)
    try:
        where = install(args.prefix)
    except FileNotFoundError as exc:
        # Not an error for the rest of modelbuild: web checks then say "not run" and why.
        print(f"npm packages not installed: {exc}; browser checks will report 'not run'", file=sys.stderr)
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"npm install failed (exit {exc.returncode})", file=sys.stderr)
        return 1
    print(f"{', '.join(f'{n} {v}' for n, v in sorted(pins().items()))} installed in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
