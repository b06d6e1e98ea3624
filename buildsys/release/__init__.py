"""Releases people can trust and review: signed bundles with provenance and an SBOM, model cards,
`diff` between builds, and `init` (docs/releases.md). Nothing here imports a framework at module level."""
