"""The "torchserve-archive" runtime: the TorchScript model inside a TorchServe .mar, run with torch.jit.load.

The archive is opened as TorchServe opens it: MAR-INF/MANIFEST.json names the serialized file, which
is extracted to a temporary directory and loaded. The check thereby proves that the archived model
(not the upstream file) runs and matches the reference.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Session
from buildsys.formats.torch.runtimes import TorchRuntime, TorchSession, load_torchscript

if TYPE_CHECKING:
    from buildsys.config.schema import Model

MANIFEST = "MAR-INF/MANIFEST.json"


def read_manifest(path: Path) -> dict[str, Any]:
    """MAR-INF/MANIFEST.json of a .mar, checked to name a model and a serialized file inside the archive."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            if MANIFEST not in members:
                raise StepError(f"'{path.name}' has no {MANIFEST}, so it is not a TorchServe model archive")
            manifest = json.loads(archive.read(MANIFEST))
    except (zipfile.BadZipFile, OSError) as exc:
        raise StepError(f"'{path.name}' is not a readable .mar (zip) file: {type(exc).__name__}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StepError(f"{MANIFEST} in '{path.name}' is not valid JSON: {exc}") from exc
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict) or not model.get("modelName"):
        raise StepError(f"{MANIFEST} in '{path.name}' names no model (model.modelName)")
    serialized = model.get("serializedFile")
    if not serialized:
        raise StepError(f"{MANIFEST} in '{path.name}' names no serialized file (model.serializedFile)")
    if serialized not in members:
        raise StepError(f"{MANIFEST} in '{path.name}' names the serialized file '{serialized}', which the archive "
                        "does not hold")
    return manifest


@register_runtime
class TorchServeArchive(TorchRuntime):
    """The serialized TorchScript of a .mar, extracted and run with torch.jit.load on the CPU."""

    name = "torchserve-archive"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        serialized = read_manifest(path)["model"]["serializedFile"]
        with tempfile.TemporaryDirectory(prefix="modelbuild-mar-") as tmp:
            target = Path(tmp) / PurePosixPath(serialized).name  # never a path from the archive
            with zipfile.ZipFile(path) as archive, archive.open(serialized) as member, open(target, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
            module = load_torchscript(target, f"'{serialized}' in '{Path(path).name}'")
        return TorchSession(module, model)

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        """The manifest and the archive's files (no torch needed): holds on every host."""
        try:
            manifest = read_manifest(path)
        except StepError as exc:
            return {"facts": {}, "problems": [exc.what]}
        with zipfile.ZipFile(path) as archive:
            members = sorted(archive.namelist())
        entry = manifest["model"]
        problems = []
        handler = str(entry.get("handler", ""))
        if handler.endswith(".py") and handler.split(":")[0] not in members:
            problems.append(f"the manifest's handler '{handler}' is not in the archive")
        facts = {"model_name": entry.get("modelName"), "version": entry.get("modelVersion"),
                 "serialized_file": entry.get("serializedFile"), "handler": handler,
                 "runtime": manifest.get("runtime"), "archiver_version": manifest.get("archiverVersion"),
                 "files": members}
        return {"facts": facts, "problems": problems}
