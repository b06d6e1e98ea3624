"""The web artifact's contract, shared by the step that writes it and the runtime that checks it.

An artifact is a directory: `model.onnx` (one self-contained file: a browser fetches one URL),
`model.js` (the ES-module loader modelbuild ships, the same bytes in every artifact) and `signature.json`
(every input and output with ONNX Runtime Web's tensor type and its shape). This module also says
where this host keeps the pinned npm packages of browser checks (installed by `install.py`, never fetched
at run time) and Chromium. It imports only the standard library.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

#: The onnxruntime-web release the checks run. The IR version and tensor types below were verified
#: against it in Chromium; bump them together.
ORT_WEB_VERSION = "1.30.0"
#: Highest ONNX IR version it loads ("Unsupported model IR version: 14, max supported IR version: 13").
#: Opsets are not capped the same way: a newer opset loads (with a warning) when the graph's
#: operators are unchanged in it, and an operator without a kernel fails the check in the browser.
MAX_IR_VERSION = 13
#: Operator domains built into the wasm backend (custom-op libraries cannot be loaded in a page).
DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")

MODEL_FILE = "model.onnx"
LOADER_FILE = "model.js"
SIGNATURE_FILE = "signature.json"
#: The check page and the loader's own part (package data, see pyproject.toml).
PAGE_SOURCE = Path(__file__).with_name("check.html")
LOADER_SOURCE = Path(__file__).with_name(LOADER_FILE)
#: The part of the loader every browser family shares (reading signature.json, the dims of a bare
#: typed array), and the module every check page imports (moving a call's tensors: browser.py).
LOADER_SHARED = Path(__file__).with_name("loader_shared.js")
HARNESS_SOURCE = Path(__file__).with_name("check.js")
#: The files the shipped model.js is made of, in order (`loader`): they enter the step's key.
LOADER_PARTS = (LOADER_SOURCE, LOADER_SHARED)
#: What the check page needs from onnxruntime-web's dist/: the wasm-only ES module, its Emscripten
#: glue and the SIMD wasm binary (the glue is the threaded build; it runs with one thread when the
#: page is not cross-origin isolated).
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

#: ONNX TensorProto element type → the ort.Tensor type name (which is also the numpy dtype name).
#: Codes from onnx.proto (stable); left out: string, complex, bfloat16, float8 and 4-bit types,
#: which an ort.Tensor cannot carry between a page and the wasm backend as a typed array.
TENSOR_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}

INSTALL_COMMAND = "python -m buildsys.formats.web.install"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def node_modules() -> Path:
    """Where the npm packages of browser checks (onnxruntime-web, TensorFlow.js) are installed:
    $MODELBUILD_WEB_NODE_MODULES, else ${XDG_CACHE_HOME:-~/.cache}/modelbuild/web/node_modules
    (npm install --prefix <its parent>)."""
    given = os.environ.get("MODELBUILD_WEB_NODE_MODULES")
    if given:
        return Path(given).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "modelbuild" / "web" / "node_modules"


def ort_web_dist() -> Path:
    return node_modules() / "onnxruntime-web" / "dist"


def site_sources() -> dict[str, Path]:
    """ORT_FILES with their paths on this host."""
    return {name: ort_web_dist() / name for name in ORT_FILES}


def installed_npm(package: str) -> str | None:
    """The version of npm package `package` in node_modules(), or None when it is not there."""
    try:
        return str(json.loads((node_modules() / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def chromium() -> str | None:
    """The Chromium executable: $MODELBUILD_CHROMIUM when set (None if that is not an executable file,
    so a test or a user can switch the browser off), else the first Chromium/Chrome on PATH."""
    given = os.environ.get("MODELBUILD_CHROMIUM")
    if given is not None:
        path = Path(given).expanduser()
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def loader(parts: tuple[Path, ...] = LOADER_PARTS) -> bytes:
    """model.js as a family ships it (the same bytes in every artifact): its `parts`, one after the other."""
    return b"".join(part.read_bytes() for part in parts)


def read_signature(artifact_dir: Path) -> dict[str, Any]:
    """signature.json of an artifact: {"inputs": [{name, type, shape}], "outputs": [...]}."""
    return json.loads((artifact_dir / SIGNATURE_FILE).read_text(encoding="utf-8"))
