"""Install the pinned onnxruntime-web from the npm registry where the web checks look for it.

    python -m buildsys.formats.web.install [--prefix DIR]

runs `npm install --prefix DIR onnxruntime-web@<pin>` (DIR: the parent of artifact.node_modules(),
i.e. $MODELBUILD_WEB_NODE_MODULES/.. or ~/.cache/modelbuild/web). This happens once, at install
time: checks never fetch anything, from npm or from a CDN. It is independent of modelbuild's build
machinery, so CI and Docker images can run it on its own.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from buildsys.formats.web import artifact


def install(prefix: Path | None = None) -> Path:
    """npm-install onnxruntime-web@ORT_WEB_VERSION under `prefix`; returns its node_modules directory."""
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not on PATH: install Node.js (Debian: apt-get install nodejs npm)")
    prefix = prefix or artifact.node_modules().parent
    prefix.mkdir(parents=True, exist_ok=True)
    # --ignore-scripts: the wasm files are in the tarball; no package needs to run code on install.
    cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--ignore-scripts",
           "--save-exact", f"onnxruntime-web@{artifact.ORT_WEB_VERSION}"]
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
        print(f"onnxruntime-web not installed: {exc}; web checks will report 'not run'", file=sys.stderr)
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"npm install failed (exit {exc.returncode})", file=sys.stderr)
        return 1
    print(f"onnxruntime-web {artifact.ORT_WEB_VERSION} installed in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
