"""The one status vocabulary: what a plan says of a node, what a build did to it, what a check found.

Every output (plan, build summary, `--json`, deploy.lock, the HTML/Markdown report, bundle manifests,
the Python API) spells an outcome with these enums and builds a target's words with `describe`, so
one thing has one name everywhere:

- `State`: a node in a plan. `blocked` means one thing only: this host lacks what the node's step
  needs (an NVIDIA GPU). A node that already failed under the key it would have now (every route of
  its target failed, or it failed earlier in this build) is `failed`, not blocked.
- `Action`: what a build will do about a node (the executor's instruction: run, restore, fail or skip it).
- `Analysis`: which op analysis a plan may run first.
- `Outcome`: what a build did to a node.
- `Verdict`: what a target's check found, with `Caveat`s: parts that were not run, or ran on a
  lesser path than asked (a model delivered un-optimized, a LiteRT check that fell back from
  XNNPACK to the builtin kernels), numbers computed by a stand-in rather than the device's runtime
  (Core ML's MIL reference interpreter off macOS), or a route that fell back. `--strict` and
  `require_numeric` fail on every caveat but a route fallback, and a stand-in the target accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable


class _Word(str, Enum):
    """An enum whose members are their words (they compare and serialize as plain strings)."""

    def __str__(self) -> str:
        return str(self.value)


class State(_Word):
    """A node in a plan."""

    FRESH = "fresh"  # its key equals the lock's and its outputs are in place
    STALE = "stale"  # the build must act on it (see Action), for the reasons listed
    BLOCKED = "blocked"  # this host lacks what its step needs: listed with why, never started
    FAILED = "failed"  # it failed under the key it would have now: failed again at once, unrun


class Action(_Word):
    """What a build will do about a node of a plan: the executor's instruction, decided by the plan."""

    NONE = "none"  # fresh: nothing to do
    RUN = "run"  # run its step
    CACHED = "cached"  # the local action cache holds its key: restored without running
    REMOTE = "remote"  # the remote cache holds its key: pulled without running
    RESTORE = "restore"  # fresh, but its deliverable under artifacts/ is missing or modified: copied back
    FAIL = "fail"  # fails at once, unrun: this host cannot run its step, or it failed under this key already
    SKIP = "skip"  # not started: it is downstream of a node this host cannot build, or only such nodes need it


class Analysis(_Word):
    """Which op analysis (planning.coverage: the models' ATen ops by torch.export, in a subprocess) a plan may
    run before it is final."""

    NONE = "none"  # read-only `plan`: what the cache knows, nothing run
    STALE = "stale"  # `build`, `build --dry-run`: the models of targets with work, where it can change the plan
    ALL = "all"  # `plan --ops`: every target's model


class Outcome(_Word):
    """What a build did to a node."""

    FRESH = "fresh"
    BUILT = "built"
    CACHED = "cached"  # from the local or the remote cache (the result's note says which)
    RESTORED = "restored"
    CUTOFF = "cutoff"  # its upstream was rebuilt byte-identical: nothing to do (early cutoff)
    FAILED = "failed"
    SKIPPED = "skipped"  # not started: something it needs failed or cannot be built here


class Verdict(_Word):
    """What a target's check found (its caveats say what it could not do, or did on a lesser path)."""

    PASSED = "passed"
    WARNED = "missed (warn)"  # missed its acceptance, with on_fail: warn: delivered, flagged
    FAILED = "failed"
    NOT_RUN = "not run"  # the numeric check could not run on this host
    STRUCTURE_ONLY = "structure ok, numeric not run"  # the structural half passed; the numeric half could not run
    UNVERIFIED = "unverified"  # no check result is recorded
    NOT_DELIVERED = "not delivered"  # the target has no verified artifact


class CaveatKind(_Word):
    NOT_RUN = "not run"  # a part of the check (serving, docker build, lint) could not run on this host
    DEGRADED = "degraded"  # made or checked on a lesser path than asked
    STAND_IN = "stand-in"  # the numbers come from a reference implementation, not the device's runtime
    FALLBACK = "fallback"  # the target's first route failed and a later one made the artifact


@dataclass(frozen=True)
class Caveat:
    """One thing a green result does not cover: `what` in a few words, `why` in full, `source` the
    step or runtime that reported it."""

    kind: CaveatKind
    what: str
    why: str = ""
    source: str = ""

    @property
    def strict(self) -> bool:
        """Whether `--strict` / `require_numeric` fail on it: everything but a route fallback (a
        stand-in's numbers pass only where the target accepts them: `accept_stand_in`)."""
        return self.kind is not CaveatKind.FALLBACK

    @property
    def host(self) -> bool:
        """Whether it is this host's limit, not the artifact's (a part that could not run here, numbers
        from a stand-in): no other route would lift it, so it never sends a target down another."""
        return self.kind in (CaveatKind.NOT_RUN, CaveatKind.STAND_IN)

    def __str__(self) -> str:
        return f"{self.what}: {self.why}" if self.why else self.what

    def as_dict(self) -> dict[str, str]:
        out = {"kind": self.kind.value, "what": self.what}
        if self.why:
            out["why"] = self.why
        if self.source:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Caveat":
        return cls(CaveatKind(raw["kind"]), str(raw["what"]), str(raw.get("why", "")), str(raw.get("source", "")))


def caveats_of(metrics: dict[str, Any] | None) -> list[Caveat]:
    """The caveats a node's metrics carry (a step's, or a check's with its artifact chain's)."""
    return [Caveat.from_dict(c) for c in (metrics or {}).get("caveats") or []]


def unique(caveats: Iterable[Caveat]) -> list[Caveat]:
    """`caveats` without repeats, in order."""
    return list(dict.fromkeys(caveats))


def verdict_of(check: dict[str, Any] | None) -> Verdict:
    """A check's verdict from its metrics (the same words on every host of one kind, so the lock
    commits it; the observed numbers behind it are in the build record)."""
    if not check:
        return Verdict.UNVERIFIED
    if check.get("not_run") and check.get("passed") is not False:
        return Verdict.STRUCTURE_ONLY if check.get("structure") else Verdict.NOT_RUN
    if check.get("passed") is True:
        return Verdict.PASSED
    return Verdict.WARNED if check.get("passed") is False else Verdict.UNVERIFIED


def describe(verdict: Verdict | str, caveats: Iterable[Caveat] = ()) -> str:
    """A target's status in words: the verdict, then each caveat's few words
    ("passed; not optimized; serving check not run")."""
    words = [str(verdict), *dict.fromkeys(c.what for c in caveats)]
    return "; ".join(words)


def check_status(check: dict[str, Any] | None) -> str:
    """A check's verdict and caveats in words (see `describe`)."""
    return describe(verdict_of(check), caveats_of(check))


def fallback_caveat(route: list[str], dropped: list[dict[str, Any]]) -> Caveat | None:
    """The caveat of a target made by a later route than its first: which route made it, and why
    the first one was dropped (None when the first route made it)."""
    if not dropped:
        return None
    first = dropped[0]
    why = (f"made by {' → '.join(route)} after {len(dropped)} route(s) failed; first "
           f"{' → '.join(first['route'])} at {first.get('node', '?')}: {first.get('reason', '')}")
    return Caveat(CaveatKind.FALLBACK, "route fallback", why, "planner")


@dataclass(frozen=True)
class TargetStatus:
    """A target's status: its check's verdict and every caveat (the artifact chain's, the check's, a
    route fallback). `words` is what every output prints."""

    verdict: Verdict
    caveats: tuple[Caveat, ...] = ()

    @property
    def words(self) -> str:
        return describe(self.verdict, self.caveats)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.words, "verdict": self.verdict.value, "caveats": [c.as_dict() for c in self.caveats]}


def target_status(check: dict[str, Any] | None, *, delivered: bool, route: list[str] | None = None,
                  dropped: list[dict[str, Any]] | None = None) -> TargetStatus:
    """The status of a target from its check's lock entry (its `metrics` from the build record where
    present, else the committed `verdict` and `caveats`), whether it is delivered, and its route."""
    entry = check or {}
    if not delivered:
        return TargetStatus(Verdict.NOT_DELIVERED)
    metrics = entry.get("metrics")
    verdict = verdict_of(metrics) if metrics else Verdict(entry["verdict"]) if entry.get("verdict") in \
        Verdict._value2member_map_ else Verdict.UNVERIFIED
    caveats = caveats_of(metrics) if metrics else caveats_of(entry)
    extra = fallback_caveat(route or [], dropped or [])
    return TargetStatus(verdict, tuple(unique([*caveats, *([extra] if extra else [])])))
