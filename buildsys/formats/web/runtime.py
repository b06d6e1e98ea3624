"""The "ort-web-chromium" runtime: a web artifact run by onnxruntime-web (wasm) in headless Chromium.

The check page (check.html) imports the artifact's own model.js, so the check also proves that the
shipped loader works; the site and the browser are the web family's harness (`browser.py`), with
onnxruntime-web's wasm files from the pinned npm install.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session
from buildsys.formats.web import artifact, browser

if TYPE_CHECKING:
    from buildsys.config.schema import Model


class OrtWebSession(browser.BrowserSession):
    """One page holding one onnxruntime-web InferenceSession."""

    engine = "onnxruntime-web"
    check_site = browser.CheckSite(artifact.PAGE_SOURCE, "ort", artifact.site_sources)

    def message(self, text: str) -> str:
        """ONNX Runtime's message without the C++ source location and signature of its build machine."""
        return re.sub(r"\S+\.(?:cc|cpp|h):\d+ [^(]*\([^)]*\)\s*", "", text).strip()


@register_runtime
class OrtWebChromium(Runtime):
    """onnxruntime-web (pinned, from npm) on its wasm backend, in headless Chromium driven by Playwright."""

    name = "ort-web-chromium"
    packages = ("playwright",)
    npm_packages = {"onnxruntime-web": artifact.ORT_WEB_VERSION}

    # Chromium runs the check; npm installs the pinned onnxruntime-web it loads (buildsys.formats.web.install).
    os_packages = {"chromium": "chromium", "npm": "npm"}

    def _unavailable(self) -> str | None:
        return browser.unavailable(self.npm_packages, list(artifact.site_sources().values()))

    def load(self, path: Path, model: Model, root: Path) -> Session:
        missing = [n for n in (artifact.MODEL_FILE, artifact.LOADER_FILE, artifact.SIGNATURE_FILE)
                   if not (Path(path).parent / n).is_file()]
        if missing:
            raise StepError(f"the web artifact lacks {', '.join(missing)}")
        folder = Path(path).parent
        return OrtWebSession(folder, artifact.read_signature(folder), model)

    def inspect(self, path: Path, model: Model, fmt: str) -> dict | None:
        """The artifact ships modelbuild's loader unchanged and a signature that matches the model's."""
        folder = Path(path).parent
        problems = [f"{n} is missing" for n in (artifact.LOADER_FILE, artifact.SIGNATURE_FILE)
                    if not (folder / n).is_file()]
        if problems:
            return {"facts": {}, "problems": problems}
        signature = artifact.read_signature(folder)
        if (folder / artifact.LOADER_FILE).read_bytes() != artifact.loader():
            problems.append(f"{artifact.LOADER_FILE} differs from the loader this modelbuild ships")
        inputs = [i["name"] for i in signature["inputs"]]
        unknown = sorted(set(inputs) - {i.name for i in model.inputs})
        if unknown:
            problems.append(f"signature.json names input(s) {', '.join(unknown)} that the model does not take")
        facts = {"inputs": {i["name"]: i["type"] for i in signature["inputs"]},
                 "outputs": {o["name"]: o["type"] for o in signature["outputs"]},
                 "onnxruntime_web": artifact.ORT_WEB_VERSION}
        return {"facts": facts, "problems": problems}
