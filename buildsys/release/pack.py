"""Packing a release bundle: the verified artifacts and references (buildsys.release.bundle), a model card per
target, the SBOM, the provenance over every file, and a signature over all of them when a key is given;
then the reproducible archive.

Order matters: cards and SBOM are listed in the manifest, the provenance's subjects include the manifest,
and the signature covers the provenance. Nothing is written until every part is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.release import bundle as bundles
from buildsys.storage.archive import write_archive
from buildsys.release import cards, provenance, sbom
from buildsys.release.facts import from_lock
from buildsys.release.signing import SigningKey, sign_tree


@dataclass(frozen=True)
class Packed:
    """A bundle written: where, how many files, who signed it (None: unsigned), whether the source was dirty."""

    path: Path
    files: int
    signed_by: str | None
    dirty_source: bool


def make(planner: Any, lock: Any, dag: Any, name: str, out_dir: Path, key: SigningKey | None = None) -> Packed:
    """Write NAME-VERSION.(tar.gz|zip) into `out_dir` from the lock and the verified cache blobs."""
    cfg, store = planner.config, planner.store
    spec = bundles.resolve(cfg, name)
    manifest, entries = bundles.collect(cfg, lock, dag, name, store)
    facts = from_lock(lock, store)
    documents: dict[str, bytes] = {}
    for art in manifest.artifacts:
        layout = _json(entries.get(f"{art.target}/layout.json"))
        llm = _json(entries.get(f"{art.target}/{cards.LLM_SPEC}"))
        for doc, body in zip((cards.CARD_MD, cards.CARD_JSON), cards.card_bytes(facts[art.target], cfg, layout, llm)):
            member = f"{art.target}/{doc}"
            if member in entries:
                raise bundles.BundleError(f"target '{art.target}' ships its own {doc}; it would clash with its model card")
            documents[member] = body
    manifest_sha = hashlib.sha256(bundles.manifest_bytes(manifest)).hexdigest()  # before documents: no cycle
    documents[sbom.SBOM] = sbom.sbom(manifest, {a.target: facts[a.target].toolchain for a in manifest.artifacts},
                                     manifest_sha)
    manifest = manifest.model_copy(update={"documents": [
        bundles.FileEntry(path=p, sha256=hashlib.sha256(b).hexdigest(), size=len(b)) for p, b in sorted(documents.items())]})
    manifest_json = bundles.manifest_bytes(manifest)
    entries.update(documents)
    entries[bundles.MANIFEST] = manifest_json
    subjects = {f.path: f.sha256 for a in manifest.artifacts for f in a.files}
    subjects |= {f.path: f.sha256 for f in [*manifest.references, *manifest.documents]}
    subjects[bundles.MANIFEST] = hashlib.sha256(manifest_json).hexdigest()
    stmt = provenance.statement(cfg, manifest, subjects, facts, planner.lock.path)
    entries[bundles.PROVENANCE] = provenance.dumps(stmt)
    signed_by = None
    if key is not None:
        signed_by, entries[bundles.SIGNATURE] = _sign(entries, store, f"{name}-{spec.version}", key)
    path = write_archive(entries, out_dir / f"{name}-{spec.version}.{spec.archive}", spec.archive)
    source = stmt["predicate"]["buildDefinition"]["externalParameters"].get("source") or {}
    return Packed(path, len(entries), signed_by, bool(source.get("dirty")))


def _sign(entries: dict[str, Path | bytes], store: Any, label: str, key: SigningKey) -> tuple[str, bytes]:
    """Lay the bundle's files out as a directory (hard links to the CAS, where it can) and sign it."""
    scratch = store.scratch("bundle-signature")
    try:
        root = scratch / label  # the name the signature's subject carries
        for rel, source in entries.items():
            out = root / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                out.write_bytes(source)
                continue
            try:
                os.link(source, out)
            except OSError:
                shutil.copyfile(source, out)
        sig = scratch / bundles.SIGNATURE
        signer = sign_tree(root, sig, key)
        return signer, sig.read_bytes()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _json(source: Path | bytes | None) -> dict[str, Any] | None:
    if source is None:
        return None
    try:
        value = json.loads(source if isinstance(source, bytes) else source.read_bytes())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
