"""Decoder LMs as stateful OpenVINO IR (`llm-openvino`, docs/llm.md): the tiny trained Llama-style (RoPE,
GQA) and GPT-2-style models of tests/helpers/llm.py converted from their llm-onnx export, the KV cache
made state, weights fp32 / fp16 / int8 / int4, each judged by generation on OpenVINO's CPU plugin."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path
from typing import Any

import pytest

needs_ov_llm = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("transformers", "tokenizers", "onnxscript", "openvino", "nncf")),
    reason="needs the llm, server and openvino extras")

INT4 = "options: {llm-openvino-int4: {group_size: 32}}"  # the tiny models are 64 wide: a set 128 divides nothing
TARGETS = f"""\
  llama-ov: {{model: llama, format: llm-openvino}}
  llama-ov16: {{model: llama, format: llm-openvino, precision: fp16}}
  llama-ov8: {{model: llama, format: llm-openvino, precision: int8}}
  llama-ov4: {{model: llama, format: llm-openvino, precision: int4, {INT4}}}
  gpt2-ov: {{model: gpt2, format: llm-openvino}}
  gpt2-ov16: {{model: gpt2, format: llm-openvino, precision: fp16}}
  gpt2-ov8: {{model: gpt2, format: llm-openvino, precision: int8}}
  gpt2-ov4: {{model: gpt2, format: llm-openvino, precision: int4, {INT4}}}
  untrained-ov4:
    model: untrained
    format: llm-openvino
    precision: int4
    {INT4}
    acceptance: {{min_token_agreement: 1.0}}
  llama-ov4-g128: {{model: llama, format: llm-openvino, precision: int4, options: {{llm-openvino-int4: {{group_size: 128}}}}}}
"""


# --- planning (no toolchain) ------------------------------------------------------------------------


def test_intel_platform_gives_a_text_generation_model_the_stateful_int8_ir(tmp_path: Path) -> None:
    from buildsys.config.load import load

    (tmp_path / "deploy.yaml").write_text(textwrap.dedent("""\
        models:
          lm:
            task: text-generation
            source: {factory: "lm:load"}
            generation: {prompts: p.txt, tokenizer: tok.json}
        targets:
          edge: {model: lm, platform: intel}
          edge-int4: {model: lm, recipe: intel-llm-int4}
    """))
    targets = load(tmp_path / "deploy.yaml").project.targets
    assert (targets["edge"].format, targets["edge"].precision) == ("llm-openvino", "int8")
    assert (targets["edge-int4"].format, targets["edge-int4"].precision) == ("llm-openvino", "int4")


def test_the_route_goes_through_the_onnx_export(tmp_path: Path) -> None:
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project

    (tmp_path / "lm.py").write_text("def load():\n    raise RuntimeError('never called by plan')\n")
    (tmp_path / "p.txt").write_text("the cat\n")
    (tmp_path / "tok.json").write_text("{}")
    (tmp_path / "deploy.yaml").write_text(textwrap.dedent("""\
        models:
          lm:
            task: text-generation
            source: {factory: "lm:load"}
            generation: {prompts: p.txt, tokenizer: tok.json}
        targets:
          a: {model: lm, format: llm-openvino, precision: int4}
          b: {model: lm, format: llm-openvino, precision: fp16}
    """))
    nodes = make_plan(open_project(str(tmp_path / "deploy.yaml")).planner, PlanRequest()).nodes
    assert {"lm/llm-onnx", "lm/llm-openvino", "lm/llm-openvino-int4", "lm/llm-openvino-fp16"} <= set(nodes)
    # NNCF computes compressed weights with the CPU plugin's kernels: bound to the platform; a conversion is not
    from buildsys.formats import get_step
    from buildsys.storage.keys import HostBinding

    assert get_step("llm-openvino-int4-from-llm-openvino").host_binding({}, ()) == HostBinding.PLATFORM
    assert get_step("llm-openvino-from-llm-onnx").host_binding({}, ()) == HostBinding.PORTABLE


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs the openvino extra")
def test_a_decoder_whose_cache_is_still_an_input_is_not_stateful() -> None:
    """The check the step and the runtime make: a stateless IR (the cache fed and returned) is refused."""
    import openvino as ov
    import openvino.opset13 as ops

    from buildsys.formats.llm.openvino import state_problem

    def param(name: str, dtype: Any, shape: list[int]) -> Any:
        node = ops.parameter(shape, dtype)
        node.output(0).set_names({name})
        return node

    tokens, positions = param("tokens", ov.Type.i64, [1, -1]), param("cache_position", ov.Type.i64, [-1])
    k, v = param("k_cache", ov.Type.f32, [2, 1, 2, 8, 4]), param("v_cache", ov.Type.f32, [2, 1, 2, 8, 4])
    outs = []
    for name, value in (("logits", ops.convert(tokens, ov.Type.f32)), ("k_cache_out", ops.relu(k)),
                        ("v_cache_out", ops.relu(v))):
        value.output(0).set_names({name})
        outs.append(value)
    stateless = ov.Model(outs, [tokens, positions, k, v])
    problem = state_problem(stateless)
    assert problem is not None and "inputs [cache_position, k_cache, tokens, v_cache]" in problem
    assert "0 state variable(s)" in problem


# --- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], Any]:
    import modelbuild
    from tests.helpers.llm import make_project

    root = tmp_path_factory.mktemp("llm_ov")
    losses = make_project(root, steps=100, untrained=True)
    text = (root / "deploy.yaml").read_text().replace("targets: {}\n", "targets:\n" + TARGETS)
    (root / "deploy.yaml").write_text(text)
    report = modelbuild.load(root / "deploy.yaml").build(jobs=1, keep_going=True, check=False)
    return root, losses, report


def _node(built: tuple[Path, dict[str, float], Any], name: str) -> Any:
    """The built node `name`, or the built one of its variants by options (`name~<hash>`)."""
    nodes = built[2].nodes
    return nodes.get(name) or next(r for n, r in nodes.items() if n.startswith(name + "~") and r.outcome != "failed")


def _check(built: tuple[Path, dict[str, float], Any], target: str) -> dict[str, Any]:
    return dict(built[2].nodes[f"verify:{target}"].metrics)


@pytest.mark.slow
@needs_ov_llm
@pytest.mark.parametrize("target", ["llama-ov", "llama-ov16", "gpt2-ov", "gpt2-ov16"])
def test_float_irs_agree_on_every_greedy_token(built: tuple[Path, dict[str, float], Any], target: str) -> None:
    assert max(built[1].values()) < 1.5  # trained: greedy decoding follows the text, not ties
    check = _check(built, target)
    assert check["passed"] is True, check.get("failures")
    out = check["outputs"]
    assert out["tokens"]["token_agreement"]["observed"] == 1.0 and out["tokens"]["first_divergence"] is None
    limit = 1e-4 if target.endswith("-ov") else 1e-2  # fp16 weights: rounding of 1e-3 of the logits
    assert out["prefill_logits"]["max_abs"]["observed"] < limit
    assert out["nll"]["max_abs"]["observed"] < limit / 10
    assert check["findings"][0]["decode_tokens_per_s"] > 0
    shipped = built[0] / "artifacts" / target
    assert (shipped / "tokenizer" / "tokenizer.json").is_file() and (shipped / "llm.json").is_file()


@pytest.mark.slow
@needs_ov_llm
@pytest.mark.parametrize("target", ["llama-ov", "llama-ov16", "llama-ov8", "llama-ov4", "gpt2-ov4"])
def test_the_ir_is_stateful(built: tuple[Path, dict[str, float], Any], target: str) -> None:
    """The cache is state (ReadValue/Assign variables), not an input or output, in every precision."""
    import openvino as ov

    model = ov.Core().read_model(str(built[0] / "artifacts" / target / "model.xml"))
    assert sorted(p.get_any_name() for p in model.inputs) == ["cache_position", "tokens"]
    assert [p.get_any_name() for p in model.outputs] == ["logits"]
    assert len(model.get_variables()) == 2 and len(model.get_sinks()) == 2
    kinds = {op.get_type_name() for op in model.get_ordered_ops()}
    assert {"ReadValue", "Assign"} <= kinds


@pytest.mark.slow
@needs_ov_llm
def test_weight_compression_shrinks_the_weights_and_keeps_the_tokens(built: tuple[Path, dict[str, float], Any]) -> None:
    for arch in ("llama", "gpt2"):
        size = {p: _node(built, f"{arch}/llm-openvino{s}").metrics["weights_bytes"]
                for p, s in (("fp32", ""), ("fp16", "-fp16"), ("int8", "-int8"), ("int4", "-int4"))}
        assert size["fp32"] > size["fp16"] > size["int8"] > size["int4"], size
        shares = {p: _node(built, f"{arch}/llm-openvino{s}").metrics["weights"] for p, s in (("fp16", "-fp16"),
                                                                                  ("int8", "-int8"), ("int4", "-int4"))}
        assert shares["fp16"].get("f16", 0) > 0.9 and shares["int8"].get("u8", 0) > 0.9  # int8 asym: u8 with zero points
        assert shares["int4"].get("u4", 0) > 0.5  # the embeddings and the head stay u8
        for precision in ("int8", "int4"):
            check = _check(built, f"{arch}-ov{precision[3]}")
            assert check["passed"] is True, check.get("failures")
            assert check["outputs"]["tokens"]["token_agreement"]["observed"] >= 0.5  # the default floor


@pytest.mark.slow
@needs_ov_llm
def test_int4_under_its_token_agreement_tolerance_fails_the_build(built: tuple[Path, dict[str, float], Any]) -> None:
    # An untrained model's logits are near ties, so int4 noise flips greedy tokens; its target asks for all.
    check = _check(built, "untrained-ov4")
    tokens = check["outputs"]["tokens"]
    assert check["passed"] is False and tokens["token_agreement"]["observed"] < 1.0
    assert any(f.startswith("tokens: token_agreement") and "first divergence at token" in f for f in check["failures"])
    assert "verify:untrained-ov4" in [r.name for r in built[2].failed]
    assert not (built[0] / "artifacts" / "untrained-ov4").exists()


@pytest.mark.slow
@needs_ov_llm
def test_int4_whose_set_group_size_divides_no_layer_fails_plainly(built: tuple[Path, dict[str, float], Any]) -> None:
    failed = {r.name: r for r in built[2].failed}
    assert "llama/llm-openvino-int4" not in failed  # the group_size-32 node is another (its options differ)
    error = next(str(r.error) for name, r in failed.items() if name.startswith("llama/llm-openvino-int4"))
    assert "int4 group size 128 does not divide the input width (64" in error
    assert "set options.llm-openvino-int4.group_size to a divisor" in error
