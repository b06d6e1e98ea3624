"""The tfjs artifact's contract, shared by the step that writes it and the runtime that checks it.

An artifact is a directory: `model.json` (the TensorFlow.js graph model: topology and weights
manifest), its weight shards `group1-shard*of*.bin`, `model.js` (the ES-module loader modelbuild
ships, the same bytes in every artifact), `signature.json` and `layout.json` (onnx2tf's layout record, carried
from the SavedModel). Inputs and outputs are in the artifact's layout (channels last where onnx2tf
moved them); signature.json names, for each, the graph node to feed or fetch, its tfjs dtype, its
shape and `perm`, the permutation from the PyTorch layout. This module imports only the standard
library; the pinned npm packages live where the web family's install puts them.
"""

from __future__ import annotations

from pathlib import Path

from buildsys.formats.web import artifact as web

#: The TensorFlow.js release the checks run (core, converter and the wasm backend share one version).
TFJS_VERSION = "4.22.0"
NPM_PACKAGES = {"@tensorflow/tfjs-core": TFJS_VERSION, "@tensorflow/tfjs-converter": TFJS_VERSION,
                "@tensorflow/tfjs-backend-wasm": TFJS_VERSION}
#: The check site's tfjs/ folder: file name there → its path in node_modules. The ES-module builds
#: (fesm) import each other by package name, which the check page's import map resolves.
SITE_FILES = {
    "tf-core.fesm.min.js": "@tensorflow/tfjs-core/dist/tf-core.fesm.min.js",
    "tf-converter.fesm.min.js": "@tensorflow/tfjs-converter/dist/tf-converter.fesm.min.js",
    "tf-backend-wasm.fesm.min.js": "@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.fesm.min.js",
    "tfjs-backend-wasm.wasm": "@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm",
    "tfjs-backend-wasm-simd.wasm": "@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm",
    "tfjs-backend-wasm-threaded-simd.wasm": "@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm",
}

MODEL_FILE = "model.json"
LOADER_FILE = "model.js"
SIGNATURE_FILE = web.SIGNATURE_FILE
#: The check page and the loader's own part (package data, see pyproject.toml); the shipped model.js
#: ends with the part every browser family's loader shares (web.loader).
PAGE_SOURCE = Path(__file__).with_name("check.html")
LOADER_SOURCE = Path(__file__).with_name(LOADER_FILE)
LOADER_PARTS = (LOADER_SOURCE, web.LOADER_SHARED)

#: TensorFlow dtype (as model.json's signature spells it) → the tfjs dtype (also the numpy dtype name).
#: tfjs has no 64-bit tensors: the converter stores int64 as int32 and float64 as float32.
TENSOR_TYPES = {"DT_FLOAT": "float32", "DT_DOUBLE": "float32", "DT_INT32": "int32", "DT_INT64": "int32",
                "DT_BOOL": "bool", "DT_UINT8": "int32", "DT_INT8": "int32", "DT_INT16": "int32"}


def site_sources() -> dict[str, Path]:
    """SITE_FILES with their paths on this host."""
    return {name: web.node_modules() / rel for name, rel in SITE_FILES.items()}


def loader() -> bytes:
    """model.js as the step ships it."""
    return web.loader(LOADER_PARTS)
