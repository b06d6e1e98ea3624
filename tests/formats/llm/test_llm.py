"""Decoder LMs (task: text-generation): the schema, token comparisons, and end to end on two tiny trained
architectures (Llama-style with RoPE and GQA, GPT-2-style) exported for ONNX Runtime and ExecuTorch and
judged by generation in those runtimes (docs/llm.md)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.config.load import load
from buildsys.config.schema import Acceptance, Model
from buildsys.errors import ConfigError
from buildsys.comparison import compare
from buildsys.nodes.verify import resolve_acceptance

GEN = {"prompts": "p.txt", "tokenizer": "tok"}


# --- schema -----------------------------------------------------------------------------------------


def test_text_generation_model_gets_the_fixed_signature() -> None:
    model = Model.model_validate({"task": "text-generation", "source": {"factory": "lm:load"}, "generation": GEN})
    assert [i.name for i in model.inputs] == ["prompt_ids", "text_ids"]
    assert [(o.name, o.kind) for o in model.outputs] == [("prefill_logits", "scores"), ("tokens", "tokens"),
                                                         ("nll", "values")]
    again = Model.model_validate(model.model_dump(mode="json"))  # a worker validates the dump again
    assert again == model


@pytest.mark.parametrize("fields, message", [
    ({"inputs": [{"name": "x", "shape": [1]}]}, "fixed signature; remove inputs"),
    ({"generation": None}, "needs a 'generation' section"),
    ({"generation": {**GEN, "max_seq_len": 300}}, "max_seq_len 300 exceeds max_cache_len 256"),
    ({"source": {"torchscript": "m.pt"}}, "source is a transformers directory or a factory"),
])
def test_text_generation_mistakes_are_refused(fields: dict[str, Any], message: str) -> None:
    data = {"task": "text-generation", "source": {"factory": "lm:load"}, "generation": GEN, **fields}
    with pytest.raises(ValueError, match=message):
        Model.model_validate({k: v for k, v in data.items() if v is not None})


def test_generation_on_a_tensor_model_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "deploy.yaml").write_text(textwrap.dedent("""\
        models:
          m:
            source: {factory: "lm:load"}
            inputs: [{name: x, shape: [1, 4]}]
            outputs: [{name: y}]
            generation: {prompts: p.txt, tokenizer: tok}
        targets: {}
    """))
    with pytest.raises(ConfigError, match=r"deploy\.yaml:2: models\.m: .*'generation' applies only to task: text-generation"):
        load(tmp_path / "deploy.yaml")


def _plan_components(root: Path, generation: str) -> dict[str, dict[str, Any]]:
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project

    (root / "deploy.yaml").write_text(textwrap.dedent(f"""\
        models:
          lm:
            task: text-generation
            source: {{factory: "lm:load", code: ["weights/*"]}}
            generation: {{prompts: p.txt, tokenizer: tok.json, {generation}}}
        targets:
          server: {{model: lm, format: llm-onnx}}
    """))
    plan = make_plan(open_project(str(root / "deploy.yaml")).planner, PlanRequest())
    return {name: dict(p.components or {}) for name, p in plan.nodes.items()}


def test_keys_follow_what_each_node_reads(tmp_path: Path) -> None:
    """Prompts and new_tokens re-run the reference (and so the check), never the export; the cache
    sizes and the tokenizer (shipped with the artifact) re-run the export."""
    (tmp_path / "lm.py").write_text("def load():\n    raise RuntimeError('never called by plan')\n")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"w")
    (tmp_path / "p.txt").write_text("the cat\n")
    (tmp_path / "tok.json").write_text("{}")
    base = _plan_components(tmp_path, "new_tokens: 8")
    assert set(base) >= {"lm/llm-onnx", "lm/reference", "verify:server"}
    assert "data tokenizer" in base["lm/llm-onnx"]["inputs"] and "data generation" in base["lm/reference"]["inputs"]
    more = _plan_components(tmp_path, "new_tokens: 9")
    assert more["lm/llm-onnx"] == base["lm/llm-onnx"] and more["lm/reference"] != base["lm/reference"]
    (tmp_path / "p.txt").write_text("the dog\n")
    prompts = _plan_components(tmp_path, "new_tokens: 8")
    assert prompts["lm/llm-onnx"] == base["lm/llm-onnx"] and prompts["lm/reference"] != base["lm/reference"]
    cache = _plan_components(tmp_path, "new_tokens: 8, max_cache_len: 512")
    assert cache["lm/llm-onnx"] != prompts["lm/llm-onnx"]
    (tmp_path / "tok.json").write_text('{"v": 2}')
    assert _plan_components(tmp_path, "new_tokens: 8")["lm/llm-onnx"] != prompts["lm/llm-onnx"]


@pytest.mark.parametrize("fmt, task, message", [
    ("onnx", "text-generation", r"deploy\.yaml:10: targets\.server\.format: format 'onnx' is for task: tensors "
                                r"models, and model 'lm' has task: text-generation \(formats for text-generation: "
                                r"llm-coreml, llm-coreml-fp16, llm-executorch, llm-executorch-int4, llm-executorch-int8, "
                                r"llm-genai, llm-onnx"),
    ("llm-onnx", "tensors", r"format 'llm-onnx' is for task: text-generation models, and model 'lm' has task: tensors"),
])
def test_a_format_takes_only_its_task(tmp_path: Path, fmt: str, task: str, message: str) -> None:
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project

    model = ("task: text-generation\n    generation: {prompts: p.txt, tokenizer: tok.json}" if task != "tensors" else
             "inputs: [{name: x, shape: [1, 4]}]\n    outputs: [{name: y}]")
    (tmp_path / "lm.py").write_text("def load():\n    pass\n")
    (tmp_path / "deploy.yaml").write_text(f"models:\n  lm:\n    source: {{factory: 'lm:load'}}\n    {model}\n"
                                          f"\n\n\ntargets:\n  server: {{model: lm, format: {fmt}}}\n")
    with pytest.raises(ConfigError, match=message):
        make_plan(open_project(str(tmp_path / "deploy.yaml")).planner, PlanRequest())


def test_prompts_and_held_text_become_padded_id_rows(tmp_path: Path) -> None:
    from buildsys.errors import DataError
    from buildsys.formats.llm.prompts import PAD, prompt_batch
    from tests.helpers.llm import train_tokenizer

    train_tokenizer(tmp_path / "tok")
    (tmp_path / "p.txt").write_text("the cat sleeps\n\nthe dog\n")
    (tmp_path / "held.txt").write_text("the fox runs by the river. the fox is happy. " * 4)
    gen = {"prompts": "p.txt", "held_text": "held.txt", "tokenizer": "tok", "max_seq_len": 8, "max_cache_len": 16,
           "new_tokens": 4}
    model = Model.model_validate({"task": "text-generation", "source": {"factory": "lm:load"}, "generation": gen})
    batch = prompt_batch(model, tmp_path)
    prompts, text = batch.inputs["prompt_ids"], batch.inputs["text_ids"]
    assert len(batch) > 2 and text.shape[1] == 8  # more windows than prompts: the prompts are cycled
    assert (prompts[0] == prompts[2]).all() and (prompts[1] == PAD).any() and not (prompts[0] == PAD).all()
    (tmp_path / "p.txt").write_text("the cat sleeps on the mat. the cat is happy. the dog runs.\n")
    with pytest.raises(DataError, match=r"p\.txt: prompt 1 has \d+ tokens; with new_tokens 4 it must have 1 to 12"):
        prompt_batch(model, tmp_path)


# --- token comparisons ------------------------------------------------------------------------------


def test_token_agreement_counts_tokens_before_the_first_divergence() -> None:
    ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    obs = np.array([[1, 2, 9, 4], [5, 6, 7, 8]])  # prompt 0 diverges at token 2: 2 of 4, then all 4 of 4
    result = compare("tokens", "tokens", ref, obs, {"min_token_agreement": 0.8})
    assert not result and result.extra["first_divergence"] == 2 and result.extra["diverged_prompts"] == 1
    assert result.failures() == ["token_agreement 0.75 < 0.8 (first divergence at token 2 of prompt 0; "
                                 "1 of 2 prompts diverge)"]
    assert compare("tokens", "tokens", ref, ref, {"min_token_agreement": 1.0})


def test_tokens_are_judged_by_agreement_only() -> None:
    model = Model.model_validate({"task": "text-generation", "source": {"factory": "lm:load"}, "generation": GEN})
    fp32 = resolve_acceptance(Acceptance(), "fp32", model.outputs)["outputs"]
    assert {k: v for k, v in fp32["tokens"].items() if v is not None} == {"min_token_agreement": 1.0}
    assert fp32["nll"]["min_token_agreement"] is None and fp32["prefill_logits"]["min_top1_agreement"] == 0.99
    int8 = resolve_acceptance(Acceptance(min_token_agreement=0.9), "int8", model.outputs)["outputs"]
    assert int8["tokens"]["min_token_agreement"] == 0.9


# --- end to end -------------------------------------------------------------------------------------

needs_llm = pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("transformers", "tokenizers",
                                                                              "onnxruntime", "executorch")),
                               reason="needs the llm, server and executorch extras")

TARGETS = """\
  llama-ort: {model: llama, format: llm-onnx}
  gpt2-ort: {model: gpt2, format: llm-onnx}
  llama-pte: {model: llama, format: llm-executorch}
  llama-pte8: {model: llama, format: llm-executorch, precision: int8}
  llama-pte8-strict:
    model: llama
    format: llm-executorch
    precision: int8
    acceptance: {outputs: {prefill_logits: {max_abs: 1.0e-4}}}
  untrained-pte8: {model: untrained, format: llm-executorch, precision: int8, acceptance: {min_token_agreement: 1.0}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Any]:
    import modelbuild
    from tests.helpers.llm import make_project

    root = tmp_path_factory.mktemp("llm")
    losses = make_project(root, steps=100, untrained=True)
    text = (root / "deploy.yaml").read_text().replace("targets: {}\n", "targets:\n" + TARGETS)
    (root / "deploy.yaml").write_text(text)
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    return root, {"losses": losses}, report


def _check(built: tuple[Path, dict[str, Any], Any], target: str) -> dict[str, Any]:
    """The check's metrics as this build saw them (a failed check is in the report, not the record)."""
    return dict(built[2].nodes[f"verify:{target}"].metrics)


@pytest.mark.slow
@needs_llm
@pytest.mark.parametrize("target", ["llama-ort", "gpt2-ort", "llama-pte"])
def test_fp32_targets_agree_on_every_greedy_token(built: tuple[Path, dict[str, Any], Any], target: str) -> None:
    assert max(built[1]["losses"].values()) < 1.5  # trained: greedy decoding follows the text, not ties
    check = _check(built, target)
    assert check["passed"] is True, check.get("failures")
    out = check["outputs"]
    assert out["tokens"]["token_agreement"]["observed"] == 1.0 and out["tokens"]["first_divergence"] is None
    assert out["prefill_logits"]["max_abs"]["observed"] < 1e-4 and out["nll"]["max_abs"]["observed"] < 1e-5
    assert check["findings"][0]["decode_tokens_per_s"] > 0  # the runtime's own timing, informative
    shipped = built[0] / "artifacts" / target
    assert (shipped / "tokenizer" / "tokenizer.json").is_file() and (shipped / "llm.json").is_file()


@pytest.mark.slow
@needs_llm
def test_int8_passes_its_defaults_and_fails_a_tolerance_it_misses(built: tuple[Path, dict[str, Any], Any]) -> None:
    passed = _check(built, "llama-pte8")
    assert passed["passed"] is True, passed.get("failures")
    assert passed["outputs"]["tokens"]["token_agreement"]["observed"] >= 0.5
    missed = _check(built, "llama-pte8-strict")  # int8 logits are not within 1e-4 of float: the build fails
    assert missed["passed"] is False and any("prefill_logits: max_abs" in f for f in missed["failures"])
    assert "verify:llama-pte8-strict" in [r.name for r in built[2].failed] and not (built[0] / "artifacts" / "llama-pte8-strict").exists()


@pytest.mark.slow
@needs_llm
def test_int8_whose_token_agreement_is_under_its_tolerance_fails_the_build(built: tuple[Path, dict[str, Any], Any]) -> None:
    # An untrained model's logits are near ties, so int8 noise flips greedy tokens (measured: 0.85
    # agreement, the first divergence at token 5); its target asks for every token.
    check = _check(built, "untrained-pte8")
    tokens = check["outputs"]["tokens"]
    assert check["passed"] is False and tokens["token_agreement"]["observed"] < 1.0
    assert tokens["first_divergence"] is not None
    assert any(f.startswith("tokens: token_agreement") and "first divergence at token" in f for f in check["failures"])
    assert "verify:untrained-pte8" in [r.name for r in built[2].failed]
    # Per-layer localisation takes a tensor model's inputs; a generation check says why it has none.
    assert check["localisation"]["not_available"].startswith("localisation not available for a text-generation check")
