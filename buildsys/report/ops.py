"""Op coverage in words, for `plan` and `plan --json`: each model's ATen ops (or why they are not analysed yet)
and, per target, each step on its candidate routes with the ops its converter's table lacks and the rewrites
that remove them (docs/rewrites.md, "Op coverage"; the data is planning.coverage's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buildsys.planning.plan import Plan


def describe(plan: "Plan") -> dict[str, Any]:
    """What `plan` shows of coverage: each model's ops (or why not analysed) and, per target, each step on its
    candidate routes: the ops its table lacks and the rewrites that remove them, or why it is unknown."""
    from buildsys.formats.registry import op_tables
    from buildsys.planning.coverage import Coverage
    from buildsys.planning.ordering import step_accepts
    from buildsys.rewrites import removing

    cov = plan.coverage or Coverage()
    models: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for target in plan.targets:
        model = plan.config.project.targets[target].model
        if model not in cov.ops and model not in cov.not_analysed:
            continue  # not a PyTorch factory: nothing to export
        models[model] = {"ops": cov.ops[model]["exported"], "core": cov.ops[model]["core"]} if model in cov.ops \
            else {"not_analysed": cov.not_analysed[model]}
        if model in cov.ops and cov.ops[model].get("traced") is not None:  # as the TorchScript ONNX exporter sees it
            models[model]["traced"] = cov.ops[model]["traced"]
        if cov.ops.get(model, {}).get("qat"):  # recognised from the graph by the probe (buildsys.formats.torch.qat)
            models[model]["qat"] = cov.ops[model]["qat"]
        found: dict[str, Any] = {}
        for route in plan.dag.candidates.get(target, []):
            for i, step in enumerate(route.steps(), start=1):
                accepts = step_accepts(step, route.stops[i].format, plan.config.project.targets[target].options)
                if step.name in found:
                    continue
                if not accepts:
                    found[step.name] = {"unknown": "no op registry is read for it"}
                    continue
                table = accepts[0]
                lacking = cov.lacks(model, accepts)
                if lacking is None:
                    why = cov.unknown.get(table) or ("not analysed yet" if model not in cov.ops or table not in
                                                     cov.tables else f"the model gave no '{accepts[1]}' inventory")
                    found[step.name] = {"table": table, "unknown": why}
                else:
                    found[step.name] = {"table": table, "registry": op_tables()[table].description, "lacks": lacking,
                                        "rewrites": {op: [r.name for r in removing(op)][:1] for op in lacking},
                                        "sites": {op: cov.ops[model].get("sites", {}).get(op, []) for op in lacking}}
                portable = cov.lacks(model, step.delegates_ops) if step.delegates_ops else None
                if step.delegates_ops and portable is not None:  # information: which ops the backend may take
                    ops = cov.ops[model][step.delegates_ops[1]]
                    found[step.name]["delegates"] = {"table": step.delegates_ops[0], "portable": portable,
                                                     "delegated": [op for op in ops if op not in portable]}
        route_taken = plan.dag.routes.get(target)
        targets[target] = {"model": model, "steps": found, "route": route_taken.words() if route_taken else None}
    return {"models": models, "targets": targets}


def lines(plan: "Plan") -> list[str]:
    """`describe` in words, a line per model and per target (for `plan`)."""
    from buildsys.localise.sites import called_at

    data = describe(plan)
    out: list[str] = []
    for model, entry in data["models"].items():
        if entry.get("qat"):
            reach = "its ONNX and OpenVINO int8 targets" if "eager" in entry["qat"] else "its int8 targets"
            out.append(f"{model}: {entry['qat']}: {reach} are lowered with the learned quantization "
                       "parameters (no calibration) and checked against its fake-quant outputs")
        if "ops" in entry:
            out.append(f"{model}: {len(entry['ops'])} ATen ops (torch.export): {', '.join(entry['ops'])}")
        else:
            out.append(f"{model}: ops {entry['not_analysed']}")
    clear: list[str] = []
    unknown: set[str] = set()
    for target, entry in data["targets"].items():
        if "ops" not in data["models"][entry["model"]]:
            continue  # the model line says why
        gaps = []
        told: set[str] = set()  # ops whose call site this line already gave
        for step, s in entry["steps"].items():
            if s.get("lacks"):
                ops = [f"{op} (rewrite {s['rewrites'][op][0]})" if s["rewrites"][op] else f"{op} (no rewrite yet: "
                       f"blocks this route{called_at(s.get('sites', {}).get(op)) if op not in told else ''})"
                       for op in s["lacks"]]
                told |= set(s["lacks"])
                gaps.append(f"{step} lacks {', '.join(ops)}")
            elif "lacks" not in s:
                unknown.add(step if s["unknown"] == "no op registry is read for it" else f"{step} ({s['unknown']})")
        if gaps:  # only what changes the order is worth a line of its own
            out.append(f"{target}: {'; '.join(gaps)}; first route {' → '.join(entry['route'] or [])}")
        else:
            clear.append(target)
        for step, s in entry["steps"].items():
            if s.get("delegates", {}).get("portable"):
                out.append(f"{target}: {step}: XNNPACK has no partitioner config for "
                           f"{', '.join(s['delegates']['portable'])} (the runtime's portable kernels run them)")
    if clear:
        who = ", ".join(clear) if len(clear) <= 4 else f"{'every' if len(clear) == len(data['targets']) else 'the other'} " \
            f"{len(clear)} target(s)"
        out.append(f"{who}: no converter whose op table is read lacks an op")
    if unknown:
        out.append(f"no op table is read for {', '.join(sorted(unknown))} (their refusals still find rewrites)")
    return out
