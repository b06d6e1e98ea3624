"""Op rewrites: semantics-preserving transformations of a model that remove an op a converter refuses.

A rewrite is keyed by the op it removes, never by a model, and runs at the level every route shares:
the model's forward, under a torch function mode (`mechanism.py`), so torch.jit.trace and torch.export
see the same rewritten computation. This package's registry needs no torch; the rewrites import it
when they run. See docs/rewrites.md.

    from buildsys import rewrites
    rewrites.REGISTRY["stft"].removes           # ('aten::stft', ...)
    module = rewrites.apply(model, ["stft"])     # same parameters, no aten::stft when traced
    rewrites.for_refusal("Unsupported ir element type: complex<f32>", ops=["aten.stft.default"])
"""

from __future__ import annotations

from buildsys.rewrites.base import Rewrite, RewriteNotApplicable, UnknownRewrite, op_base
from buildsys.rewrites.refusal import RefusalMatch, explain_refusal, for_refusal, ops_named
from buildsys.rewrites.registry import (MECHANISM, REGISTRY, apply, carried, check_names, get, precise_for, quantizable_for,
                                       removing, versions)

__all__ = ["MECHANISM", "REGISTRY", "RefusalMatch", "Rewrite", "RewriteNotApplicable", "UnknownRewrite", "apply", "carried", "check_names",
           "explain_refusal", "for_refusal", "get", "op_base", "ops_named", "precise_for", "quantizable_for", "removing", "versions"]
