"""The "ort-web-chromium" runtime: a web artifact run by onnxruntime-web (wasm) in headless Chromium.

`load` builds a throw-away site (the check page, onnxruntime-web's wasm files from the pinned npm
install, the artifact itself), serves it on loopback and opens it in headless Chromium driven by
Playwright. The page imports the artifact's own model.js, so the check also proves that the shipped
loader works. Nothing is fetched from the network: the browser is started with background
networking off and only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch
from buildsys.formats.web import artifact

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

#: Flags for a quiet, isolated headless Chromium (no GPU, no sandbox inside containers, no calls home).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
#: Milliseconds allowed for starting the browser, creating the session (a large model compiles) and one run.
TIMEOUT_MS = 180_000


class ChromiumSession(Session):
    """One browser page holding one InferenceSession; `run` sends one chunk of samples through it."""

    def __init__(self, path: Path, model: Model):
        self.artifact_dir = path.parent
        self.signature = artifact.read_signature(self.artifact_dir)
        names = {i["name"] for i in self.signature["inputs"]}
        extra = sorted(names - {i.name for i in model.inputs})
        if extra:
            raise StepError(f"the web artifact's input(s) {', '.join(extra)} are not in the signature "
                            f"({', '.join(i.name for i in model.inputs)})")
        wanted = [o.name for o in model.outputs]
        have = [o["name"] for o in self.signature["outputs"]]
        if not set(wanted) <= set(have):
            raise StepError(f"the web artifact has outputs [{', '.join(have)}] but the signature declares "
                            f"[{', '.join(wanted)}]")
        self.output_names = wanted
        fixed_one = any(i["shape"] and i["shape"][0] == 1 for i in self.signature["inputs"])
        self.max_batch = 1 if fixed_one else fixed_batch(model)
        self._calls = itertools.count()
        self._console: list[str] = []
        self._closers: list[Any] = []
        self._site = Path(tempfile.mkdtemp(prefix="modelbuild-web-"))
        self._closers.append(lambda: shutil.rmtree(self._site, ignore_errors=True))
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright

        from buildsys.formats.web.server import TensorServer

        build_site(self._site, self.artifact_dir)
        self.server = TensorServer(self._site)
        self._closers.append(self.server.close)
        self._playwright = sync_playwright().start()
        self._closers.append(self._playwright.stop)
        try:
            browser = self._playwright.chromium.launch(executable_path=artifact.chromium(), args=CHROMIUM_ARGS,
                                                       headless=True, timeout=TIMEOUT_MS)
        except PlaywrightError as exc:
            raise StepError(f"headless Chromium did not start: {_first_line(exc)}") from exc
        self._closers.append(browser.close)
        self.page = browser.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("console", lambda m: self._console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self._console.append(f"page error: {e}"))
        self.page.goto(self.server.url + "check.html")
        self.page.wait_for_function("() => window.ready !== undefined")
        ready = self.page.evaluate("() => window.ready")
        if ready != "ok":
            raise StepError(f"onnxruntime-web could not load the model: {_ort_message(ready.removeprefix('error: '))}"
                            f"{self._console_tail()}")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np
        from playwright.sync_api import Error as PlaywrightError

        call = str(next(self._calls))
        parts, specs, offset = [], [], 0
        for spec in self.signature["inputs"]:
            # Cast to what the graph declares (an fp16 artifact without float32 I/O takes float16).
            array = np.ascontiguousarray(feeds[spec["name"]], dtype=spec["type"])
            data = array.tobytes()
            specs.append({"name": spec["name"], "type": spec["type"], "dims": list(array.shape),
                          "offset": offset, "length": len(data)})
            parts.append(data)
            offset += len(data)
        self.server.inputs[call] = b"".join(parts)
        try:
            meta = self.page.evaluate("(call) => window.runCall(call)", {"id": call, "inputs": specs})
        except PlaywrightError as exc:
            raise StepError(f"onnxruntime-web failed to run the model: {_ort_message(_page_error(exc))}{self._console_tail()}") from exc
        body = self.server.outputs.pop(call)
        outputs, start = {}, 0
        for out in meta:
            dtype = "bool" if out["type"] == "bool" else out["type"]
            outputs[out["name"]] = np.frombuffer(body[start:start + out["length"]], dtype=dtype).reshape(out["dims"])
            start += out["length"]
        return [outputs[name].copy() for name in self.output_names]

    def _console_tail(self) -> str:
        errors = [line for line in self._console if line.startswith(("error", "page error"))]
        return f" (browser console: {errors[-1][:300]})" if errors else ""

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            with contextlib.suppress(Exception):  # the browser may already be gone: release the rest anyway
                closer()


def build_site(site: Path, artifact_dir: Path) -> None:
    """The check's site: check.html, ort/ (the pinned onnxruntime-web's wasm files), model/ (the artifact)."""
    shutil.copyfile(artifact.PAGE_SOURCE, site / "check.html")
    (site / "ort").mkdir()
    for name in artifact.ORT_FILES:
        shutil.copyfile(artifact.ort_web_dist() / name, site / "ort" / name)
    shutil.copytree(artifact_dir, site / "model")


def _page_error(exc: BaseException) -> str:
    """The JavaScript error's own message from a Playwright error (it adds a call log and a stack)."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Error:") or "Error:" in line:
            return line.split("Error:", 1)[1].strip() or line
    return _first_line(exc)


def _ort_message(text: str) -> str:
    """ONNX Runtime's message without the C++ source location and signature of its build machine."""
    return re.sub(r"\S+\.(?:cc|cpp|h):\d+ [^(]*\([^)]*\)\s*", "", text).strip()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@register_runtime
class OrtWebChromium(Runtime):
    """onnxruntime-web (pinned, from npm) on its wasm backend, in headless Chromium driven by Playwright."""

    name = "ort-web-chromium"
    packages = ("playwright",)

    # Chromium runs the check; npm installs the pinned onnxruntime-web it loads (buildsys.formats.web.install).
    os_packages = {"chromium": "chromium", "npm": "npm"}

    def unavailable(self) -> str | None:
        if artifact.chromium() is None:
            where = "MODELBUILD_CHROMIUM does not name an executable" if _env("MODELBUILD_CHROMIUM") else \
                "no chromium on PATH"
            return f"no Chromium ({where}; install chromium, e.g. apt-get install chromium)"
        installed = artifact.installed_ort_web()
        if installed is None:
            return (f"onnxruntime-web is not installed in {artifact.node_modules()} "
                    f"(run {artifact.INSTALL_COMMAND})")
        if installed != artifact.ORT_WEB_VERSION:
            return (f"onnxruntime-web {installed} is installed but modelbuild checks with {artifact.ORT_WEB_VERSION} "
                    f"(run {artifact.INSTALL_COMMAND})")
        missing = [n for n in artifact.ORT_FILES if not (artifact.ort_web_dist() / n).is_file()]
        if missing:
            return f"onnxruntime-web in {artifact.node_modules()} lacks {', '.join(missing)} (run {artifact.INSTALL_COMMAND})"
        if importlib.util.find_spec("playwright") is None:
            return "the Python package playwright is not installed (pip install -c constraints.txt 'modelbuild[web]')"
        return None

    def load(self, path: Path, model: Model, root: Path) -> Session:
        missing = [n for n in (artifact.MODEL_FILE, artifact.LOADER_FILE, artifact.SIGNATURE_FILE)
                   if not (Path(path).parent / n).is_file()]
        if missing:
            raise StepError(f"the web artifact lacks {', '.join(missing)}")
        return ChromiumSession(Path(path), model)

    def inspect(self, path: Path, model: Model, fmt: str) -> dict | None:
        """The artifact ships modelbuild's loader unchanged and a signature that matches the model's."""
        folder = Path(path).parent
        problems = [f"{n} is missing" for n in (artifact.LOADER_FILE, artifact.SIGNATURE_FILE)
                    if not (folder / n).is_file()]
        if problems:
            return {"facts": {}, "problems": problems}
        signature = artifact.read_signature(folder)
        if (folder / artifact.LOADER_FILE).read_bytes() != artifact.LOADER_SOURCE.read_bytes():
            problems.append(f"{artifact.LOADER_FILE} differs from the loader this modelbuild ships")
        inputs = [i["name"] for i in signature["inputs"]]
        unknown = sorted(set(inputs) - {i.name for i in model.inputs})
        if unknown:
            problems.append(f"signature.json names input(s) {', '.join(unknown)} that the model does not take")
        facts = {"inputs": {i["name"]: i["type"] for i in signature["inputs"]},
                 "outputs": {o["name"]: o["type"] for o in signature["outputs"]},
                 "onnxruntime_web": artifact.ORT_WEB_VERSION}
        return {"facts": facts, "problems": problems}


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name)
