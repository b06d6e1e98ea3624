"""Where a decoder LM comes from (docs/llm.md, "Sources"): a transformers model directory read from disk only,
and a checkpoint (a factory that builds the architecture plus a `weights:` file, safetensors or torch.save).
Both are keyed by every byte they read and built end to end to ONNX Runtime, agreeing on every greedy token."""

from __future__ import annotations

import importlib.util
import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from buildsys.config.schema import Model
from buildsys.errors import ConfigError

needs_llm = pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("transformers", "tokenizers")),
                               reason="needs the llm extra (transformers, tokenizers)")
GEN = {"prompts": "p.txt"}


# --- schema and keys (no toolchain) -------------------------------------------------------------------


def test_a_transformers_directory_brings_its_tokenizer() -> None:
    model = Model.model_validate({"task": "text-generation", "source": {"transformers": "models/lm/"}, "generation": GEN})
    assert model.source.format == "pytorch" and model.generation is not None
    assert model.generation.tokenizer == "models/lm/tokenizer.json"
    own = Model.model_validate({"task": "text-generation", "source": {"transformers": "lm"},
                                "generation": {**GEN, "tokenizer": "tok"}})
    assert own.generation is not None and own.generation.tokenizer == "tok"  # what the user wrote wins
    assert Model.model_validate(model.model_dump(mode="json")) == model  # a worker validates the dump again


@pytest.mark.parametrize("data, message", [
    ({"source": {"transformers": "lm"}, "inputs": [{"name": "x", "shape": [1]}], "outputs": [{"name": "y"}]},
     "source.transformers loads a causal LM: it needs task: text-generation"),
    ({"task": "text-generation", "source": {"transformers": "lm", "factory": "lm:load"}, "generation": GEN},
     "give exactly one of factory, transformers, torchscript, exported, onnx \\(got factory, transformers\\)"),
    ({"task": "text-generation", "source": {"factory": "lm:load"}, "generation": GEN}, "tokenizer\n  Field required"),
])
def test_source_mistakes_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Model.model_validate(data)


def _deploy(root: Path, source: str) -> None:
    (root / "p.txt").write_text("the cat\n")
    (root / "deploy.yaml").write_text(textwrap.dedent(f"""\
        models:
          lm:
            task: text-generation
            source: {source}
            generation: {{prompts: p.txt}}
        targets:
          server: {{model: lm, format: llm-onnx}}
    """))


def _components(root: Path) -> dict[str, Any]:
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project

    plan = make_plan(open_project(str(root / "deploy.yaml")).planner, PlanRequest())
    return dict(plan.nodes["lm/llm-onnx"].components or {})


def test_every_file_of_the_directory_enters_the_key(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    for name, text in (("config.json", "{}"), ("model.safetensors", "w"), ("tokenizer.json", "{}")):
        (tmp_path / "hf" / name).write_text(text)
    _deploy(tmp_path, "{transformers: hf}")
    base = _components(tmp_path)
    assert base["source"] == {"factory": None, "kwargs": {}, "transformers": "hf"}
    assert "model directory" in base["inputs"] and "data tokenizer" in base["inputs"]
    assert "transformers" in base["toolchain"]  # its version changes how the directory is read
    (tmp_path / "hf" / "model.safetensors").write_text("w2")
    weights = _components(tmp_path)
    assert weights["inputs"]["model directory"] != base["inputs"]["model directory"]
    (tmp_path / "hf" / "generation_config.json").write_text("{}")  # a new file is read too
    assert _components(tmp_path)["inputs"]["model directory"] != weights["inputs"]["model directory"]
    (tmp_path / "hf" / "tokenizer.json").write_text('{"v": 2}')
    assert _components(tmp_path)["inputs"]["data tokenizer"] != weights["inputs"]["data tokenizer"]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, r"deploy\.yaml:4: models\.lm\.source\.transformers: transformers directory 'hf' does not exist"),
    (lambda d: (d / "hf").mkdir(), r"deploy\.yaml:4: models\.lm\.source\.transformers: 'hf' has no config\.json"),
])
def test_a_missing_directory_names_the_line(tmp_path: Path, make: Any, message: str) -> None:
    make(tmp_path)
    _deploy(tmp_path, "{transformers: hf}")
    with pytest.raises(ConfigError, match=message):
        _components(tmp_path)


# --- end to end ---------------------------------------------------------------------------------------

CHECKPOINT_FACTORY = '''\
"""The architecture only: the weights come from deploy.yaml's `weights:` (a checkpoint)."""
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM


def build():
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(Path(__file__).parent / "arch"))
'''


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The trained tiny Llama three ways: its transformers directory (tokenizer.json inside), a factory plus a
    safetensors checkpoint, and a factory plus a torch.save checkpoint wrapped as {"state_dict": ...}."""
    import torch
    from safetensors.torch import save_file

    import modelbuild
    from tests.helpers.llm import make_project

    root = tmp_path_factory.mktemp("sources")
    make_project(root, archs=("llama",), steps=100)
    shutil.copy(root / "tokenizer" / "tokenizer.json", root / "llama" / "tokenizer.json")
    (root / "arch").mkdir()
    shutil.copy(root / "llama" / "config.json", root / "arch" / "config.json")
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(root / "llama", local_files_only=True).state_dict()
    save_file({k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"} |
              {"lm_head.weight": state["lm_head.weight"].clone()}, str(root / "llama.safetensors"))
    torch.save({"state_dict": state, "epoch": 3}, root / "llama.pt")
    (root / "arch_lm.py").write_text(CHECKPOINT_FACTORY)
    gen = "{max_seq_len: 32, max_cache_len: 64, prompts: prompts.txt, held_text: held.txt, new_tokens: 12"
    (root / "deploy.yaml").write_text(textwrap.dedent(f"""\
        models:
          hf:
            task: text-generation
            source: {{transformers: llama}}
            generation: {gen}}}
          ckpt:
            task: text-generation
            source: {{factory: "arch_lm:build", weights: llama.safetensors, code: ["arch/*"]}}
            generation: {gen}, tokenizer: tokenizer}}
          wrapped:
            task: text-generation
            source: {{factory: "arch_lm:build", weights: llama.pt, code: ["arch/*"]}}
            generation: {gen}, tokenizer: tokenizer}}
        targets:
          hf-server: {{model: hf, format: llm-onnx}}
          ckpt-server: {{model: ckpt, format: llm-onnx}}
          wrapped-server: {{model: wrapped, format: llm-onnx}}
    """))
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    return root, report


@pytest.mark.slow
@needs_llm
@pytest.mark.parametrize("target", ["hf-server", "ckpt-server", "wrapped-server"])
def test_every_source_builds_and_agrees_on_every_greedy_token(built: tuple[Path, Any], target: str) -> None:
    check = dict(built[1].nodes[f"verify:{target}"].metrics)
    assert check["passed"] is True, check.get("failures")
    out = check["outputs"]
    assert out["tokens"]["token_agreement"]["observed"] == 1.0 and out["tokens"]["first_divergence"] is None
    assert out["prefill_logits"]["max_abs"]["observed"] < 1e-4
    shipped = built[0] / "artifacts" / target
    # The tokenizer ships, and only the tokenizer: never the weights of the directory it came from.
    assert sorted(p.name for p in (shipped / "tokenizer").iterdir()) == ["tokenizer.json"]


@pytest.mark.slow
@needs_llm
def test_the_three_sources_give_the_same_reference(built: tuple[Path, Any]) -> None:
    """Same weights, three ways in: the PyTorch references are byte-identical, so the loaders read the same model."""
    lock = json.loads((built[0] / "deploy.lock").read_text())["nodes"]
    refs = {m: lock[f"{m}/reference"]["tree"] for m in ("hf", "ckpt", "wrapped")}
    assert len(set(refs.values())) == 1, refs


@needs_llm
def test_a_directory_that_does_not_load_says_why(tmp_path: Path) -> None:
    from buildsys.errors import StepError
    from buildsys.formats.torch.loading import load_module

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8}))
    model = Model.model_validate({"task": "text-generation", "source": {"transformers": "hf"}, "generation": GEN})
    with pytest.raises(StepError, match=r"model 'lm': transformers directory 'hf' could not be loaded as a causal "
                                        r"LM: .*\(step reference\)"):
        load_module(model, tmp_path, name="lm", step="reference")
