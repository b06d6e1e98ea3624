"""Lowering a refused model with PyTorch's own machinery and the converters' switches (docs/lowering.md).

`answers.py` (torch-free, what the planner reads) says which answer a converter's refusal calls for: `Answer`, the
refusal patterns the steps' classifiers (`Step.answers`) share. The worker side: `decompose.py` decomposes an
exported program with PyTorch's tables (the `decompose` option of the steps that load the module); `export.py`
exports the module with torch.export, at static shapes when the dynamic export violates a constraint and the
route allows it (`static_fallback`).
"""

from __future__ import annotations

from buildsys.lowering.answers import CORE, DECOMPOSE_CORE, DETACHED_VIEW, LOADING, STATIC_EXPORT, STEP, Answer, Symptom, \
    decomposition_answers, refused_ops, symptom_answers

__all__ = ["CORE", "DECOMPOSE_CORE", "DETACHED_VIEW", "LOADING", "STATIC_EXPORT", "STEP", "Answer", "Symptom",
           "decomposition_answers", "refused_ops", "symptom_answers"]
