"""The TorchServe format: a model archive (.mar) made by torch-model-archiver from the TorchScript model.

A .mar is a zip: the serialized TorchScript (model.pt), a handler, extra files, and
MAR-INF/MANIFEST.json naming them. `torchserve --models <name>=model.mar` serves it.

The default handler is buildsys/formats/serving/torchserve_handler.py, archived as `handler.py` next to a
generated `signature.json`: it needs only torch and numpy, takes tensors as JSON (an object keyed by
input name, or a bare list for a one-input model), .npy or .npz bodies, batches concurrent requests
when the signature's batch axis is dynamic, and answers JSON keyed by output name. `handler:` may
instead name one of TorchServe's built-in handlers (image_classifier, ...) or a handler file of the
project. A check with `serving: true` serves the archive with a real TorchServe on loopback
(runtime "torchserve-server"), through the handler.

The archive is made reproducible after torch-model-archiver wrote it: entries sorted, timestamps and
permissions fixed, and the manifest's `createdOn` pinned, so an unchanged model gives identical bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pydantic import Field, field_validator

from buildsys.config.schema import NAME_PATTERN
from buildsys.formats import register, register_format
from buildsys.formats.base import Format, Step, StepContext, StepOptions
from buildsys.formats.torch.torchscript import TRACED

if TYPE_CHECKING:
    from buildsys.config.schema import Model

TORCHSERVE = register_format(Format(
    name="torchserve", filename="model.mar", runtime="torchserve-archive", serving_runtime="torchserve-server",
    description="TorchServe model archive (.mar: TorchScript model.pt, handler, MAR-INF/MANIFEST.json).",
))

SERIALIZED = "model.pt"
HANDLER_FILE = "handler.py"
#: The generated handler's source, archived byte for byte as HANDLER_FILE. Its bytes are not part of
#: the step's key: editing it must bump TorchServeFromTorchScript.version (a test pins its digest).
HANDLER_SOURCE = Path(__file__).with_name("torchserve_handler.py")
SIGNATURE_FILE = "signature.json"
MANIFEST = "MAR-INF/MANIFEST.json"
PINNED_CREATED_ON = "01/01/1980 00:00:00"  # the zip epoch: archives of the same model are byte-identical
# TorchServe's built-in handlers (ts.torch_handler.*), which the archiver leaves out of the archive.
BUILTIN_HANDLERS = ("base_handler", "image_classifier", "image_segmenter", "object_detector", "text_classifier")
RESERVED = (SERIALIZED, HANDLER_FILE, SIGNATURE_FILE, "MAR-INF")


@register
class TorchServeFromTorchScript(Step):
    """Package the TorchScript model with a handler into a TorchServe .mar (torch-model-archiver)."""

    name = "torchserve-from-torchscript"
    version = 2  # 2: the generated handler is torchserve_handler.py (typed, split into functions)
    consumes = TRACED
    produces = "torchserve"
    packages = ("torch-model-archiver",)
    extra = "serving"
    toolchain = "torch"
    description = "torch-model-archiver of model.pt with a generated (or given) handler."
    shipped_files = (HANDLER_SOURCE,)

    class Options(StepOptions):
        model_name: Optional[str] = Field(
            default=None, pattern=NAME_PATTERN, description="Model name in the manifest (what TorchServe registers "
            "and clients call: /predictions/<model_name>). Unset: the deploy.yaml model name.")
        version: str = Field(default="1.0", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$",
                             description="Model version in the manifest.")
        handler: Optional[str] = Field(
            default=None, description="Unset: a generated handler.py that serves tensors (JSON, .npy or .npz "
            "in, JSON out; see the module docs). Else a TorchServe built-in handler name (" +
            ", ".join(BUILTIN_HANDLERS) + ") or a .py file relative to deploy.yaml (its contents are part of the cache key).")
        extra_files: list[str] = Field(
            default_factory=list, description="Files or directories (relative to deploy.yaml) added to the archive "
            "next to the model, e.g. an index_to_name.json for a built-in handler (their contents are part of the cache key).")

        @field_validator("extra_files")
        @classmethod
        def _no_commas(cls, value: list[str]) -> list[str]:
            bad = [v for v in value if "," in v]
            if bad:
                raise ValueError(f"'{bad[0]}': torch-model-archiver separates extra files with commas, so a path "
                                 "may not contain one")
            return value

    @classmethod
    def files_used(cls, options: "TorchServeFromTorchScript.Options") -> tuple[str, ...]:  # type: ignore[override]
        handler = [options.handler] if options.handler and options.handler.endswith(".py") else []
        return tuple(handler + list(options.extra_files))

    @classmethod
    def check_config(cls, model: "Model", options: "TorchServeFromTorchScript.Options",  # type: ignore[override]
                     root: Path) -> str | None:
        opts = options
        handler = opts.handler
        if handler is not None and handler not in BUILTIN_HANDLERS:
            if not handler.endswith(".py"):
                return (f"handler '{handler}' is neither a built-in TorchServe handler ({', '.join(BUILTIN_HANDLERS)}) "
                        "nor a .py file")
            if not (root / handler).is_file():
                return f"handler file '{handler}' does not exist (paths are relative to the deploy file)"
            if Path(handler).name == SERIALIZED:
                return f"handler file '{handler}' would overwrite the model ({SERIALIZED}) in the archive"
        names: list[str] = []
        for extra in opts.extra_files:
            path = root / extra
            if not path.exists():
                return f"extra file '{extra}' does not exist (paths are relative to the deploy file)"
            names += [p.name for p in path.iterdir()] if path.is_dir() else [path.name]
        reserved = set(RESERVED) if handler is None else {SERIALIZED, "MAR-INF", Path(handler).name}
        clash = sorted(set(names) & reserved)
        if clash:
            return f"extra_files would overwrite '{clash[0]}', which modelbuild puts in the archive"
        return None

    def _run(self, ctx: StepContext[Options]) -> dict[str, Any]:
        import tempfile

        try:
            from model_archiver import ModelArchiverConfig
            from model_archiver.model_archiver_error import ModelArchiverError
            from model_archiver.model_packaging import generate_model_archive
        except ImportError:
            from buildsys.errors import MissingToolchain

            raise MissingToolchain("torch-model-archiver", self.extra,
                                   "TorchServe archives (torchserve-from-torchscript)") from None
        opts = ctx.options
        src = Path(str(ctx.input_path))
        if not src.is_file():
            raise self.fail(ctx, f"TorchScript file '{src.name}' does not exist")
        problem = self.check_config(ctx.model, opts, ctx.root)  # the files may have gone since planning
        if problem:
            raise self.fail(ctx, problem)
        name = opts.model_name or ctx.model_name
        with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".work-") as work_dir:
            work = Path(work_dir)
            stage = work / "stage"
            stage.mkdir()
            shutil.copyfile(src, stage / SERIALIZED)
            extra = [str(ctx.root / f) for f in opts.extra_files]
            if opts.handler is None:
                shutil.copyfile(HANDLER_SOURCE, stage / HANDLER_FILE)
                (stage / SIGNATURE_FILE).write_text(json.dumps(signature(ctx.model), indent=2) + "\n", encoding="utf-8")
                handler = str(stage / HANDLER_FILE)
                extra.insert(0, str(stage / SIGNATURE_FILE))
            elif opts.handler in BUILTIN_HANDLERS:
                handler = opts.handler
            else:
                handler = str(ctx.root / opts.handler)
            config = ModelArchiverConfig(
                model_name=name, handler=handler, version=opts.version, serialized_file=str(stage / SERIALIZED),
                extra_files=",".join(extra) or None, export_path=str(work), archive_format="default", force=True)
            # The archiver stages files in tempfile.gettempdir()/<model_name> and deletes that directory:
            # point it at this step's private scratch, or concurrent builds of one model would collide.
            scratch = work / "tmp"
            scratch.mkdir()
            saved, tempfile.tempdir = tempfile.tempdir, str(scratch)
            try:
                generate_model_archive(config)
            except (ModelArchiverError, OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise self.fail(ctx, f"torch-model-archiver failed: {first}") from exc
            finally:
                tempfile.tempdir = saved
            reproducible_zip(work / f"{name}.mar", ctx.out_dir / TORCHSERVE.filename)
        return self._verify(ctx, name, opts)

    def _verify(self, ctx: StepContext[Options], name: str, opts: Options) -> dict[str, Any]:
        """The archive's manifest parses and names the model, its serialized file and its handler."""
        import zipfile

        from buildsys.errors import InternalError, StepError
        from buildsys.formats.serving.torchserve_archive import read_manifest

        path = ctx.out_dir / TORCHSERVE.filename
        try:
            manifest = read_manifest(path)
        except StepError as exc:
            raise InternalError(f"torch-model-archiver wrote an archive modelbuild cannot read: {exc.what}") from exc
        with zipfile.ZipFile(path) as archive:
            members = sorted(archive.namelist())
        model = manifest.get("model", {})
        want_handler = HANDLER_FILE if opts.handler is None else Path(opts.handler).name
        wrong = [f"{key} is {model.get(key)!r}, not {want!r}" for key, want in
                 (("modelName", name), ("modelVersion", opts.version), ("serializedFile", SERIALIZED),
                  ("handler", want_handler)) if model.get(key) != want]
        wrong += [f"{member} is not in the archive" for member in
                  [SERIALIZED, *([want_handler] if opts.handler not in BUILTIN_HANDLERS else []),
                   *([SIGNATURE_FILE] if opts.handler is None else [])] if member not in members]
        if wrong:
            raise InternalError(f"the .mar's manifest does not describe what was archived: {'; '.join(wrong)}")
        return {"model_name": name, "version": opts.version, "handler": model["handler"], "files": members,
                "bytes": path.stat().st_size}


def signature(model: "Model") -> dict[str, Any]:
    """What the generated handler needs to know: inputs (name, shape with axis names, dtype), outputs, batching."""
    firsts = {i.shape[0] for i in model.inputs}
    return {"inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in model.inputs],
            "outputs": [{"name": o.name} for o in model.outputs],
            "dynamic_batch": len(firsts) == 1 and isinstance(next(iter(firsts)), str)}


def reproducible_zip(src: Path, dest: Path) -> None:
    """Rewrite a zip with sorted entries, fixed timestamps and modes, and the manifest's createdOn pinned."""
    import zipfile

    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as new:
        for name in sorted(old.namelist()):
            if name.endswith("/"):
                continue
            data = old.read(name)
            if name == MANIFEST:
                manifest = json.loads(data)
                manifest["createdOn"] = PINNED_CREATED_ON
                data = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            new.writestr(info, data)
