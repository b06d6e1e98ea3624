"""What answers a converter's refusal (torch-free): `Answer`, and the parts of refusal texts the steps' classifiers
(`Step.answers`) share. The planner reads them; nothing here imports torch.

An answer is never tried blindly: each is picked from the refusal's own words (an ATen op it names, a shape
constraint torch.export reports, a converter's own symptom), so a refusal nothing here recognises has no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

#: Where an answer's options go: the refusing step's own options, the options of the stop that loads the PyTorch
#: module (decompose, static_fallback: formats/torch/rewritten.py), or a format made earlier on the same route (the
#: SavedModel onnx2tf makes, for a refusal of the TFLite converter after it).
STEP, LOADING = "step", "loading"
#: `decompose` values: the refused ops by name, or the whole program to core ATen.
CORE = "core"


@dataclass(frozen=True)
class Answer:
    """One way to make a refused conversion work, read from the refusal.

    `label` names the route stop it makes ("decompose grid_sampler_2d", "onnx2tf rnn-unroll"); `options` are the
    option values it sets (sorted pairs, so answers compare and hash); `at` is where they go (`STEP`, `LOADING` or
    the name of a format made earlier on the route); `via`, when set, makes it a route answer: the same target
    through these formats (another converter of the same format, e.g. coremltools' torch.export frontend by
    `via: [pt2]`). `static_only`: valid only on a route whose steps after `at` make fixed shapes whatever they are
    given (`Step.makes_static`): a .pt2 delivered with its dynamic axes must keep failing, naming the constraint.
    `why` is one line for the plan and the lock.
    """

    label: str
    options: tuple[tuple[str, Any], ...] = ()
    at: str = STEP
    why: str = ""
    via: tuple[str, ...] = ()
    static_only: bool = False

    @classmethod
    def of(cls, label: str, options: Mapping[str, Any] | None = None, **fields: Any) -> "Answer":
        """An answer with `options` given as a mapping (lists as tuples, so the answer stays hashable)."""
        pairs = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (options or {}).items()))
        return cls(label=label, options=pairs, **fields)

    @property
    def values(self) -> dict[str, Any]:
        """The option values as deploy.yaml writes them (`{decompose: [grid_sampler_2d]}`)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.options}


@dataclass(frozen=True)
class Symptom:
    """A refusal text a converter switch answers: its patterns (regular expressions; any matches), and the answer."""

    patterns: tuple[str, ...]
    answer: Answer


# --- ATen ops a refusal names ----------------------------------------------------------------------------------

#: Converter spellings of an ATen op that `rewrites.ops_named` does not read (it reads aten::x, aten.x, coremltools'
#: "convert function for op 'x'" and ExecuTorch's "Missing operator"): coremltools' torch.export frontend, and
#: the Core ML step's own wording of a trace-frontend refusal.
_MORE_NAMED_OPS = (re.compile(r"Unsupported fx node ([A-Za-z0-9_]+)"),
                   re.compile(r"the PyTorch op '([A-Za-z0-9_]+)'"))


def refused_ops(text: str) -> list[str]:
    """The ATen ops (bare names: grid_sampler_2d) a refusal names, in order of first mention."""
    from buildsys.rewrites import ops_named

    found = {op: text.find(op) for op in ops_named(text)}
    for pattern in _MORE_NAMED_OPS:
        for match in pattern.finditer(text):
            found.setdefault(match.group(1), match.start())
    return [op.split(".", 1)[0] for op in sorted(found, key=found.__getitem__)]


def decomposition_answers(text: str, decomposable: Collection[str] | None = None) -> list[Answer]:
    """The default answers to a refusal that names ATen ops: decompose those ops with PyTorch's own tables, then, if
    that is not enough, the whole program to core ATen; both at the stop that loads the module.

    `decomposable` are the ops some table decomposes (the `decomposable` table of buildsys.planning.coverage_probe); a named
    op outside it gets no answer (a rewrite must remove it: docs/rewrites.md). None (the table not read): every
    named op is answered, and the step says plainly if no table has it.
    """
    named = refused_ops(text)
    chosen = [op for op in named if decomposable is None or op in decomposable]
    if not chosen:
        return []
    return [Answer.of(f"decompose {'+'.join(chosen)}", {"decompose": chosen}, at=LOADING,
                      why=f"the refusal names {', '.join(chosen)}, which PyTorch's decomposition tables lower to other ops"),
            DECOMPOSE_CORE]


#: A step the build stopped at its time budget or memory ceiling (running/watchdog.py): not a refusal to answer.
STOPPED = re.compile(r"\bstopped: (?:still running at its|\S+ \w*B over its)")

#: The whole program to core ATen: after a named op's decomposition, or for a refusal that a measured symptom ties
#: to a composite op's remains (ExecuTorch's and litert-torch's re-export of a program holding `detach_`).
DECOMPOSE_CORE = Answer.of("decompose core", {"decompose": CORE}, at=LOADING,
                           why="the whole program lowered to core ATen with PyTorch's decompositions")


# --- shapes ------------------------------------------------------------------------------------------------------

#: torch.export's refusal of dynamic axes the code specialises ("Constraints violated (batch)! … specialized it to
#: be a constant (2)"), as the loading steps and the dynamo ONNX exporter report it.
CONSTRAINT_VIOLATED = re.compile(r"Constraints violated|specialized it to be a constant|not all values of \w+ .* satisfy")


#: torch.export stopping on a value read from the data (`.item()`, `int(tensor)`, a nonzero count) that Python code
#: branches or loops on ("Could not guard on data-dependent expression Eq(u0, 1)", "Could not extract specialized
#: integer from data-dependent expression u0"): lowering/export.py exports it again with the example's values.
DATA_DEPENDENT = re.compile(r"data-dependent expression|GuardOnDataDependentSymNode")


#: The static re-export, for torch.export's dynamic-shape constraint: valid where the steps after the loading stop
#: make fixed shapes anyway (an ExecuTorch .pte, litert-torch's TFLite), never for a .pt2 delivered dynamic.
STATIC_EXPORT = Symptom((CONSTRAINT_VIOLATED.pattern,), Answer.of(
    "static export", {"static_fallback": True}, at=LOADING, static_only=True,
    why="torch.export's dynamic axes violate a constraint of the model's code; the formats after it have fixed "
        "shapes anyway"))


#: ExecuTorch's and litert-torch's re-export of the loaded program refusing an in-place detach of a view that a
#: composite op left in it (affine_grid with align_corners: a spatial transformer): its core decomposition has none.
DETACHED_VIEW = Symptom((r"Can't detach views in-place",), DECOMPOSE_CORE)


def matches(text: str, patterns: Sequence[str]) -> str | None:
    """The first of `patterns` (regular expressions) found in `text`, or None."""
    return next((p for p in patterns if re.search(p, text)), None)


def symptom_answers(text: str, symptoms: Sequence[Symptom]) -> list[Answer]:
    """The answers of every symptom `text` shows, in the order given (a step lists its best first)."""
    return [s.answer for s in symptoms if matches(text, s.patterns)]
