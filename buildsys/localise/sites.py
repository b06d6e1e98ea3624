"""Where in the user's model a refused op is called, in words (standard library only: the orchestrator
records and prints it; the worker side that finds the sites is `source_lines.py`).

A `Site` is one call of an op: the `nn.Module` path and class it was called in, and the file, line and
code of the call in the model's source (the innermost frame of the call's stack outside PyTorch). A
failed step's reply carries its refused ops' sites (`refused`), its one-line error ends with the first
(`with_sites`), deploy.lock's record of the dropped route keeps them, and a target whose every route
failed ends its summary with them and what the user can do (`blocked_advice`).
"""

from __future__ import annotations

import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

#: The longest one-line reason deploy.lock keeps for a dropped route (buildsys.planning.history cuts there).
REASON_LIMIT = 300
#: Sites kept per op: the first few calls say where; a model calling an op 200 times needs no list of 200.
SITES_PER_OP = 3
#: Where the standard library lives (in a virtual environment `platstdlib` is the venv's lib/pythonX.Y, which
#: holds site-packages: hence the check for "-packages/" in `stdlib_file`).
_STDLIB = tuple(p for p in {sysconfig.get_paths().get("stdlib", ""), sysconfig.get_paths().get("platstdlib", "")} if p)


def stdlib_file(path: str) -> bool:
    """Whether `path` is a module of Python's standard library (not an installed package; `<frozen …>` too)."""
    return path.startswith("<frozen ") or (path.startswith(_STDLIB) and "-packages/" not in path)


@dataclass(frozen=True)
class Site:
    """One call of `op` in the user's model: in module `module` (a path of `named_modules()`, "" for the
    model itself) of class `module_type`, at `file`:`line` (relative to the project, or to the import root of
    an installed package: `timm/layers/mlp.py`), whose source line is `code`."""

    op: str
    module: str
    module_type: str
    file: str
    line: int
    code: str = ""

    def place(self) -> str:
        """'head (ProbitHead) at probit.py:13'."""
        module = f"{self.module} ({self.module_type})" if self.module else f"the model ({self.module_type or '?'})"
        return f"{module} at {self.file}:{self.line}" if self.file else module

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> "Site":
        return cls(str(value.get("op", "")), str(value.get("module", "")), str(value.get("module_type", "")),
                   str(value.get("file", "")), int(value.get("line", 0) or 0), str(value.get("code", "")))


def short_path(path: str, root: Path | None = None) -> str:
    """`path` as a reader finds it: relative to the project `root` when under it, else relative to the import
    root it lies in (site-packages: `onnx2tf/onnx2tf.py`), else as given."""
    resolved = Path(path)
    if root is not None:
        try:
            return str(resolved.relative_to(root))
        except ValueError:
            pass
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    for entry in sorted((p for p in sys.path if p and p != "."), key=len, reverse=True):
        try:
            return str(resolved.relative_to(entry))
        except ValueError:
            continue
    return path


def describe(sites: Sequence[Site]) -> str:
    """'erfinv is called in head (ProbitHead) at probit.py:13' (the first call of each op, and how many more)."""
    by_op: dict[str, list[Site]] = {}
    for site in sites:
        by_op.setdefault(site.op, []).append(site)
    parts = []
    for op, calls in by_op.items():
        more = f" (and {len(calls) - 1} more call{'s' if len(calls) > 2 else ''})" if len(calls) > 1 else ""
        parts.append(f"{op} is called in {calls[0].place()}{more}")
    return "; ".join(parts)


def called_at(sites: Sequence[Mapping[str, Any]] | None) -> str:
    """'; called in head (ProbitHead) at probit.py:13' for an op's first recorded site (the op analysis'), "" for none."""
    return f"; called in {Site.from_dict(sites[0]).place()}" if sites else ""


def refused_lines(refused: Sequence[Mapping[str, Any]]) -> list[str]:
    """A failed step's refused ops for the build's failure list: each call with its code."""
    out = []
    for value in refused:
        site = Site.from_dict(value)
        out.append(f"{site.op} is called in {site.place()}" + (f": {site.code}" if site.code else ""))
    return out


def with_sites(error: str, sites: Sequence[Site], limit: int = REASON_LIMIT) -> str:
    """The one-line `error` ending with where its refused ops are called, shortened (not the sites) to fit
    `limit` characters: deploy.lock keeps that much of a dropped route's reason."""
    first = error.strip().splitlines()[0] if error.strip() else "failed"
    if not sites:
        return first
    return fit_reason(f"{first} — {describe(sites)}", limit)  # not in [brackets]: rich would read them as markup


def fit_reason(reason: str, limit: int = REASON_LIMIT) -> str:
    """A reason's first line within `limit` characters, shortened before the " — <op> is called in …" it may end
    with (`with_sites`): the place in the user's model stays whole when a note follows it."""
    first = reason.strip().splitlines()[0] if reason.strip() else "failed"
    if len(first) <= limit:
        return first
    head, sep, where = first.rpartition(" — ")
    if not sep or " is called in " not in where:
        head, sep, where = first, "", ""
    room = max(limit - len(sep + where), 40)
    return head[:room - 1].rstrip() + "…" + sep + where


def blocked_advice(records: Iterable[Mapping[str, Any]], takers: Mapping[str, Sequence[str]] | None = None,
                   rewrites: Mapping[str, Sequence[str]] | None = None) -> str:
    """For a target whose every route failed: where its refused ops are called and what the user can do, from
    the dropped routes' `records` (deploy.lock's, with their `refused` sites); "" when no record names a site.
    `takers` (op → converter tables that have it, buildsys.planning.coverage) and `rewrites` (op → rewrites that remove
    it) make the advice concrete."""
    sites: dict[tuple[str, str, int], Site] = {}
    for record in records:
        for value in record.get("refused") or []:
            site = Site.from_dict(value)
            sites.setdefault((site.op, site.file, site.line), site)
    if not sites:
        return ""
    ops = list(dict.fromkeys(s.op for s in sites.values()))
    removers, tables = rewrites or {}, takers or {}
    todo = []
    for op in ops:
        if removers.get(op):
            todo.append(f"let the rewrite {removers[op][0]} remove {op} (unset the target's `rewrites:` or list it there)")
        elif tables.get(op):
            todo.append(f"{', '.join(tables[op])} {'takes' if len(tables[op]) == 1 else 'take'} {op}: choose a route "
                        "or format through it")
    todo.append(f"replace {'that call' if len(sites) == 1 else 'those calls'} with ops the converters take, or add a "
                f"rewrite for {', '.join(ops)} (docs/rewrites.md, \"Adding a rewrite\")")
    return f"{describe(list(sites.values()))}; to deliver it: {'; or '.join(todo)}"


def blocked_line(records: Sequence[Mapping[str, Any]], tables: Mapping[str, Sequence[str]] | None = None) -> str:
    """`blocked_advice` for a blocked target's reason ('; erfinv is called in … ; to deliver it: …'), with the
    converter tables that take each op (`tables`: the op analysis' cache, planning.coverage) and the rewrites
    that remove it; "" when no dropped route located its refused op."""
    from buildsys.rewrites import removing

    ops = {str(site.get("op", "")) for record in records for site in record.get("refused") or []}
    # Converters only: XNNPACK's table says what it may delegate, `decomposable` what PyTorch's tables lower.
    takers = {op: [name for name, accepts in sorted((tables or {}).items())
                   if op in accepts and name not in ("xnnpack", "decomposable")] for op in ops}
    advice = blocked_advice(records, takers, {op: [r.name for r in removing(op)] for op in ops})
    return f"; {advice}" if advice else ""
