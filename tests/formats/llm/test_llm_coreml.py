"""Decoder LMs as stateful Core ML ML Programs (`llm-coreml`, docs/llm.md): the tiny trained Llama-style
(RoPE, GQA) and GPT-2-style models of tests/helpers/llm.py converted with their KV cache as iOS18 state,
structure checked, and generation checked through the MIL reference interpreter (Core ML itself needs
macOS), labelled as such."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

needs_coreml_llm = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("transformers", "tokenizers", "coremltools")),
    reason="needs the llm and coreml extras")
linux = pytest.mark.skipif(sys.platform == "darwin", reason="on macOS Core ML itself judges")

TARGETS = """\
  llama-ios: {model: llama, format: llm-coreml}
  llama-ios16: {model: llama, platform: ios}
  gpt2-ios: {model: gpt2, format: llm-coreml}
"""


def test_ios_platform_gives_a_text_generation_model_the_stateful_program(tmp_path: Path) -> None:
    from buildsys.config.load import load

    (tmp_path / "deploy.yaml").write_text(textwrap.dedent("""\
        models:
          lm:
            task: text-generation
            source: {factory: "lm:load"}
            generation: {prompts: p.txt, tokenizer: tok.json}
        targets:
          phone: {model: lm, platform: ios}
          phone32: {model: lm, recipe: ios-llm-fp32}
    """))
    targets = load(tmp_path / "deploy.yaml").project.targets
    assert (targets["phone"].format, targets["phone"].precision) == ("llm-coreml", "fp16")
    assert (targets["phone32"].format, targets["phone32"].precision) == ("llm-coreml", "fp32")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], Any]:
    import modelbuild
    from tests.helpers.llm import make_project

    root = tmp_path_factory.mktemp("llm_coreml")
    losses = make_project(root, steps=100)
    text = (root / "deploy.yaml").read_text().replace("targets: {}\n", "targets:\n" + TARGETS)
    (root / "deploy.yaml").write_text(text)
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    return root, losses, report


def _check(built: tuple[Path, dict[str, float], Any], target: str) -> dict[str, Any]:
    return dict(built[2].nodes[f"verify:{target}"].metrics)


@pytest.mark.slow
@needs_coreml_llm
@pytest.mark.parametrize("target", ["llama-ios", "gpt2-ios"])
def test_the_package_is_a_stateful_program(built: tuple[Path, dict[str, float], Any], target: str) -> None:
    """Structure (any OS): spec version 9 (iOS18), the caches as float16 states of llm.json's shape,
    inputs tokens / cache_position, output logits, state ops in the program."""
    check = _check(built, target)
    facts = check["structure"]["facts"]
    assert check["structure"]["problems"] == []
    assert facts["spec_version"] == 9
    cache = [2, 1, 2 if target.startswith("llama") else 4, 64, 16]  # GQA: 2 kv heads; GPT-2: 4 heads
    assert facts["states"] == [{"name": n, "shape": cache, "dtype": "float16"} for n in ("k_cache", "v_cache")]
    assert sorted(f["name"] for f in facts["inputs"]) == ["cache_position", "tokens"]
    assert [f["name"] for f in facts["outputs"]] == ["logits"]
    assert facts["ops"]["read_state"] >= 2 and facts["ops"]["write_state"] >= 2  # coreml_update_state
    shipped = built[0] / "artifacts" / target
    assert (shipped / "model.mlpackage").is_dir() and (shipped / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.slow
@needs_coreml_llm
@linux
@pytest.mark.parametrize("target", ["llama-ios", "gpt2-ios", "llama-ios16"])
def test_generation_by_the_reference_agrees_on_every_greedy_token(built: tuple[Path, dict[str, float], Any],
                                                                   target: str) -> None:
    assert max(built[1].values()) < 1.5  # trained: greedy decoding follows the text, not ties
    check = _check(built, target)
    assert check["passed"] is True, check.get("failures")
    assert check["runtime"] == "llm-coreml-mil"
    out = check["outputs"]
    assert out["tokens"]["token_agreement"]["observed"] == 1.0 and out["tokens"]["first_divergence"] is None
    # the cache is float16 state in both members: rounding of 1e-3 of logits whose range is ~10
    assert out["prefill_logits"]["max_abs"]["observed"] < (1e-2 if target != "llama-ios16" else 5e-2)
    stand_in = [c for c in check["caveats"] if c["kind"] == "stand-in"]  # every output is labelled by it
    assert stand_in and stand_in[0]["what"] == "MIL reference, not Apple's runtime", check["caveats"]
    assert "Core ML execution needs macOS" in stand_in[0]["why"] and "computed by llm-coreml-mil" in stand_in[0]["why"]
    assert "Core ML itself: not run: needs macOS" in check["findings"][0]["text"]


@pytest.mark.slow
@needs_coreml_llm
def test_the_reference_keeps_the_cache_in_its_states(built: tuple[Path, dict[str, float], Any]) -> None:
    """Prefill then one token per call through the states gives the logits of one uncached pass; a call
    without the states fed is refused, and fresh states are zero."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from buildsys.formats.coreml.mil import MilProgram
    from buildsys.formats.runtime import CannotRun

    root = built[0]
    program = MilProgram.load(root / "artifacts" / "llama-ios" / "model.mlpackage")
    assert program.state_names == ["k_cache", "v_cache"]
    states = program.new_states()
    assert all(s.value.dtype == np.float16 and not s.value.any() for s in states.values())
    ids = np.array([3, 9, 14, 2, 30, 7], dtype=np.int64)
    rows = [program.evaluate({"tokens": ids[None, :3], "cache_position": np.arange(3)}, states=states).outputs["logits"][0]]
    rows += [program.evaluate({"tokens": ids[None, i:i + 1], "cache_position": np.array([i])},
                              states=states).outputs["logits"][0] for i in range(3, 6)]
    assert states["k_cache"].value[:, :, :, :6].any() and not states["k_cache"].value[:, :, :, 6:].any()
    lm = AutoModelForCausalLM.from_pretrained(root / "llama", local_files_only=True).eval()
    with torch.no_grad():
        want = lm(input_ids=torch.tensor(ids[None])).logits[0].numpy()
    got = np.concatenate(rows)
    assert np.abs(got - want).max() < 1e-2 and (got.argmax(-1) == want.argmax(-1)).all()
    with pytest.raises(CannotRun, match="has states"):
        program.evaluate({"tokens": ids[None, :1], "cache_position": np.arange(1)})


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="needs the coreml extra")
def test_the_interpreter_carries_a_state_across_calls() -> None:
    """coremltools' accumulator example of stateful models, built in MIL: acc += x each call, y = acc²;
    the state is float16 (written rounded), persists between evaluations, and must be fed."""
    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from buildsys.formats.coreml.mil import MilProgram
    from buildsys.formats.runtime import CannotRun

    @mb.program(input_specs=[mb.TensorSpec((2,), dtype=types.fp16), mb.StateTensorSpec((2,), dtype=types.fp16)],
                opset_version=ct.target.iOS18)
    def prog(x: Any, acc: Any) -> Any:
        total = mb.add(x=x, y=mb.read_state(input=acc))
        mb.coreml_update_state(state=acc, value=total)
        return mb.mul(x=total, y=total)

    program = MilProgram(prog, "main")
    assert program.state_names == ["acc"] and program.missing() == {}
    states = program.new_states()
    x = np.array([1.0, 1.0 / 3.0], dtype=np.float16)
    outs = [program.evaluate({"x": x}, states=states).outputs for _ in range(3)]
    assert states["acc"].value.dtype == np.float16
    np.testing.assert_allclose(states["acc"].value, [3.0, 1.0], rtol=1e-3)
    np.testing.assert_allclose(next(iter(outs[2].values())), [9.0, 1.0], rtol=2e-3)
    np.testing.assert_allclose(next(iter(outs[0].values())), [1.0, 1.0 / 9.0], rtol=2e-3)
    with pytest.raises(CannotRun, match="has states"):
        program.evaluate({"x": x})


@pytest.mark.skipif(importlib.util.find_spec("coremltools") is None, reason="needs the coreml extra")
def test_the_structure_check_refuses_a_program_that_never_writes_its_cache(tmp_path: Path) -> None:
    """What the index_put_ conversion gave (docs/llm.md): states read, never written. The structural check
    names it, with the states' and inputs' mismatches against llm.json."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from buildsys.formats.llm.contract import CacheSpec
    from buildsys.formats.llm.coreml_runtime import inspect_stateful

    @mb.program(input_specs=[mb.TensorSpec((1, 4), dtype=types.fp32), mb.StateTensorSpec((1, 4), dtype=types.fp16)],
                opset_version=ct.target.iOS18)
    def prog(x: Any, k_cache: Any) -> Any:
        return mb.add(x=x, y=mb.cast(x=mb.read_state(input=k_cache), dtype="fp32"), name="logits")

    package = tmp_path / "model.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18).save(str(package))
    CacheSpec(layers=2, kv_heads=2, head_dim=16, max_cache_len=64, vocab=96, max_chunk=32).write(tmp_path)
    problems = inspect_stateful(package, "llm-coreml")["problems"]
    assert "the program has no write_state op: its cache is not used as state" in problems
    assert any(p.startswith("states are [{'name': 'k_cache', 'shape': [1, 4]") for p in problems), problems
    assert "inputs are ['x'], expected ['cache_position', 'tokens']" in problems
