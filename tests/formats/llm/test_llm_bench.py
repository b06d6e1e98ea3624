"""`modelbuild bench` on text-generation targets: time to first token, decode tokens/s and peak memory of
the artifact in its runtime, beside PyTorch eager with transformers' KV cache (docs/llm.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.llm import make_project

    root = tmp_path_factory.mktemp("llm-bench")
    make_project(root, archs=("llama",), steps=30)
    text = (root / "deploy.yaml").read_text().replace("targets: {}\n", "targets:\n  lm-onnx: {model: llama, format: llm-onnx}\n")
    (root / "deploy.yaml").write_text(text)
    return root


@pytest.mark.slow  # with the module's project: training, export, reference, check and bench (45-95 s)
def test_bench_reports_ttft_decode_rate_and_memory_of_an_llm_onnx_target(project: Path) -> None:
    import modelbuild
    from buildsys.storage.lock import Lock

    report = modelbuild.load(project / "deploy.yaml").bench(["lm-onnx"])
    assert report.ok
    m = Lock.read(project / "deploy.lock").as_dict()["nodes"]["bench:lm-onnx"]["metrics"]
    assert (m["task"], m["format"], m["runtime"], m["passed"]) == ("text-generation", "llm-onnx", "llm-onnxruntime", None)
    assert "not_run" not in m
    for part, runtime in ((m["artifact"], "llm-onnxruntime"), (m["eager"], "torch-eager (transformers KV cache)")):
        assert part["runtime"] == runtime
        assert 0 < part["ttft_ms"] <= part["ttft_p95_ms"]
        assert 0 < part["decode_tokens_per_s_p5"] <= part["decode_tokens_per_s"]
        assert part["new_tokens"] == 12 and part["prompts"] >= 4 and part["runs"] >= 30
        assert part["samples"] == part["runs"] * part["prompts"]  # one TTFT per prompt per timed pass
        assert part["load_ms"] > 0 and part["peak_rss_mb"] is not None and part["peak_rss_mb"] >= 0
        assert part["rss_method"] in ("kernel peak (VmHWM)", "sampled RSS")
    assert m["eager"]["threads"] == 1  # eager generation runs one torch thread unless bench threads say otherwise
    assert m["decode_speedup_vs_eager"] > 0 and m["ttft_speedup_vs_eager"] > 0


def test_latency_budgets_of_tensor_models_are_refused_on_a_generation_target(project: Path, tmp_path: Path) -> None:
    from buildsys.errors import StepError

    with pytest.raises(StepError, match="no speed budget yet"):
        _run_step(project, tmp_path, "llm-onnx", project / "artifacts" / "lm-onnx" / "model.onnx", p50_ms=5.0)


def test_llm_coreml_off_macos_is_not_run_and_the_interpreter_is_not_timed(project: Path, tmp_path: Path) -> None:
    import sys

    if sys.platform == "darwin":
        pytest.skip("Core ML runs here")
    m = _run_step(project, tmp_path, "llm-coreml", tmp_path / "absent.mlpackage")
    assert m["passed"] is None and m["not_run"].startswith("Core ML execution needs macOS")
    assert "artifact" not in m  # the MIL interpreter's NumPy speed is not reported as Core ML's


def _run_step(project: Path, out: Path, fmt: str, artifact: Path, **options: object) -> dict:
    from buildsys.config.load import load
    from buildsys.formats import get_step
    from buildsys.formats.base import StepContext

    model = load(project / "deploy.yaml").project.models["llama"]
    ctx = StepContext(model_name="llama", model=model, root=project, input_path=artifact, out_dir=out,
                      options=get_step("bench").Options(**options), precision="fp32",
                      extra={"format": fmt,  # both cases stop before the reference is read
                              "reference": str(out / "unused.npz")})
    return get_step("bench")().run(ctx)
