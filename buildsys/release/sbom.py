"""The bundle's SBOM: CycloneDX 1.6 JSON of the toolchain its artifacts were actually made and checked with
(every package in the keys of the bundled nodes, at the version the lock records), each artifact as a
machine-learning-model component with its files' hashes, and which packages each one depends on.

Deterministic: the serial number derives from the manifest, the timestamp from the build record (or
SOURCE_DATE_EPOCH), so the same lock and record give the same bytes.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from typing import TYPE_CHECKING, Any, Mapping

from buildsys import __version__

if TYPE_CHECKING:
    from buildsys.release.bundle import Manifest

SBOM = "sbom.cdx.json"
_EPOCH = datetime.datetime(1980, 1, 1, tzinfo=datetime.timezone.utc)  # as the archive's fixed mtimes


def sbom(manifest: "Manifest", toolchains: dict[str, dict[str, str]], manifest_sha256: str,
         env: Mapping[str, str] = os.environ) -> bytes:
    """The SBOM of a bundle; `toolchains`: each target's packages and versions (from its nodes' keys)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    packages: dict[tuple[str, str], Component] = {}
    for name, version in sorted({(n, v) for t in toolchains.values() for n, v in t.items()}):
        purl = PackageURL(type="pypi", name=_normalized(name), version=version)
        packages[(name, version)] = Component(name=name, version=version, type=ComponentType.LIBRARY, purl=purl,
                                              bom_ref=str(purl), licenses=_licenses(name, version))
    models = []
    for art in manifest.artifacts:
        files = [Component(name=f.path, type=ComponentType.FILE, bom_ref=f"file:{f.path}",
                           hashes=[HashType(alg=HashAlgorithm.SHA_256, content=f.sha256)]) for f in art.files]
        props = {"modelbuild:format": art.format, "modelbuild:precision": art.precision, "modelbuild:model": art.model,
                 "modelbuild:route": " → ".join(art.route), "modelbuild:check": _verdict(art.check)}
        models.append(Component(
            name=art.target, version=manifest.version, type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref=f"model:{art.target}",
            description=f"{art.model} as {art.format}", components=files,
            properties=[Property(name=k, value=v) for k, v in props.items() if v]))
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"modelbuild:{manifest_sha256}"),
              metadata=BomMetaData(
                  timestamp=_timestamp(manifest, env),
                  component=Component(name=manifest.bundle, version=manifest.version, type=ComponentType.FILE,
                                      bom_ref=f"bundle:{manifest.bundle}", description=manifest.description or None),
                  tools=ToolRepository(components=[Component(name="modelbuild", version=__version__,
                                                             type=ComponentType.APPLICATION)])),
              components=[*models, *packages.values()])
    assert bom.metadata.component is not None
    bom.register_dependency(bom.metadata.component, models)
    for art, component in zip(manifest.artifacts, models):
        bom.register_dependency(component, [packages[(n, v)] for n, v in sorted(toolchains.get(art.target, {}).items())])
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    return (json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n").encode()


def check(data: bytes, manifest: "Manifest | None") -> list[str]:
    """Where the SBOM disagrees with the manifest: every package an artifact's chain was keyed with must be
    listed at that version, and every artifact listed with its files' hashes."""
    try:
        bom = json.loads(data)
        listed = {(c["name"], c.get("version")) for c in bom.get("components", []) if c.get("type") == "library"}
        models = {c["name"]: {f["name"]: f["hashes"][0]["content"] for f in c.get("components", [])}
                  for c in bom.get("components", []) if c.get("type") == "machine-learning-model"}
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return [f"not CycloneDX JSON with components ({type(exc).__name__}: {exc})"]
    if bom.get("bomFormat") != "CycloneDX":
        return ["not a CycloneDX document"]
    if manifest is None:
        return []
    problems = []
    for art in manifest.artifacts:
        problems += [f"{art.target}: {n} {v} is in its chain's keys but not in the SBOM"
                     for n, v in sorted(art.toolchain.items()) if (n, v) not in listed]
        if {f.path: f.sha256 for f in art.files} != models.get(art.target):
            problems.append(f"{art.target}: the SBOM's files and hashes are not the manifest's")
    return problems


def packages(data: bytes) -> dict[str, str]:
    """The libraries an SBOM lists, name → version."""
    return {c["name"]: c.get("version", "") for c in json.loads(data).get("components", []) if c.get("type") == "library"}


def _timestamp(manifest: "Manifest", env: Mapping[str, str]) -> datetime.datetime:
    if env.get("SOURCE_DATE_EPOCH", "").isdigit():  # reproducible-builds.org's convention wins
        return datetime.datetime.fromtimestamp(int(env["SOURCE_DATE_EPOCH"]), tz=datetime.timezone.utc)
    times = [str(c.built["at"]) for a in manifest.artifacts for c in a.chain if c.built.get("at")]
    return datetime.datetime.fromisoformat(max(times)) if times else _EPOCH


def _licenses(name: str, version: str) -> list[Any]:
    """The package's SPDX license expression (PEP 639 metadata) when the installed version is the one used."""
    import importlib.metadata

    from cyclonedx.model.license import LicenseExpression

    try:
        meta = importlib.metadata.metadata(name)
    except importlib.metadata.PackageNotFoundError:
        return []
    expression = (meta.get_all("License-Expression") or [None])[0]
    return [LicenseExpression(expression)] if expression and meta["Version"] == version else []


def _verdict(check: dict[str, Any]) -> str:
    from buildsys.status import check_status

    return check_status(check)


def _normalized(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()
