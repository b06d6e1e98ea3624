"""Decoder LMs for ONNX Runtime GenAI (`llm-genai`, docs/llm.md): the layout GenAI loads, generation by
og.Generator's own greedy search against PyTorch on two tiny trained architectures (Llama-style with RoPE
and GQA, GPT-2-style), GenAI's tokenizer held to the model's, and a bundle carrying what GenAI needs."""

from __future__ import annotations

import importlib.util
import json
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from buildsys.formats.llm.genai_layout import KNOWN_TYPES, genai_config, io_names, ship_flat_tokenizer

needs_genai = pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in
                                     ("transformers", "tokenizers", "onnxruntime_genai")),
                                 reason="needs the llm extra (transformers, tokenizers, onnxruntime-genai)")


# --- layout (no toolchain) --------------------------------------------------------------------------


def test_io_names_follow_genai_convention() -> None:
    inputs, outputs = io_names(2)
    assert inputs == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                      "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]


def test_config_names_unknown_architectures_decoder() -> None:
    common: dict[str, Any] = dict(filename="model.onnx", layers=2, kv_heads=2, heads=4, head_dim=16, hidden=64,
                                  vocab=300, context=64, bos=0, eos=[0], pad=None)
    llama = genai_config(model_type="llama", **common)
    assert "llama" in KNOWN_TYPES and llama["model"]["type"] == "llama" and llama["model"]["eos_token_id"] == 0
    assert "pad_token_id" not in llama["model"]  # GenAI's parser refuses null: a missing token is left out
    assert llama["search"]["past_present_share_buffer"] is False and llama["search"]["do_sample"] is False
    assert llama["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    other = genai_config(model_type="gpt2", **{**common, "eos": [1, 2]})
    assert other["model"]["type"] == "decoder" and other["model"]["eos_token_id"] == [1, 2]


def test_tokenizer_ships_flat_with_a_config(tmp_path: Path) -> None:
    (tmp_path / "tok.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    assert ship_flat_tokenizer(tmp_path / "tok.json", out) == ["tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"tokenizer_class": "PreTrainedTokenizerFast"}
    clash = tmp_path / "dir"
    clash.mkdir()
    (clash / "model.onnx").write_text("x")
    (out / "model.onnx").write_text("y")
    with pytest.raises(ValueError, match="holds model.onnx, a file of the GenAI artifact itself"):
        ship_flat_tokenizer(clash, out)


def test_a_tokenizer_mismatch_says_where_the_ids_part_and_which_part_genai_lacks() -> None:
    from buildsys.formats.llm.genai_tokenizer import mismatch, unreproduced

    words = {"model": {"type": "BPE"}, "pre_tokenizer": {"type": "Whitespace"},
             "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}}
    parts = unreproduced(words)
    assert parts == ["pre-tokenizer Whitespace (GenAI splits text as GPT-2's byte-level BPE does)",
                     "normalizer Lowercase (not applied by GenAI's tokenizer)"]
    gpt2 = {"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}}
    assert unreproduced(gpt2) == [] and unreproduced({"model": {"type": "Unigram"}})[0].startswith("model Unigram")
    # the first eight ids agree: the difference is further on, and the message shows it there
    expected = list(range(10, 22))
    got = expected[:9] + [99, 98] + expected[10:]
    text = mismatch("the cat sleeps on the mat and the dog", got, expected, parts, 2, 5)
    assert text.startswith("GenAI's tokenizer encodes 2 of 5 texts otherwise than the model's tokenizer.json: the "
                           "first, 'the cat sleeps on the mat and the dog', parts at token 9 of 12: GenAI "
                           "[15, 16, 17, 18, 99, 98, 20, 21] vs tokenizer.json [15, 16, 17, 18, 19, 20, 21] (ids 5-12); "
                           "GenAI does not reproduce its pre-tokenizer Whitespace"), text
    assert text.endswith("or tokenize with Hugging Face tokenizers in the application and feed GenAI the ids (append_tokens)")


def test_runtime_says_when_genai_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from buildsys.formats.llm import genai_runtime

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime_genai" else real(name, *a))
    reason = genai_runtime.GenaiRuntime().unavailable()
    assert reason is not None and reason.startswith("onnxruntime-genai is not installed")


# --- end to end -------------------------------------------------------------------------------------

TARGETS = """\
  llama-genai: {model: llama, format: llm-genai}
  gpt2-genai: {model: gpt2, format: llm-genai}
  words-genai: {model: words, format: llm-genai}
bundles:
  genai: {targets: [llama-genai], version: 1.0.0}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], Any]:
    """Llama and GPT-2 with a byte-level BPE tokenizer (GenAI reads it), and an untrained Llama `words` whose
    tokenizer splits on whitespace first (GenAI's tokenizer does not reproduce that)."""
    import modelbuild
    from tests.helpers.llm import build, make_project, train_tokenizer

    root = tmp_path_factory.mktemp("genai")
    losses = make_project(root, steps=100, byte_level=True)
    words = train_tokenizer(root / "words-tokenizer")
    from tokenizers import Tokenizer

    build("llama", Tokenizer.from_file(str(words)).get_vocab_size()).eval().save_pretrained(root / "words")
    models = textwrap.dedent("""\
          words:
            task: text-generation
            source: {factory: "lm:load", kwargs: {path: words}, code: ["words/*"]}
            generation: {max_seq_len: 32, max_cache_len: 64, prompts: prompts.txt, held_text: held.txt,
                         new_tokens: 12, tokenizer: words-tokenizer}
    """)
    text = (root / "deploy.yaml").read_text().replace("targets: {}\n", textwrap.indent(models, "  ") + "targets:\n" + TARGETS)
    (root / "deploy.yaml").write_text(text)
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    return root, losses, report


def _check(built: tuple[Path, dict[str, float], Any], target: str) -> dict[str, Any]:
    return dict(built[2].nodes[f"verify:{target}"].metrics)


@pytest.mark.slow
@needs_genai
@pytest.mark.parametrize("target", ["llama-genai", "gpt2-genai"])
def test_fp32_targets_agree_on_every_greedy_token_in_genai(built: tuple[Path, dict[str, float], Any], target: str) -> None:
    assert max(built[1].values()) < 1.5  # trained: greedy decoding follows the text, not ties
    check = _check(built, target)
    assert check["passed"] is True, check.get("failures")
    assert check["runtime"] == "onnxruntime-genai"
    out = check["outputs"]
    assert out["tokens"]["token_agreement"]["observed"] == 1.0 and out["tokens"]["first_divergence"] is None
    assert out["prefill_logits"]["max_abs"]["observed"] < 1e-4 and out["nll"]["max_abs"]["observed"] < 1e-5
    timing, tokenizer = check["findings"]
    assert timing["decode_tokens_per_s"] > 0 and "encodes all" in tokenizer["text"] and not tokenizer.get("fails")
    shipped = built[0] / "artifacts" / target
    config = json.loads((shipped / "genai_config.json").read_text())
    assert config["model"]["type"] == {"llama-genai": "llama", "gpt2-genai": "decoder"}[target]
    assert config["model"]["decoder"]["num_key_value_heads"] == (2 if target == "llama-genai" else 4)  # GQA kept
    assert (shipped / "tokenizer.json").is_file() and (shipped / "tokenizer_config.json").is_file()


@pytest.mark.slow
@needs_genai
def test_a_tokenizer_genai_cannot_reproduce_fails_the_check(built: tuple[Path, dict[str, float], Any]) -> None:
    check = _check(built, "words-genai")
    assert check["passed"] is False
    finding = next(f for f in check["failures"] if f.startswith("GenAI's tokenizer encodes"))
    # where the ids part (GenAI maps each space to -1), and which part of tokenizer.json GenAI lacks
    assert "otherwise than the model's tokenizer.json: the first, 'the cat sleeps', parts at token 1 of 3" in finding
    assert "GenAI does not reproduce its pre-tokenizer Whitespace" in finding and "-1" in finding
    assert not (built[0] / "artifacts" / "words-genai").exists()


@pytest.mark.slow
@needs_genai
def test_bundle_carries_genai_config_and_tokenizer(built: tuple[Path, dict[str, float], Any]) -> None:
    import modelbuild

    path = modelbuild.load(built[0] / "deploy.yaml").bundle("genai", sign=False)
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    assert {"llama-genai/model.onnx", "llama-genai/genai_config.json", "llama-genai/tokenizer.json",
            "llama-genai/tokenizer_config.json"} <= names, sorted(names)
