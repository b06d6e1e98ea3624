"""Model cards: one per target, Markdown and JSON, generated from the lock, its build record and
deploy.yaml (never written by hand): inputs and outputs, precision and recipe, tolerances next to the
measured metrics, the intended runtime and platform, latency and the toolchain. A text-generation
artifact's card adds what generating with it needs and what its check measured (`generation`): the
context length and tokens per call (its `llm.json`), the tokenizer it ships, the quantization, and the
greedy-token agreement, first divergence and NLL delta against PyTorch.

A card is written beside a delivered artifact in artifacts/<target>/ after each build and by
`modelbuild card`; it is not one of the files the target's check verified, so `plan`, which compares
only those, never sees it as a modified deliverable. Bundles carry the same cards, made at pack time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys import __version__
from buildsys.release.facts import TargetFacts

if TYPE_CHECKING:
    from buildsys.config.load import LoadedConfig

CARD_MD, CARD_JSON = "MODEL_CARD.md", "model_card.json"
#: A text-generation artifact's side file (formats/llm/contract.py's SPEC_FILE; not imported: the
#: release code stays out of the format packages).
LLM_SPEC = "llm.json"
CARD_SCHEMA = 1


def card(facts: TargetFacts, cfg: "LoadedConfig | None" = None, layout: dict[str, Any] | None = None,
         llm: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of one target as data (what model_card.json holds); `cfg` adds descriptions and presets,
    `llm` is a text-generation artifact's llm.json (its cache geometry and tokens per call)."""
    from buildsys.formats import formats

    target_cfg = cfg.project.targets.get(facts.target) if cfg is not None else None
    model_cfg = cfg.project.models.get(facts.model) if cfg is not None else None
    fmt = formats().get(facts.format)
    inputs = [dict(i) for i in facts.signature.get("inputs", [])]
    moved = {e.get("name"): e for e in (layout or {}).get("inputs", []) if isinstance(e, dict)}
    for spec in inputs:
        entry = moved.get(spec["name"])
        if entry and entry.get("layout") and entry.get("layout") != entry.get("source_layout"):  # onnx2tf: NHWC
            spec["artifact_layout"], spec["artifact_shape"] = entry["layout"], entry.get("shape")
    source = model_cfg.source if model_cfg is not None else None
    head = facts.headline
    generation = _generation(facts, model_cfg, llm)
    weights = quantized_weights(facts)
    return {
        "schema": CARD_SCHEMA, "target": facts.target,
        "description": target_cfg.description if target_cfg is not None else "",
        "model": {"name": facts.model, "description": model_cfg.description if model_cfg is not None else "",
                  "source": {k: v for k, v in (source.model_dump(include={"factory", "transformers", "weights", "torchscript",
                                                                            "exported", "onnx"}) if source else {}).items() if v}},
        "artifact": {"format": facts.format, "description": fmt.description if fmt is not None else "",
                     "precision": facts.precision, "size_bytes": facts.size,
                     "files": [{"path": f[0], "size": f[2]} for f in facts.files],
                     "route": facts.route, "steps": facts.steps,
                     **({"quantized_weights": weights} if weights else {})},
        "inputs": inputs, "outputs": facts.signature.get("outputs", []),
        "intended_use": {"runtime": fmt.runtime if fmt is not None else None,
                         "serving_runtime": fmt.serving_runtime if fmt is not None else None,
                         "platform": target_cfg.platform if target_cfg is not None else None,
                         "recipe": target_cfg.recipe if target_cfg is not None else None},
        "acceptance": facts.acceptance,
        "verification": {"verdict": facts.verdict, "samples": facts.check.get("samples"), "data": facts.data,
                         "runtime": facts.check.get("runtime"), "host_class": facts.platform,
                         "not_run": facts.check.get("not_run"), "summary": head,
                         "outputs": _observed(facts.check),
                         **({"quantized_weights": facts.check["quantized_weights"]}
                            if facts.check.get("quantized_weights") else {})},
        "latency": _latency(facts.bench),
        **({"generation": generation} if generation is not None else {}),
        "toolchain": facts.toolchain, "generated_by": f"modelbuild {__version__}",
    }


def card_bytes(facts: TargetFacts, cfg: "LoadedConfig | None" = None, layout: dict[str, Any] | None = None,
               llm: dict[str, Any] | None = None) -> tuple[bytes, bytes]:
    """(MODEL_CARD.md, model_card.json) bytes: the same facts in words and in data."""
    data = card(facts, cfg, layout, llm)
    return markdown(data).encode(), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def refresh(planner: Any, targets: list[str] | None = None) -> list[Path]:
    """(Re)write the cards of the delivered targets under artifacts/<target>/ from the planner's lock;
    a card whose bytes are unchanged is left alone. Returns the cards written."""
    from buildsys.release.facts import from_lock
    from buildsys.storage.store import atomic_write

    facts = from_lock(planner.lock, planner.store)
    written = []
    for target in targets if targets is not None else sorted(planner.lock.targets):
        folder = planner.artifacts / target
        recorded = planner.lock.targets.get(target)
        if target not in facts or not recorded or not folder.is_dir():
            continue
        names = {f[0] for f in recorded["files"]}
        if names & {CARD_MD, CARD_JSON}:  # the artifact itself ships files of those names: never overwrite one
            continue
        layout = _layout(folder / "layout.json") if "layout.json" in names else None
        llm = _layout(folder / LLM_SPEC) if LLM_SPEC in names else None
        for name, body in zip((CARD_MD, CARD_JSON), card_bytes(facts[target], planner.config, layout, llm)):
            path = folder / name
            if not path.is_file() or path.read_bytes() != body:
                atomic_write(path, body.decode())
                written.append(path)
    return written


def markdown(data: dict[str, Any]) -> str:
    """The card for people: a summary table, signature, recipe, acceptance against measurements, toolchain."""
    from buildsys.formats.quantized_weights import describe as describe_share

    art, use, ver = data["artifact"], data["intended_use"], data["verification"]
    model = data["model"]
    source = ", ".join(f"{k} `{v}`" for k, v in model["source"].items())
    lines = [f"# Model card: {data['target']}", ""]
    if data["description"]:
        lines += [data["description"], ""]
    runtime = use["runtime"] or "none"
    if use["serving_runtime"]:
        runtime += f" (served by {use['serving_runtime']})"
    preset = " · ".join(p for p in (f"platform {use['platform']}" if use["platform"] else "",
                                     f"recipe {use['recipe']}" if use["recipe"] else "") if p)
    checked = ver["verdict"]
    if ver["samples"]:
        checked += f" on {ver['samples']} samples" + (f" ({ver['data']})" if ver["data"] else "")
    if ver["host_class"]:
        checked += f", {ver['host_class']}"
    rows = [("Model", f"{model['name']}" + (f" ({source})" if source else "") + (f": {model['description']}" if model["description"] else "")),
            ("Format", f"{art['format']}" + (f": {art['description']}" if art["description"] else "")),
            ("Precision", art["precision"]), ("Runtime", runtime), ("Preset", preset or "—"),
            ("Size", _size(art["size_bytes"]) + f" in {len(art['files'])} file(s)"),
            *([("Quantized weights", describe_share(art["quantized_weights"]) or "—")] if art.get("quantized_weights") else []),
            ("Route", " → ".join(art["route"]) or "—"), ("Check", checked)]
    lines += ["| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows), ""]
    if ver["not_run"]:
        lines += [f"> Numeric check not run: {ver['not_run']}", ""]
    if data.get("generation"):
        lines += _generation_markdown(data["generation"])
    lines += ["## Inputs and outputs", "", "| | name | shape | dtype | layout | kind |", "|---|---|---|---|---|---|"]
    for spec in data["inputs"]:
        layout = spec.get("layout") or "—"
        if spec.get("artifact_layout"):
            layout += f" (artifact: {spec['artifact_layout']} {_shape(spec.get('artifact_shape') or [])})"
        lines.append(f"| input | {spec['name']} | {_shape(spec['shape'])} | {spec.get('dtype', 'float32')} | {layout} | |")
    lines += [f"| output | {spec['name']} | | | | {spec.get('kind', 'values')} |" for spec in data["outputs"]]
    lines += ["", "## Recipe", ""]
    for step in art["steps"]:
        options = ", ".join(f"{k}={_plain(v)}" for k, v in sorted(step["options"].items()) if v is not None)
        facts = ", ".join(f"{k} {_plain(v)}" for k, v in sorted((step.get("facts") or {}).items())
                          if k != "quantized_weights")  # in words in the summary table
        lines.append(f"- `{step['node']}`: {step['step']} v{step['step_version']}" + (f" ({options})" if options else "")
                     + (f"; made with {facts}" if facts else ""))
    lines += ["", "## Acceptance and measured metrics", ""]
    measured = [(o, m, v) for o, metrics in ver["outputs"].items() for m, v in metrics.items()]
    if measured:
        lines += ["| output | metric | observed | allowed | |", "|---|---|---|---|---|"]
        lines += [f"| {o} | {m} | {_plain(v['observed'])} | {v['allowed']} | {'ok' if v['ok'] else 'MISS'} |"
                  for o, m, v in measured]
    else:
        lines.append("No measurement recorded on this machine (build it here, or see the bundle's card).")
    share = ver.get("quantized_weights")
    if share:
        floor = f"allowed >= {share['allowed']:.0%}" if isinstance(share.get("allowed"), (int, float)) else "no floor"
        size = (f", {share['size_ratio']:.2f}× the {share.get('asked')} size"
                if isinstance(share.get("size_ratio"), (int, float)) else "")
        size += f", {share['activations']} activations" if share.get("activations") else ""
        lines.append(f"\nWeights in {share.get('asked')}: {share['observed']:.1%} of all weights ({floor}{size}): "
                     f"{'ok' if share.get('ok', True) else 'MISS'}.")
    if data["latency"]:
        lat = data["latency"]
        lines += ["", "## Latency", "", f"{lat['runtime']}, batch {lat['batch']}: p50 {_plain(lat['p50_ms'])} ms, "
                  f"p95 {_plain(lat['p95_ms'])} ms" + (f", PyTorch eager p50 {_plain(lat['eager_p50_ms'])} ms"
                                                       if lat.get("eager_p50_ms") else "")
                  + (f" on {lat['host']}" if lat.get("host") else "") + "."]
    lines += ["", "## Toolchain", "", "| package | version |", "|---|---|",
              *(f"| {k} | {v} |" for k, v in data["toolchain"].items()), "",
              f"Generated by {data['generated_by']} from deploy.lock and its build record; do not edit.", ""]
    return "\n".join(lines)


def _generation(facts: TargetFacts, model_cfg: Any, llm: dict[str, Any] | None) -> dict[str, Any] | None:
    """A text-generation artifact's facts for generating with it, and what its check measured; None for
    other artifacts. The context length comes from the artifact's llm.json, else deploy.yaml."""
    from buildsys.errors import PlanError
    from buildsys.formats import get_step

    gen = getattr(model_cfg, "generation", None)
    if llm is None and gen is None and not any(o.get("kind") == "tokens" for o in facts.signature.get("outputs", [])):
        return None
    spec = llm or {}
    last = facts.steps[-1] if facts.steps else {}
    step_facts = last.get("facts") or {}
    try:
        described = get_step(last["step"]).describe_facts(step_facts) if step_facts else []
    except PlanError:  # a step this modelbuild no longer has: its facts as they are
        described = [", ".join(f"{k} {v}" for k, v in sorted(step_facts.items()))]
    quantization = "; ".join(described) or ("none (float32)" if facts.precision == "fp32" else facts.precision)
    outputs = facts.check.get("outputs") or {}
    tokens, nll, logits = (outputs.get(k) or {} for k in ("tokens", "nll", "prefill_logits"))
    agreement = tokens.get("token_agreement") or {}
    timing = next((f for f in facts.check.get("findings") or [] if isinstance(f, dict) and "decode_tokens_per_s" in f), {})
    tokenizer = sorted(f[0] for f in facts.files if str(f[0]).startswith("tokenizer/"))
    context = spec.get("max_cache_len", gen.max_cache_len if gen is not None else None)
    cache = ([spec["layers"], 1, spec["kv_heads"], spec["max_cache_len"], spec["head_dim"]]
             if all(k in spec for k in ("layers", "kv_heads", "max_cache_len", "head_dim")) else None)
    return {
        "context_length": context, "tokens_per_call": spec.get("max_chunk"), "kv_cache_shape": cache,
        "vocab": spec.get("vocab"), "tokenizer": tokenizer, "quantization": quantization,
        "quantized_weights": (quantized_weights(facts) or {}).get("share"),
        "new_tokens": gen.new_tokens if gen is not None else None, "measured_on": facts.data or None,
        "token_agreement": agreement.get("observed"),
        "token_agreement_allowed": agreement.get("allowed"), "token_agreement_note": agreement.get("note"),
        "first_divergence": tokens.get("first_divergence"), "diverged_prompts": tokens.get("diverged_prompts"),
        "nll_delta": (nll.get("max_abs") or {}).get("observed"),
        "prefill_logits_max_abs": (logits.get("max_abs") or {}).get("observed"),
        "prefill_top1_agreement": (logits.get("top1_agreement") or {}).get("observed"),
        "ttft_ms": timing.get("ttft_ms"), "decode_tokens_per_s": timing.get("decode_tokens_per_s"),
    }


def quantized_weights(facts: TargetFacts) -> dict[str, Any] | None:
    """The `quantized_weights` fact of the step nearest the artifact that measured one (the quantizing step: a
    Triton layout's onnx-int8 model), or None for a float artifact."""
    found = [(s.get("facts") or {}).get("quantized_weights") for s in facts.steps]
    return next((f for f in reversed(found) if isinstance(f, dict)), None)


def _generation_markdown(gen: dict[str, Any]) -> list[str]:
    def known(value: Any) -> str:
        return "—" if value is None else _plain(value)

    per_call = gen["tokens_per_call"]
    calls = ("—" if per_call is None else f"{per_call}" + (" (the prompt is prefilled token by token)" if per_call == 1
                                                            else " (the prompt is prefilled in chunks of up to this)"))
    agreement = known(gen["token_agreement"])
    if gen["token_agreement_allowed"] is not None:
        agreement += f" (allowed >= {_plain(gen['token_agreement_allowed'])})"
    if gen["token_agreement_note"]:
        agreement += f": {gen['token_agreement_note']}"
    divergence = ("none" if gen["token_agreement"] is not None and gen["first_divergence"] is None
                  else known(gen["first_divergence"]) if gen["first_divergence"] is None
                  else f"token {gen['first_divergence']}" + (f" ({gen['diverged_prompts']} prompt(s) diverge)"
                                                              if gen["diverged_prompts"] else ""))
    speed = ("—" if gen["decode_tokens_per_s"] is None else
             f"time to first token {known(gen['ttft_ms'])} ms, decode {known(gen['decode_tokens_per_s'])} tokens/s "
             "(median of the check's run; informative, never judged)")
    cache = f" (static KV cache {_shape(gen['kv_cache_shape'])})" if gen["kv_cache_shape"] else ""
    rows = [("Context length", f"{known(gen['context_length'])} tokens, prompt and generated together{cache}"),
            ("Tokens per call", calls), ("Quantization", gen["quantization"]),
            ("Tokenizer", ", ".join(gen["tokenizer"]) or "—"),
            ("Measured on", f"{known(gen['measured_on'])}, {known(gen['new_tokens'])} greedy tokens per prompt"),
            ("Greedy token agreement", agreement), ("First divergence", divergence),
            ("NLL delta (held text)", known(gen["nll_delta"])),
            ("Prefill logits max abs error", known(gen["prefill_logits_max_abs"])), ("Speed", speed)]
    return ["## Generation", "", "| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows), ""]


def _observed(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for output, values in sorted((metrics.get("outputs") or {}).items()):
        for name, item in sorted(values.items()):
            if isinstance(item, dict) and "observed" in item:
                allowed = item.get("allowed")
                out.setdefault(output, {})[name] = {
                    "observed": item["observed"], "ok": bool(item.get("ok", True)),
                    "allowed": "—" if allowed is None else f"{item.get('op', '')} {_plain(allowed)}".strip()}
    return out


def _latency(bench: dict[str, Any]) -> dict[str, Any] | None:
    art = bench.get("artifact") or {}
    if not art.get("p50_ms"):
        return None
    host = bench.get("host") or {}
    where = ", ".join(str(host[k]) for k in ("cpu", "machine", "system") if host.get(k))
    return {"runtime": bench.get("runtime"), "batch": bench.get("batch_size"), "p50_ms": art.get("p50_ms"),
            "p95_ms": art.get("p95_ms"), "throughput": art.get("throughput"),
            "eager_p50_ms": (bench.get("eager") or {}).get("p50_ms"), "host": where}


def _layout(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _shape(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _size(size: int | None) -> str:
    if size is None:
        return "—"
    return f"{size} B" if size < 1000 else f"{size / 1e3:.1f} KB" if size < 1e6 else f"{size / 1e6:.1f} MB"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
