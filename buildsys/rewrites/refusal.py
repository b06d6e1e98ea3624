"""From a converter's refusal to the rewrites that remove what it refused (torch-free).

`explain_refusal(text, ops)` ranks the rewrites a refusal points at, each with why:

1. `named`: the text names an op the rewrite removes, in any spelling converters use (aten::stft,
   aten.stft.default, 'stft', STFT, EmbeddingBag; a bare lower-case word does not count, so "complex
   types" does not name aten::complex);
2. `sign`: the text matches one of the rewrite's signs (complex<f32>, an ONNX Loop), for refusals
   that name the symptom rather than the op;
3. `in-program`: the text names no ATen op at all (ExecuTorch's "error 0x14" on load, a converter's
   internal TypeError) and the program contains an op the rewrite removes.

`ops`, when given, are the ATen op names of the exported program (any spelling; decomposed or not): a
rewrite that removes none of them cannot change the program and is left out. Within a tier, rewrites
naming more of their ops in the text, then holding more of them in the program, then named earlier,
then removing fewer ops (the more specific) come first. A rewrite that adds nothing is left out: a
member of a family that matched in the same tier, and one whose matched ops a better one of its tier
matched too (the spotter's refused `unfold`, which its stft decomposes into, is answered by the FFT
family, which also holds the program's `_fft_r2c`; a model's own Tensor.unfold by `unfold`). A refusal about an op no rewrite removes gives []; `ops_named` says which
ops it named, so the plan can report that op as the one without a rewrite yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from buildsys.rewrites.base import Rewrite, op_base
from buildsys.rewrites.registry import REGISTRY

Tier = Literal["named", "sign", "in-program"]
_TIERS: tuple[Tier, ...] = ("named", "sign", "in-program")
_NAMED_OPS = (re.compile(r"\baten(?:::|\.)([A-Za-z0-9_]+)"),
              re.compile(r"convert function for op '([A-Za-z0-9_]+)'"),      # coremltools
              re.compile(r"Missing operator: \[\d+\] (?:aten::)?([A-Za-z0-9_]+)"))  # ExecuTorch's log
#: More spellings of a refused op, for locating it in the model (`refused_ops`; rewrites rank by `_NAMED_OPS`).
_MORE_NAMED_OPS = (re.compile(r"fx node [^,\s]+, kind ([A-Za-z0-9_]+)"),  # coremltools' torch.export frontend
                   re.compile(r"PyTorch op '([A-Za-z0-9_]+)'"),            # the Core ML steps' own refusal
                   re.compile(r"\bprims(?:::|\.)([A-Za-z0-9_]+)"))         # the dynamo ONNX exporter, after decomposing


@dataclass(frozen=True)
class RefusalMatch:
    """One rewrite a refusal points at: how (tier), through which ops, and a sentence saying so."""

    rewrite: Rewrite
    tier: Tier
    ops: tuple[str, ...]
    why: str


#: What precedes an op's own lower-case name where a message names the op rather than uses the word
#: ("complex types", "a diff"): aten::x, aten.x, torch.x, 'x', %x (an fx node), "node x", "kind x", "op x",
#: "operator x" (the TorchScript ONNX exporter's "ONNX export of operator index_add, alpha != 1").
_QUALIFIED = r"(?:(?<=::)|(?<=\.)|(?<=['\"%`])|(?<=node )|(?<=kind )|(?<=op )|(?<=operator ))"


def _mention_patterns(base: str) -> list[str]:
    camel = "".join(part[:1].upper() + part[1:] for part in base.strip("_").split("_"))
    end = r"(?![A-Za-z0-9_])"
    return [_QUALIFIED + re.escape(base) + "_?" + end] + \
        [rf"(?<![A-Za-z0-9_]){re.escape(s)}{end}" for s in {base.upper(), camel} if s != base]


def _first_mention(text: str, base: str) -> int | None:
    """Where `text` first names the op `base`: its name qualified (aten::stft, 'embedding_bag', torch.stft,
    %_fft_r2c, "node unfold"), its ONNX-style upper-case name (STFT) or its CamelCase (EmbeddingBag)."""
    hits = [m.start() for pattern in _mention_patterns(base) for m in re.finditer(pattern, text)]
    return min(hits) if hits else None


def ops_named(text: str, patterns: Sequence[re.Pattern[str]] = _NAMED_OPS) -> list[str]:
    """The ATen ops (bare names) a refusal names, in order of first mention."""
    found: dict[str, int] = {}
    for pattern in patterns:
        for m in pattern.finditer(text):
            found.setdefault(m.group(1), m.start())
    return sorted(found, key=found.__getitem__)


def refused_ops(text: str) -> list[str]:
    """The ops a refusal names in any spelling a converter uses (`ops_named`, and coremltools' "kind erfinv",
    the Core ML steps' "PyTorch op 'erfinv'", the dynamo ONNX exporter's "prims::erf_inv"): what
    buildsys.localise.source_lines looks for in the model's source."""
    return ops_named(text, _NAMED_OPS + _MORE_NAMED_OPS)


def explain_refusal(error_text: str, ops: Sequence[str] = ()) -> list[RefusalMatch]:
    """The rewrites `error_text` points at, best first, each with its tier and why (see the module doc)."""
    program = {op_base(o) for o in ops}
    names_any_op = bool(ops_named(error_text))
    ranked: list[tuple[tuple[int, int, int, int, int, int], RefusalMatch]] = []
    for index, rewrite in enumerate(REGISTRY.values()):
        removes = [op_base(o) for o in rewrite.removes]
        present = [o for o in removes if o in program]
        if program and not present:
            continue  # the program has none of its ops: it cannot change anything
        mentions = {o: pos for o in removes if (pos := _first_mention(error_text, o)) is not None}
        signs = [s for s in rewrite.signs if re.search(s, error_text)]
        if mentions:
            tier: Tier = "named"
            via = tuple(sorted(mentions, key=mentions.__getitem__))
            why = f"the refusal names {', '.join(via)}"
        elif signs:
            tier, via = "sign", tuple(present)
            why = f"the refusal matches {signs[0]!r}" + (f" and the program has {', '.join(via)}" if via else "")
        elif present and not names_any_op:
            tier, via = "in-program", tuple(present)
            why = f"the refusal names no op and the program has {', '.join(via)}"
        else:
            continue
        first = min(mentions.values()) if mentions else len(error_text)
        key = (_TIERS.index(tier), -len(mentions), -len(present), first, len(removes), index)
        ranked.append((key, RefusalMatch(rewrite=rewrite, tier=tier, ops=via, why=why)))
    matched = {(m.tier, m.rewrite.name) for _, m in ranked}
    kept: list[RefusalMatch] = []
    for _, match in sorted(ranked, key=lambda item: item[0]):
        if (match.tier, match.rewrite.family) in matched:
            continue  # its family matched too, and does all it does
        if not any(better.tier == match.tier and _adds_nothing(match, better) for better in kept):
            kept.append(match)
    return kept


def _adds_nothing(match: RefusalMatch, better: RefusalMatch) -> bool:
    """Whether `better` (ranked above `match`, same tier) removes every op `match` matched."""
    removes = {op_base(o) for o in better.rewrite.removes}
    return bool(match.ops) and set(match.ops) <= set(better.ops) and set(match.ops) <= removes


def for_refusal(error_text: str, ops: Sequence[str] = ()) -> list[Rewrite]:
    """The rewrites that remove what a converter refused, best first (explain_refusal without the reasons)."""
    return [match.rewrite for match in explain_refusal(error_text, ops)]
