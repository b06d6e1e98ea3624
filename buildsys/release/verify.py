"""Checking a bundle can be trusted before its numbers are: the signature (who made it, and that nothing
changed since), the manifest's hashes, the provenance against the files, the SBOM against the manifest.
Every problem is reported in plain words, not only the first; any failure fails the verification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from buildsys.release import bundle as bundles
from buildsys.release import provenance, sbom
from buildsys.release.signing import Status, Trust, check_signature

#: A verifier's trust, given outright or chosen once the bundle's name is known (deploy.yaml's section).
TrustSource = Trust | Callable[[str], Trust] | None


@dataclass(frozen=True)
class TrustCheck:
    """One part of a bundle checked by `bundle verify`: signature, manifest, provenance or sbom."""

    what: str
    status: Status
    detail: str


def unpack_and_verify(path: Path, dest: Path, trust: TrustSource = None,
                      on_check: Callable[[TrustCheck], None] | None = None) -> bundles.Manifest:
    """Extract `path` into `dest` and check it; BundleError naming the first failure (each is passed to
    `on_check` as it is found). Returns the manifest when everything holds."""
    sums = bundles.unpack(path, dest)
    checks: list[TrustCheck] = []

    def found(check: TrustCheck) -> None:
        checks.append(check)
        if on_check is not None:
            on_check(check)

    if callable(trust):
        trust = trust(_bundle_name(dest))
    signature = check_signature(dest, sums, trust or Trust())
    found(TrustCheck("signature", signature.status, signature.detail))
    manifest: bundles.Manifest | None = None
    try:
        manifest = bundles.check_files(path, dest, sums)
        found(TrustCheck("manifest", "passed", f"every sha256 of {len(sums)} file(s) matches the manifest"))
    except bundles.BundleError as exc:
        found(TrustCheck("manifest", "failed", exc.what))
    if bundles.PROVENANCE in sums:
        problems = provenance.check((dest / bundles.PROVENANCE).read_bytes(), sums, manifest)
        found(TrustCheck("provenance", "failed" if problems else "passed",
                         "; ".join(problems) or f"covers all {len(sums) - 1 - (bundles.SIGNATURE in sums)} file(s)"))
    else:
        found(TrustCheck("provenance", "not run", f"the bundle has no {bundles.PROVENANCE}"))
    if sbom.SBOM in sums:
        problems = sbom.check((dest / sbom.SBOM).read_bytes(), manifest)
        listed = len(sbom.packages((dest / sbom.SBOM).read_bytes())) if not problems else 0
        found(TrustCheck("sbom", "failed" if problems else "passed",
                         "; ".join(problems) or f"lists the {listed} package(s) the artifacts were made and checked with"))
    failed = [c for c in checks if c.status == "failed"]
    if failed:
        more = f" (and {len(failed) - 1} more problem(s), listed above)" if len(failed) > 1 else ""
        raise bundles.BundleError(f"{path.name} failed verification: {failed[0].what}: {failed[0].detail}{more}")
    assert manifest is not None
    return manifest


def _bundle_name(root: Path) -> str:
    """The bundle's name as its manifest says (before the manifest is checked: it only picks a trust)."""
    try:
        name = json.loads((root / bundles.MANIFEST).read_bytes()).get("bundle", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return name if isinstance(name, str) else ""
