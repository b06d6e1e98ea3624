"""The "tfjs-chromium" runtime: a tfjs artifact run by TensorFlow.js (wasm backend) in headless Chromium.

The browser harness is the web family's (`web/browser.py`); this module builds the site (the tfjs
check page, the pinned TensorFlow.js ES modules and wasm binaries, the artifact) and moves tensors
between the PyTorch layout of the reference data and the artifact's (signature.json's `perm`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session
from buildsys.formats.tfjs import artifact
from buildsys.formats.tflite.layout import from_artifact, to_artifact
from buildsys.formats.web import browser

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

#: An ES module standing in for Node's built-ins, which the wasm backend imports for its Node code path.
_NODE_BUILTIN = "export default {};\n"


class TfjsSession(browser.BrowserSession):
    """One page holding one tfjs GraphModel on the wasm backend."""

    engine = "TensorFlow.js"
    check_site = browser.CheckSite(artifact.PAGE_SOURCE, "tfjs", artifact.site_sources)

    def build_site(self, site: Path) -> None:
        """The check site, with the module standing in for Node's built-ins among the library's files."""
        super().build_site(site)
        (site / "tfjs" / "node-builtin.mjs").write_text(_NODE_BUILTIN)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        perms = {i["name"]: i["perm"] for i in self.signature["inputs"]}
        moved = {name: to_artifact(array, perms[name]) if name in perms else array for name, array in feeds.items()}
        outputs = super().run(moved)
        out_perms = {o["name"]: o["perm"] for o in self.signature["outputs"]}
        return [from_artifact(array, out_perms[name]) for name, array in zip(self.output_names, outputs)]


@register_runtime
class TfjsChromium(Runtime):
    """TensorFlow.js (pinned, from npm) on its wasm backend, in headless Chromium driven by Playwright."""

    name = "tfjs-chromium"
    packages = ("playwright",)
    npm_packages = artifact.NPM_PACKAGES
    # Chromium runs the check; npm installs the pinned TensorFlow.js it loads (buildsys.formats.web.install).
    os_packages = {"chromium": "chromium", "npm": "npm"}

    def _unavailable(self) -> str | None:
        return browser.unavailable(self.npm_packages, list(artifact.site_sources().values()))

    def load(self, path: Path, model: Model, root: Path) -> Session:
        folder = Path(path).parent
        missing = [n for n in (artifact.MODEL_FILE, artifact.LOADER_FILE, artifact.SIGNATURE_FILE)
                   if not (folder / n).is_file()]
        if missing:
            raise StepError(f"the tfjs artifact lacks {', '.join(missing)}")
        signature = json.loads((folder / artifact.SIGNATURE_FILE).read_text(encoding="utf-8"))
        return TfjsSession(folder, signature, model)

    def inspect(self, path: Path, model: Model, fmt: str) -> dict | None:
        """The artifact ships modelbuild's loader unchanged and every weight shard model.json names."""
        folder = Path(path).parent
        problems = [f"{n} is missing" for n in (artifact.LOADER_FILE, artifact.SIGNATURE_FILE, artifact.MODEL_FILE)
                    if not (folder / n).is_file()]
        if problems:
            return {"facts": {}, "problems": problems}
        if (folder / artifact.LOADER_FILE).read_bytes() != artifact.loader():
            problems.append(f"{artifact.LOADER_FILE} differs from the loader this modelbuild ships")
        graph = json.loads((folder / artifact.MODEL_FILE).read_text(encoding="utf-8"))
        shards = [p for group in graph.get("weightsManifest", []) for p in group.get("paths", [])]
        problems += [f"weight shard {p} is missing" for p in shards if not (folder / p).is_file()]
        signature = json.loads((folder / artifact.SIGNATURE_FILE).read_text(encoding="utf-8"))
        facts = {"inputs": {i["name"]: i["type"] for i in signature["inputs"]},
                 "outputs": {o["name"]: o["type"] for o in signature["outputs"]},
                 "shards": len(shards), "tfjs": artifact.TFJS_VERSION}
        return {"facts": facts, "problems": problems}
