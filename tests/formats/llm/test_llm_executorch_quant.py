"""ExecuTorch LLM quantization schemes (weight-only int8, 8da4w) judged by generation, and the bundle of a
text-generation target: its tokenizer and llm.json, a model card stating context length, quantization
and measured agreement, and `bundle verify` re-running the generation checks (docs/llm.md)."""

from __future__ import annotations

import importlib.util
import json
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from buildsys.errors import ConfigError

needs_llm = pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("transformers", "tokenizers",
                                                                              "executorch", "torchao")),
                               reason="needs the llm and executorch extras")

TARGETS = """\
  pte: {model: llama, format: llm-executorch}
  pte-wo:
    model: llama
    format: llm-executorch
    precision: int8
    options: {llm-executorch-int8: {scheme: weight-only}}
  pte-4w:                                  # the int4 member: 8da4w, as `scheme: 8da4w` of the int8 one
    model: llama
    format: llm-executorch
    precision: int4
    options: {llm-executorch-int4: {group_size: 32}}
    acceptance: {min_token_agreement: 0.9, outputs: {nll: {max_abs: 0.05}}}
bundles:
  android:
    targets: [pte, pte-4w]
"""


def test_group_size_without_8da4w_is_refused_at_plan_time(tmp_path: Path) -> None:
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project

    (tmp_path / "lm.py").write_text("def load():\n    pass\n")
    (tmp_path / "deploy.yaml").write_text(textwrap.dedent("""\
        models:
          lm:
            task: text-generation
            source: {factory: "lm:load"}
            generation: {prompts: p.txt, tokenizer: tok.json}
        targets:
          android:
            model: lm
            format: llm-executorch
            precision: int8
            options: {llm-executorch-int8: {scheme: dynamic, group_size: 64}}
    """))
    (tmp_path / "p.txt").write_text("the cat\n")
    (tmp_path / "tok.json").write_text("{}")
    with pytest.raises(ConfigError, match="group_size applies to scheme 8da4w only"):
        make_plan(open_project(str(tmp_path / "deploy.yaml")).planner, PlanRequest())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    import modelbuild
    from tests.helpers.llm import make_project

    root = tmp_path_factory.mktemp("llmq")
    losses = make_project(root, archs=("llama",), steps=100)
    assert losses["llama"] < 1.5  # trained: greedy decoding follows the text, not near-ties
    text = (root / "deploy.yaml").read_text().replace("targets: {}\n", "targets:\n" + TARGETS)
    (root / "deploy.yaml").write_text(text)
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    return root, report


def _metrics(built: tuple[Path, Any], node: str) -> dict[str, Any]:
    return dict(built[1].nodes[node].metrics)


def _artifact_node(built: tuple[Path, Any], target: str) -> str:
    lock = json.loads((built[0] / "deploy.lock").read_text())
    return str(lock["targets"][target]["node"])


@pytest.mark.slow
@needs_llm
@pytest.mark.parametrize("target, scheme", [("pte-wo", "weight-only"), ("pte-4w", "8da4w")])
def test_quantized_schemes_pass_generation_checks(built: tuple[Path, Any], target: str, scheme: str) -> None:
    check = _metrics(built, f"verify:{target}")
    assert check["passed"] is True, check.get("failures")
    out = check["outputs"]
    # Measured on the trained tiny Llama: every greedy token agrees in both; the logits move by int8 noise
    # (weight-only ~2e-2) or int4 noise (8da4w ~0.3 on logits ranging over ~20), the NLL by 1e-3 / 2e-2.
    assert out["tokens"]["token_agreement"]["observed"] >= 0.9
    assert 0 < out["nll"]["max_abs"]["observed"] < 0.05
    assert 0 < out["prefill_logits"]["max_abs"]["observed"] < 1.0
    step = _metrics(built, _artifact_node(built, target))
    weights = step["quantized_weights"]
    assert step["scheme"] == scheme and weights["of_quantizable"] == 1.0  # every linear
    assert weights["why_wider"].keys() == {"embedding"} and weights["share"] < 1.0  # the float table counts too
    # 8da4w's linears run inside XNNPACK; weight-only's widened weights go through the portable mm
    assert step["xnnpack_delegates"] > 0 and ("aten::mm" in step["portable_operators"]) == (scheme == "weight-only")


@pytest.mark.slow
@needs_llm
def test_sizes_shrink_in_the_expected_order(built: tuple[Path, Any]) -> None:
    size = {t: _metrics(built, _artifact_node(built, t))["bytes"] for t in ("pte", "pte-wo", "pte-4w")}
    # fp32 > int8 weights > int4 weights; the embedding table, norms and program overhead stay float32
    # (measured: 390 KB, 173 KB, 124 KB)
    assert size["pte"] > 2 * size["pte-wo"] and size["pte-wo"] > 1.2 * size["pte-4w"]
    facts = json.loads((built[0] / "deploy.lock").read_text())["nodes"][_artifact_node(built, "pte-4w")]["facts"]
    assert facts["scheme"] == "8da4w" and facts["group_size"] == 32  # committed: the card and explain read them


@pytest.mark.slow
@needs_llm
def test_bundle_ships_tokenizer_and_spec_and_its_card_states_the_llm_facts(built: tuple[Path, Any]) -> None:
    from tests.conftest import TinyProject

    root = built[0]
    project = TinyProject(root, root / "calls")
    out = project.run("bundle", "android").stdout
    assert "2 target(s)" in out
    archive = root / "artifacts/bundles/android-0.1.0.tar.gz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        for target in ("pte", "pte-4w"):
            assert {f"{target}/model.pte", f"{target}/llm.json", f"{target}/tokenizer/tokenizer.json",
                    f"{target}/MODEL_CARD.md", f"{target}/model_card.json"} <= names
        member = tar.extractfile("pte-4w/model_card.json")
        assert member is not None
        card = json.loads(member.read())
        spec_member = tar.extractfile("pte-4w/llm.json")
        assert spec_member is not None
        spec = json.loads(spec_member.read())
        md_member = tar.extractfile("pte-4w/MODEL_CARD.md")
        assert md_member is not None
        markdown = md_member.read().decode()
    assert spec["max_cache_len"] == 64 and spec["max_chunk"] == 1
    gen = card["generation"]
    check = _metrics(built, "verify:pte-4w")["outputs"]
    assert gen["context_length"] == 64 and gen["tokens_per_call"] == 1 and gen["tokenizer"] == ["tokenizer/tokenizer.json"]
    assert gen["quantization"].startswith("8da4w (int4 weights of linear layers in groups of 32")
    assert gen["quantized_weights"] > 0.9 and gen["new_tokens"] == 12
    assert gen["token_agreement"] == check["tokens"]["token_agreement"]["observed"] and gen["token_agreement_allowed"] == 0.9
    assert gen["first_divergence"] == check["tokens"]["first_divergence"]
    assert gen["nll_delta"] == check["nll"]["max_abs"]["observed"] and gen["decode_tokens_per_s"] > 0
    assert "| Context length | 64 tokens, prompt and generated together (static KV cache [2, 1, 2, 64, 16]) |" in markdown
    assert "| Quantization | 8da4w (int4 weights" in markdown and "| NLL delta (held text) |" in markdown
    # the card the build wrote beside the artifact says the same as the bundle's
    assert (root / "artifacts/pte-4w/model_card.json").read_text() == json.dumps(card, indent=2, sort_keys=True) + "\n"
    fp32 = json.loads((root / "artifacts/pte/model_card.json").read_text())["generation"]
    assert fp32["quantization"] == "none (float32)" and fp32["token_agreement"] == 1.0 and fp32["first_divergence"] is None
    verified = project.run("bundle", "verify", str(archive))
    assert "passed   pte (llm-executorch" in verified.stdout and "passed   pte-4w (llm-executorch-int4" in verified.stdout
