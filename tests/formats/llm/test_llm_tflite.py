"""Decoder LMs as TFLite through litert-torch (`llm-tflite`, docs/llm.md): the tiny trained Llama-style (RoPE,
GQA) and GPT-2-style models of tests/helpers/llm.py converted with a `prefill` and a `decode` signature over
the KV cache, float32 and int8 weight-only, each judged by generation in the LiteRT interpreter."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

needs_litert_llm = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("transformers", "tokenizers", "litert_torch", "ai_edge_litert",
                                                       "ai_edge_quantizer")),
    reason="needs the llm and litert-torch extras")

TARGETS = """\
  llama-tfl: {model: llama, format: llm-tflite}
  gpt2-tfl: {model: gpt2, format: llm-tflite}
  llama-tfl8: {model: llama, format: llm-tflite, precision: int8}
  untrained-tfl8: {model: untrained, format: llm-tflite, precision: int8, acceptance: {min_token_agreement: 1.0}}
  custom-tfl: {model: custom, format: llm-tflite}
"""

#: The trained Llama with an activation built on an op litert-torch has no lowering for (erfinv): a custom
#: architecture the format cannot take, whose failure must say which part and why.
CUSTOM = '''\
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


class ErfinvGate(torch.nn.Module):
    def forward(self, x):
        return x * torch.special.erfinv(torch.tanh(x) * 0.5)


def load(path):
    lm = AutoModelForCausalLM.from_pretrained(Path(__file__).parent / path, local_files_only=True)
    for layer in lm.model.layers:
        layer.mlp.act_fn = ErfinvGate()
    return lm
'''
CUSTOM_MODEL = """\
  custom:
    task: text-generation
    source: {factory: "custom:load", kwargs: {path: llama}, code: ["llama/*", "custom.py"]}
    generation: {max_seq_len: 32, max_cache_len: 64, prompts: prompts.txt, held_text: held.txt, new_tokens: 12,
                 tokenizer: tokenizer}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    import modelbuild
    from tests.helpers.llm import make_project

    root = tmp_path_factory.mktemp("llm-tflite")
    make_project(root, steps=100, untrained=True)
    (root / "custom.py").write_text(CUSTOM)
    text = (root / "deploy.yaml").read_text().replace("targets: {}\n", CUSTOM_MODEL + "targets:\n" + TARGETS)
    (root / "deploy.yaml").write_text(text)
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    return root, report


def _metrics(built: tuple[Path, Any], node: str) -> dict[str, Any]:
    return dict(built[1].nodes[node].metrics)


@pytest.mark.slow
@needs_litert_llm
@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_fp32_tflite_agrees_on_every_greedy_token(built: tuple[Path, Any], model: str) -> None:
    check = _metrics(built, f"verify:{model}-tfl")
    assert check["passed"] is True, check.get("failures")
    out = check["outputs"]
    assert out["tokens"]["token_agreement"]["observed"] == 1.0 and out["tokens"]["first_divergence"] is None
    assert out["prefill_logits"]["max_abs"]["observed"] < 1e-4 and out["nll"]["max_abs"]["observed"] < 1e-5
    assert check["findings"][0]["decode_tokens_per_s"] > 0
    export = _metrics(built, f"{model}/llm-tflite")
    assert export["signatures"] == {"decode": 1, "prefill": 32} and set(export["weights"]) <= {"float32", "int32"}
    shipped = built[0] / "artifacts" / f"{model}-tfl"
    assert (shipped / "model.tflite").is_file() and (shipped / "llm.json").is_file()
    assert (shipped / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.slow
@needs_litert_llm
def test_int8_weight_only_passes_and_a_tolerance_it_misses_fails(built: tuple[Path, Any]) -> None:
    check = _metrics(built, "verify:llama-tfl8")
    assert check["passed"] is True, check.get("failures")
    assert check["outputs"]["tokens"]["token_agreement"]["observed"] >= 0.9
    export = _metrics(built, "llama/llm-tflite-int8")
    fp32 = _metrics(built, "llama/llm-tflite")
    assert export["scheme"] == "weight-only" and export["quantized_weights"]["of_quantizable"] == 1.0
    assert export["bytes"] < 0.75 * fp32["bytes"]
    # An untrained model's logits are near ties: int8 weights flip greedy tokens, and a target asking for
    # every token fails its build (the artifact is withheld).
    missed = _metrics(built, "verify:untrained-tfl8")
    assert missed["passed"] is False and missed["outputs"]["tokens"]["token_agreement"]["observed"] < 1.0
    assert any(f.startswith("tokens: token_agreement") for f in missed["failures"])
    assert "verify:untrained-tfl8" in [r.name for r in built[1].failed]
    assert not (built[0] / "artifacts" / "untrained-tfl8").exists()


@pytest.mark.slow
@needs_litert_llm
def test_an_architecture_litert_torch_cannot_lower_fails_naming_the_op_and_the_modules(built: tuple[Path, Any]) -> None:
    failed = {r.name: r for r in built[1].failed}
    error = failed["custom/llm-tflite"].error
    assert "litert-torch could not convert the LlamaForCausalLM decoder" in error
    assert "litert-torch has no lowering for aten.erfinv (used by model.layers.0.mlp.act_fn, " \
           "model.layers.1.mlp.act_fn)" in error
    assert not (built[0] / "artifacts" / "custom-tfl").exists()
