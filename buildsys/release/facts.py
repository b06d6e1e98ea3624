"""Per-target facts of one build (format, size, route, steps, toolchain, check and latency), read from a
lock with its build record and the action cache, or from a bundle's manifest: what `diff` compares and
model cards show."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from buildsys.formats.base import delivered
from buildsys.planning.kinds import BenchKind, CheckKind, ReferenceKind
from buildsys.status import Verdict, check_status, target_status

if TYPE_CHECKING:
    from buildsys.release.bundle import BundledArtifact, Manifest
    from buildsys.storage.lock import Lock
    from buildsys.storage.store import Store

NOT_DELIVERED = Verdict.NOT_DELIVERED.value
_UPSTREAM = "upstream "


@dataclass
class TargetFacts:
    """What one build made of one target, and what its check and benchmark observed."""

    target: str
    model: str
    format: str
    precision: str
    verdict: str  # the target's status words (buildsys.status), or NOT_DELIVERED
    size: int | None = None  # bytes of every file of the artifact
    route: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)  # {"node", "step", "step_version", "options", "facts"?}
    toolchain: dict[str, str] = field(default_factory=dict)  # every package in the keys of its nodes
    acceptance: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)  # the check's metrics ({} when unknown)
    bench: dict[str, Any] = field(default_factory=dict)  # latency measured for this very artifact, if any
    signature: dict[str, Any] = field(default_factory=dict)  # {"inputs": [...], "outputs": [...]}
    files: list[list[Any]] = field(default_factory=list)  # [path, digest, size, executable]
    built: dict[str, Any] = field(default_factory=dict)  # where and when the check ran
    platform: str = ""  # the host class the check's key names (linux-x86_64)
    data: str = ""  # what the reference ran on ("validation: val.npz")

    @property
    def headline(self) -> dict[str, float]:
        """The worst output speaks for the target: largest error, lowest agreement, biggest accuracy loss
        (the numbers the build summary shows)."""
        out: dict[str, float] = {}
        drop = -1.0
        for values in (self.check.get("outputs") or {}).values():
            seen = {m: values[m]["observed"] for m in ("accuracy", "top1_agreement", "max_abs", "cosine")
                    if isinstance(values.get(m), dict) and isinstance(values[m].get("observed"), (int, float))}
            if "max_abs" in seen:
                out["max_abs"] = max(out.get("max_abs", seen["max_abs"]), seen["max_abs"])
            if "cosine" in seen:
                out["cosine"] = min(out.get("cosine", seen["cosine"]), seen["cosine"])
            if "top1_agreement" in seen:
                out["agreement"] = min(out.get("agreement", 1.0), seen["top1_agreement"])
            if "accuracy" in seen:
                reference = values.get("reference_accuracy")
                loss = (reference if isinstance(reference, (int, float)) else seen["accuracy"]) - seen["accuracy"]
                if loss >= drop:
                    drop, out["accuracy"] = loss, seen["accuracy"]
                    if isinstance(reference, (int, float)):
                        out["reference_accuracy"] = reference
        share = (self.check.get("quantized_weights") or {}).get("observed")
        if isinstance(share, (int, float)):  # the share of all weights in the asked precision
            out["weights"] = share
        art = self.bench.get("artifact") or {}
        for name in ("p50_ms", "p95_ms"):
            if isinstance(art.get(name), (int, float)):
                out[name] = art[name]
        return out


def target_name(check_node: str) -> str | None:
    """'verify:android' → 'android'; None for a node that is no check."""
    prefix = CheckKind.node_name("")
    return check_node[len(prefix):] if check_node.startswith(prefix) else None


def from_lock(lock: "Lock", store: "Store | None" = None) -> dict[str, TargetFacts]:
    """Every target the lock has a check for. Metrics come from the build record while its keys match,
    else from the action cache under the check's key (so an older lock from git still shows its numbers
    wherever this machine, or the remote it pulled from, built it)."""
    out: dict[str, TargetFacts] = {}
    for name, entry in sorted(lock.nodes.items()):
        target = target_name(name)
        if target is None or "components" not in entry:
            continue
        recorded: Any = lock.targets.get(target) or {}
        upstream = [k[len(_UPSTREAM):] for k in entry["components"].get("inputs", {}) if k.startswith(_UPSTREAM)]
        artifact = recorded.get("node") or (upstream[0] if upstream else "")
        chain = _chain(lock, artifact)
        model = artifact.split("/", 1)[0]
        metrics = entry.get("metrics") or _cached_metrics(store, entry.get("key"))
        fmt = artifact.split("/", 1)[-1].split("~", 1)[0]
        files = recorded.get("files") or delivered(lock.entry(artifact).get("files", []))
        toolchain: dict[str, str] = {}
        for node in [*chain, name, ReferenceKind.node_name(model)]:
            toolchain.update(lock.entry(node).get("components", {}).get("toolchain", {}))
        comp = entry["components"]
        out[target] = TargetFacts(
            target=target, model=model, format=fmt, precision=_precision(fmt),
            verdict=target_status({**entry, "metrics": metrics}, delivered=True).words if recorded else NOT_DELIVERED,
            size=sum(int(f[2]) for f in files) if files else None, route=list(recorded.get("route", [])),
            steps=[_step(n, lock.nodes[n]) for n in chain], toolchain=dict(sorted(toolchain.items())),
            acceptance=comp.get("acceptance", {}), check=metrics, bench=_bench(lock, target, artifact),
            signature=comp.get("signature", {}), files=[list(f) for f in files], built=entry.get("built", {}),
            platform=str(comp.get("platform", "")),
            data=str(lock.entry(ReferenceKind.node_name(model)).get("metrics", {}).get("origin", "")))
    return out


def from_manifest(manifest: "Manifest") -> dict[str, TargetFacts]:
    """The facts a bundle's manifest carries (its toolchain is the artifact chain's)."""
    return {a.target: _from_artifact(a) for a in manifest.artifacts}


def from_record(record: dict[str, Any]) -> dict[str, TargetFacts]:
    """Only what a build record holds without its lock: each check's metrics and the latencies."""
    out: dict[str, TargetFacts] = {}
    for name, entry in sorted((record.get("nodes") or {}).items()):
        target = target_name(name)
        if target is None:
            continue
        metrics = entry.get("metrics") or {}
        fmt = str(metrics.get("format", ""))
        bench = (record.get("nodes") or {}).get(BenchKind.node_name(target), {}).get("metrics", {})
        out[target] = TargetFacts(target=target, model="", format=fmt, precision=_precision(fmt),
                                  verdict=check_status(metrics), check=metrics, bench=bench, built=entry.get("built", {}))
    return out


def _from_artifact(a: "BundledArtifact") -> TargetFacts:
    return TargetFacts(
        target=a.target, model=a.model, format=a.format, precision=a.precision, verdict=check_status(a.check),
        size=sum(f.size for f in a.files), route=list(a.route),
        steps=[{"node": c.node, "step": c.step, "step_version": c.step_version, "options": c.options} for c in a.chain],
        toolchain=dict(sorted(a.toolchain.items())), acceptance=a.acceptance, check=a.check, bench=a.bench,
        signature=a.signature, files=[[f.path.split("/", 1)[-1], f.sha256, f.size, False] for f in a.files])


def _chain(lock: "Lock", artifact: str) -> list[str]:
    """The artifact nodes from the source to `artifact`, in build order."""
    chain: list[str] = []
    name = artifact
    while name and name in lock.nodes and name not in chain:
        chain.append(name)
        inputs = lock.nodes[name].get("components", {}).get("inputs", {})
        name = next((k[len(_UPSTREAM):] for k in inputs if k.startswith(_UPSTREAM)), "")
    return chain[::-1]


def _step(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """A step of the chain as the card lists it; `facts` are its committed metrics (a quantizer's scheme)."""
    comp = entry["components"]
    step = {"node": name, "step": comp.get("step", ""), "step_version": comp.get("step_version"),
            "options": comp.get("options", {})}
    return {**step, "facts": entry["facts"]} if entry.get("facts") else step


def _bench(lock: "Lock", target: str, artifact: str) -> dict[str, Any]:
    """The benchmark of this very artifact: a bench entry whose upstream digest is the artifact's tree."""
    entry = lock.entry(BenchKind.node_name(target))
    tree = lock.entry(artifact).get("tree")
    measured = entry.get("components", {}).get("inputs", {}).get(_UPSTREAM + artifact)
    return dict(entry.get("metrics") or {}) if tree and measured == tree else {}


def _cached_metrics(store: "Store | None", key: str | None) -> dict[str, Any]:
    if store is None or not key:
        return {}
    cached = store.get_action(key)
    return {k: v for k, v in (cached or {}).get("metrics", {}).items() if k != "seconds"}


def _precision(fmt: str) -> str:
    from buildsys.formats import formats

    known = formats().get(fmt)
    return known.precision if known is not None else "fp32"
