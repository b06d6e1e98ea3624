"""The browser harness of web checks: a page served from disk on loopback, run in headless Chromium.

Every runtime that checks an artifact in a browser (ONNX Runtime Web, TensorFlow.js) shares it: a
throw-away site (the family's check page, the pinned npm files it imports, the artifact) is served
by `server.TensorServer` and opened in headless Chromium driven by Playwright. The page defines
`window.ready` ("ok" or "error: …") once the model is loaded and `window.runCall(call)`, which
fetches one call's inputs as raw bytes, runs the model and posts the outputs back. Nothing is
fetched from the network: the browser is started with background networking off and only ever
talks to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple

from buildsys.errors import StepError, not_installed
from buildsys.formats.runtime import Session, fixed_batch
from buildsys.formats.web import artifact

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model

#: Flags for a quiet, isolated headless Chromium (no GPU, no sandbox inside containers, no calls home).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
#: Milliseconds allowed for starting the browser, creating the session (a large model compiles) and one run.
TIMEOUT_MS = 180_000


def unavailable(pins: dict[str, str], files: list[Path]) -> str | None:
    """Why a check page needing the npm packages `pins` (name → version) and `files` from them cannot
    run here (no Chromium, a package missing or of another version, playwright absent), or None."""
    if artifact.chromium() is None:
        where = "MODELBUILD_CHROMIUM does not name an executable" if os.environ.get("MODELBUILD_CHROMIUM") else \
            "no chromium on PATH"
        return f"no Chromium ({where}; install chromium, e.g. apt-get install chromium)"
    for package, version in pins.items():
        installed = artifact.installed_npm(package)
        if installed is None:
            return f"{package} is not installed in {artifact.node_modules()} (run {artifact.INSTALL_COMMAND})"
        if installed != version:
            return (f"{package} {installed} is installed but modelbuild checks with {version} "
                    f"(run {artifact.INSTALL_COMMAND})")
    missing = [str(f.relative_to(artifact.node_modules())) for f in files if not f.is_file()]
    if missing:
        return f"{artifact.node_modules()} lacks {', '.join(missing)} (run {artifact.INSTALL_COMMAND})"
    if importlib.util.find_spec("playwright") is None:
        return not_installed(["playwright"], "web")
    return None


class CheckSite(NamedTuple):
    """What a family's check page needs on the site besides check.js and the artifact: the `page`, served
    as check.html, and the library's files, copied into `folder` (where the page's import map points)
    from `sources()` (name there → its path on this host)."""

    page: Path
    folder: str
    sources: Callable[[], dict[str, Path]]


class BrowserSession(Session):
    """One browser page holding one loaded model; `run` sends one chunk of samples through it.

    A subclass names the library in messages (`engine`) and what its check page needs (`check_site`)."""

    engine = "the page"
    check_site: ClassVar[CheckSite]

    def __init__(self, artifact_dir: Path, signature: dict[str, Any], model: Model):
        self.artifact_dir = artifact_dir
        self.signature = signature
        names = {i["name"] for i in self.signature["inputs"]}
        extra = sorted(names - {i.name for i in model.inputs})
        if extra:
            raise StepError(f"the artifact's input(s) {', '.join(extra)} are not in the signature "
                            f"({', '.join(i.name for i in model.inputs)})")
        wanted = [o.name for o in model.outputs]
        have = [o["name"] for o in self.signature["outputs"]]
        if not set(wanted) <= set(have):
            raise StepError(f"the artifact has outputs [{', '.join(have)}] but the signature declares "
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

    def build_site(self, site: Path) -> None:
        """check.html (the family's page), check.js (the part every check page shares), the library's
        files, model/ (the artifact)."""
        page, folder, sources = self.check_site
        shutil.copyfile(page, site / "check.html")
        shutil.copyfile(artifact.HARNESS_SOURCE, site / "check.js")
        (site / folder).mkdir()
        for name, source in sources().items():
            shutil.copyfile(source, site / folder / name)
        shutil.copytree(self.artifact_dir, site / "model")

    def message(self, text: str) -> str:
        """The library's error message as a user should read it (a subclass drops build-machine noise)."""
        return text

    def _open(self) -> None:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright

        from buildsys.formats.web.server import TensorServer

        self.build_site(self._site)
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
            raise StepError(f"{self.engine} could not load the model: {self.message(ready.removeprefix('error: '))}"
                            f"{self._console_tail()}")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np
        from playwright.sync_api import Error as PlaywrightError

        call = str(next(self._calls))
        parts, specs, offset = [], [], 0
        for spec in self.signature["inputs"]:
            # Cast to what the artifact declares (an fp16 artifact without float32 I/O takes float16).
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
            raise StepError(f"{self.engine} failed to run the model: {self.message(_page_error(exc))}"
                            f"{self._console_tail()}") from exc
        body = self.server.outputs.pop(call)
        outputs, start = {}, 0
        for out in meta:
            outputs[out["name"]] = np.frombuffer(body[start:start + out["length"]], dtype=out["type"]).reshape(out["dims"])
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


def _page_error(exc: BaseException) -> str:
    """The JavaScript error's own message from a Playwright error (it adds a call log and a stack)."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Error:") or "Error:" in line:
            return line.split("Error:", 1)[1].strip() or line
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
