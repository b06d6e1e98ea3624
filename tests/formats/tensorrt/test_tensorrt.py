"""TensorRT engines: options and profiles, keys bound to the GPU, a host without one, the Triton plan layout,
the int8 QDQ model; and, marked `gpu`, engines built and checked on a GPU (skipped elsewhere)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from buildsys.storage import keys
from buildsys.config.schema import Acceptance
from buildsys.errors import StepError
from buildsys.formats import get_runtime, get_step
from buildsys.formats.tensorrt import profiles
from buildsys.formats.tensorrt.profiles import EngineOptions, input_profiles, read_profile, write_profile
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import DEPLOY, make_tiny_project, out_of_reach
from tests.helpers.models import Tiny

H100 = keys.NvidiaGpu("NVIDIA H100 80GB HBM3", "9.0")
A100 = keys.NvidiaGpu("NVIDIA A100-SXM4-80GB", "8.0")
GPU_DEPLOY = DEPLOY + """\
  gpu:
    model: tiny
    format: tensorrt
  gpu-triton:
    model: tiny
    format: triton-tensorrt
"""


def _host_without_gpu() -> dict[str, str]:
    # CUDA's own switch: an empty CUDA_VISIBLE_DEVICES hides every GPU, so these tests hold on GPU hosts too.
    return {"CUDA_VISIBLE_DEVICES": ""}


def _simulate(monkeypatch: pytest.MonkeyPatch, gpu: keys.NvidiaGpu | None, tensorrt: str = "10.13.3") -> None:
    """A test double of the host: what nvidia-smi and the package metadata would say."""
    monkeypatch.setattr(keys, "nvidia_gpu", lambda: gpu)
    monkeypatch.setattr(profiles, "tensorrt_version", lambda: tensorrt)


NO_GPU_HERE = profiles.gpu_requirement()  # "needs an NVIDIA GPU (found none)" here; None on a GPU host with TensorRT
needs_gpu = pytest.mark.skipif(NO_GPU_HERE is not None, reason=out_of_reach(NO_GPU_HERE or ""))


# --- options and profiles -----------------------------------------------------------------------


def test_batch_range_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="min_batch 8 is larger than max_batch 4"):
        EngineOptions(min_batch=8, max_batch=4)
    with pytest.raises(ValidationError, match="opt_batch 32 is larger than max_batch 16"):
        EngineOptions(opt_batch=32, max_batch=16)
    with pytest.raises(ValidationError, match=r"axes.seq: \[4, 2, 8\] should be \[min, opt, max\]"):
        EngineOptions(axes={"seq": [4, 2, 8]})


def test_profiles_come_from_the_declared_shapes(cnn: Tiny) -> None:
    assert input_profiles(cnn.model, EngineOptions()) == {
        "image": {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [64, 1, 8, 8]}}
    assert input_profiles(cnn.model, EngineOptions(max_batch=4))["image"]["opt"] == [4, 1, 8, 8]
    assert input_profiles(cnn.model, EngineOptions(min_batch=16))["image"] == {
        "min": [16, 1, 8, 8], "opt": [16, 1, 8, 8], "max": [64, 1, 8, 8]}
    seq = cnn.with_model(inputs=[{"name": "tokens", "shape": ["batch", "seq"], "dtype": "int64"}])
    shapes = input_profiles(seq.model, EngineOptions(max_batch=2, axes={"seq": [1, 16, 128]}))
    assert shapes == {"tokens": {"min": [1, 1], "opt": [2, 16], "max": [2, 128]}}


@pytest.mark.parametrize(("inputs", "options", "message"), [
    ([{"name": "tokens", "shape": ["batch", "seq"]}], {},
     r"input 'tokens' axis 1 \('seq'\) is dynamic: give its range in the options, e.g. axes: \{seq: \[1, 64, 256\]\}"),
    ([{"name": "x", "shape": [1, 4]}], {"max_batch": 8},
     "min_batch/opt_batch/max_batch need a dynamic first axis shared by every input, but the first axes are x: 1"),
    ([{"name": "a", "shape": ["batch", 4]}, {"name": "b", "shape": ["n", 4]}], {"min_batch": 2},
     "need a dynamic first axis shared by every input"),
    ([{"name": "x", "shape": ["batch", 4]}], {"axes": {"sequence": [1, 2, 3]}},
     "axes.sequence: the signature has no dynamic axis 'sequence'"),
    ([{"name": "x", "shape": ["batch", 4]}], {"axes": {"batch": [1, 2, 3]}},
     "axes.batch: 'batch' is the batch axis; set min_batch/opt_batch/max_batch instead"),
])
def test_plan_time_errors_name_the_input_and_the_fix(mlp: Tiny, inputs: list, options: dict, message: str) -> None:
    model = mlp.with_model(inputs=inputs).model
    step = get_step("tensorrt-from-onnx")
    problem = step.check_config(model, step.Options.model_validate(options), mlp.root)
    assert problem is not None
    assert __import__("re").search(message, problem), problem


def test_int8_needs_calibration_data_and_triton_needs_a_gpu_instance(mlp: Tiny) -> None:
    int8 = get_step("tensorrt-int8-from-onnx")
    bare = mlp.with_model(data={}).model
    assert "needs calibration data" in (int8.check_config(bare, int8.Options(), mlp.root) or "")
    assert int8.check_config(mlp.model, int8.Options(), mlp.root) is None
    assert int8.data_used(int8.Options()) == ("calibration",)
    triton = get_step("triton-tensorrt-from-tensorrt")
    problem = triton.check_config(mlp.model, triton.Options(instance_kind="KIND_CPU"), mlp.root)
    assert problem and "KIND_CPU cannot serve a TensorRT plan" in problem


# --- keys: an engine is bound to its GPU and TensorRT ---------------------------------------------


def _keyed(root: Path, name: str) -> tuple[str, dict]:
    """The node's plan status, and its components keyed with fixed upstream digests (as once built)."""
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project

    project = open_project(str(root / "deploy.yaml"))
    plan = make_plan(project.planner, PlanRequest())
    node = plan.dag.nodes[name]
    return plan.nodes[name].action, project.planner.components(node, {d: "0" * 64 for d in node.deps})


def test_engine_key_names_gpu_compute_capability_and_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_tiny_project(tmp_path / "proj", GPU_DEPLOY)
    _simulate(monkeypatch, H100, "10.13.3")
    action, engine = _keyed(project.root, "tiny/tensorrt")
    assert action == "run"  # a host with a GPU and TensorRT: ordinary work
    assert engine["device"] == {"gpu": H100.name, "compute_capability": "9.0", "tensorrt": "10.13.3"}
    onnx = _keyed(project.root, "tiny/onnx")[1]
    assert "device" not in onnx  # portable artifacts stay host-free

    _simulate(monkeypatch, A100, "10.14.1")
    other = _keyed(project.root, "tiny/tensorrt")[1]
    assert keys.action_key(other) != keys.action_key(engine)
    assert keys.action_key(_keyed(project.root, "tiny/onnx")[1]) == keys.action_key(onnx)
    reasons = keys.explain(engine, other)
    assert f"gpu {H100.name}→{A100.name}" in reasons
    assert "compute_capability 9.0→8.0" in reasons and "tensorrt 10.13.3→10.14.1" in reasons

    _simulate(monkeypatch, H100, "not installed")  # a GPU but no TensorRT: blocked, and says how to install
    from buildsys.planning.plan import PlanRequest, plan as make_plan
    from buildsys.planning.project import open_project

    blocked = make_plan(open_project(str(project.config)).planner, PlanRequest()).nodes["tiny/tensorrt"]
    assert (blocked.state, blocked.action) == ("blocked", "fail")
    assert blocked.reasons[0].startswith("needs TensorRT (the tensorrt package")


def test_nvidia_smi_probe_reads_the_visible_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in nvidia-smi on PATH (the environment, not modelbuild's code) answering like the real one.
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, GPU-aaaa, NVIDIA A100-SXM4-80GB, 8.0'\necho '1, GPU-bbbb, NVIDIA H100 80GB HBM3, 9.0'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    probe = keys.nvidia_gpu.__wrapped__  # uncached
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert probe() == A100
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert probe() == H100
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert probe() is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert probe() is None  # no driver: no GPU, no error


# --- a host without a GPU ---------------------------------------------------------------------------


def test_plan_lists_engines_as_blocked_on_a_host_without_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_tiny_project(tmp_path / "proj", GPU_DEPLOY)
    for name, value in _host_without_gpu().items():
        monkeypatch.setenv(name, value)
    out = project.run("plan").stdout
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["tiny/tensorrt"].split()[0] == "blocked"
    assert lines["tiny/tensorrt"].endswith("needs an NVIDIA GPU (found none)")
    for downstream in ("tiny/triton-tensorrt", "verify:gpu", "verify:gpu-triton"):
        assert lines[downstream].split()[0] == "blocked"
        assert lines[downstream].endswith("upstream tiny/tensorrt: needs an NVIDIA GPU (found none)")
    assert lines["tiny/onnx"].split()[0] == "stale"
    assert "4 node(s) cannot be built on this host" in out
    data = json.loads(project.run("plan", "--json").stdout)
    assert data["blocked"] == 4
    engine = next(n for n in data["nodes"] if n["node"] == "tiny/tensorrt")
    assert engine["state"] == "blocked" and engine["action"] == "fail" and engine["key"] is None


@pytest.mark.slow
def test_build_fails_an_engine_target_at_once_and_builds_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_tiny_project(tmp_path / "proj", GPU_DEPLOY)
    for name, value in _host_without_gpu().items():
        monkeypatch.setenv(name, value)
    alone = project.run("build", "gpu", check=False)
    assert alone.returncode == 1
    assert "✗ tiny/tensorrt (target gpu): needs an NVIDIA GPU (found none)" in alone.stdout
    assert "only needed by tiny/tensorrt, which this host cannot build" in alone.stdout
    assert project.factory_calls() == 0  # nothing ran: not even the ONNX export the engine would need
    assert not (project.root / "deploy.lock").exists() or "tiny/onnx" not in (project.root / "deploy.lock").read_text()

    everything = project.run("build", check=False)
    assert everything.returncode == 1
    assert "needs an NVIDIA GPU (found none)" in everything.stdout
    assert "build failed: 1 node(s) failed, 3 skipped" in everything.stderr
    assert {p.name for p in (project.root / "artifacts").iterdir()} == {"ts", "server", "int8"}
    logs = [p.name for p in (project.root / ".modelbuild" / "logs").glob("*.log")]
    assert logs and not [name for name in logs if "tensorrt" in name or "gpu" in name]  # no step was started
    lock = json.loads((project.root / "deploy.lock").read_text())
    assert "tiny/onnx" in lock["nodes"] and "tiny/tensorrt" not in lock["nodes"]


# --- the Triton layout (no GPU: config from profile.json, the engine only copied) ----------------


def _engine_dir(tiny: Tiny, onnx_path: Path, out: Path, **options: object) -> Path:
    """profile.json written by the engine step's own code from a real ONNX model, and a stand-in
    model.plan: the layout step copies the engine and never reads it."""
    step = get_step("tensorrt-from-onnx")()
    ctx = tiny.ctx(out, options, step="tensorrt-from-onnx", input_path=onnx_path)
    write_profile(out, step.profile_for(ctx, onnx_path))
    (out / "model.plan").write_bytes(b"stand-in engine: laid out, never deserialized by this test")
    return out / "model.plan"


def test_profile_json_records_the_engine_io(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    _engine_dir(cnn, cnn_onnx, tmp_path, max_batch=16)
    profile = read_profile(tmp_path)
    assert profile["inputs"] == [{"name": "image", "dtype": "float32", "shape": [None, 1, 8, 8],
                                  "min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [16, 1, 8, 8]}]
    assert profile["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [None, 10]}]
    assert profile["batch"] == {"min": 1, "opt": 8, "max": 16} and profile["precision"] == "fp32"
    assert set(profile["device"]) == {"gpu", "compute_capability", "tensorrt"}


def test_triton_tensorrt_layout_holds_the_plan_and_reads_back(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    from google.protobuf import text_format

    from buildsys.formats.serving.pbtxt import model_config_class
    from buildsys.formats.serving.repository import read_config

    plan = _engine_dir(cnn, cnn_onnx, tmp_path / "engine", max_batch=4)
    metrics = cnn.run("triton-tensorrt-from-tensorrt", tmp_path / "repo", input_path=plan, version=3)
    model_dir = tmp_path / "repo" / "model_repository" / "cnn"
    assert (model_dir / "3" / "model.plan").read_bytes() == plan.read_bytes()
    assert metrics["files"] == ["cnn/3/model.plan", "cnn/config.pbtxt"]
    config = read_config(model_dir)
    assert config["platform"] == "tensorrt_plan" and "backend" not in config
    assert config["max_batch_size"] == 4  # Triton's default 8, capped at the engine's profile
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["instance_group"] == [{"count": 1}] and "dynamic_batching" in config  # KIND_AUTO: the default
    parsed = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_class()())
    assert parsed.platform == "tensorrt_plan" and parsed.max_batch_size == 4
    assert list(parsed.input[0].dims) == [1, 8, 8] and list(parsed.output[0].dims) == [10]
    assert parsed.HasField("dynamic_batching")
    inspected = get_runtime("triton-tensorrt-layout").inspect(tmp_path / "repo" / "model_repository", cnn.model,
                                                              "triton-tensorrt")
    assert inspected and inspected["problems"] == [] and inspected["facts"]["version"] == 3


def test_triton_tensorrt_refuses_a_batch_beyond_the_engine_profile(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    plan = _engine_dir(cnn, cnn_onnx, tmp_path / "engine", max_batch=4)
    with pytest.raises(StepError, match="max_batch_size 16 exceeds the engine's optimization profile"):
        cnn.run("triton-tensorrt-from-tensorrt", tmp_path / "repo", input_path=plan, max_batch_size=16)
    unbatched = cnn.run("triton-tensorrt-from-tensorrt", tmp_path / "repo0", input_path=plan, max_batch_size=0)
    assert unbatched["max_batch_size"] == 0


def test_layout_runtime_rejects_a_repository_of_another_backend(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    cnn.run("triton-from-onnx", tmp_path, input_path=cnn_onnx)
    inspected = get_runtime("triton-tensorrt-layout").inspect(tmp_path / "model_repository", cnn.model, "triton-tensorrt")
    assert inspected and "not the TensorRT backend" in inspected["problems"][0]


# --- int8: explicit quantization, on the CPU ---------------------------------------------------------


def test_int8_qdq_model_is_symmetric_int8_and_close_to_float(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from buildsys.config.data import eval_batch
    from buildsys.formats.tensorrt.qdq import qdq_problems, quantize_for_tensorrt

    calibration = cnn.ctx(tmp_path).data("calibration")
    assert calibration is not None
    out = tmp_path / "qdq.onnx"
    metrics = quantize_for_tensorrt(cnn_onnx, out, calibration, per_channel=True, work=tmp_path)
    assert qdq_problems(out) == [] and metrics["quantize_linear"] > 0 and metrics["calibration_samples"] == 32
    feeds = eval_batch(cnn.model, cnn.root).inputs
    # Q/DQ executed as written (dequantize, float op, quantize): the arithmetic TensorRT's int8 kernels
    # do. ORT's default fusion into QLinearConv would run its x86 int8 kernels instead, which saturate on
    # CPUs without VNNI and say nothing about the model TensorRT gets.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = {p: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
           for p in (cnn_onnx, out)}
    agreement = float(np.mean(run[cnn_onnx].argmax(1) == run[out].argmax(1)))
    assert agreement >= 0.9, agreement

    # ONNX Runtime's own default int8 (dynamic) is what TensorRT would reject, and the check says so.
    cnn.run("onnx-int8-from-onnx", tmp_path / "dynamic", input_path=cnn_onnx)
    assert any("is not explicit QDQ quantization" in p for p in qdq_problems(tmp_path / "dynamic" / "model.onnx"))


# --- the runtime -------------------------------------------------------------------------------------


def test_runtime_says_why_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    _simulate(monkeypatch, None)
    assert get_runtime("tensorrt").unavailable() == "needs an NVIDIA GPU (found none)"
    assert get_runtime("triton-tensorrt-layout").unavailable() == "needs an NVIDIA GPU (found none)"
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        _simulate(monkeypatch, H100)
        assert (get_runtime("tensorrt").unavailable() or "").startswith("tensorrt not installed")


# --- on a GPU (pytest -m gpu) --------------------------------------------------------------------------


def _check(tiny: Tiny, out: Path, fmt: str, artifact: Path, reference: Path, precision: str) -> dict:
    options = resolve_acceptance(Acceptance(), precision, tiny.model.outputs)
    return tiny.run("check", out, input_path=artifact, precision=precision,
                    extra={"format": fmt, "reference": str(reference)}, **options)


@pytest.mark.parametrize(("precision", "route"), [
    ("fp32", ["tensorrt-from-onnx"]),
    ("fp16", ["onnx-fp16-from-onnx", "tensorrt-fp16-from-onnx-fp16"]),
    ("int8", ["tensorrt-int8-from-onnx"]),
])
@pytest.mark.gpu
@needs_gpu
def test_engine_builds_runs_and_passes_its_check(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path, tmp_path: Path,
                                                 precision: str, route: list[str]) -> None:
    src = cnn_onnx
    for i, step in enumerate(route):
        metrics = cnn.run(step, tmp_path / str(i), input_path=src, precision=precision)
        src = tmp_path / str(i) / ("model.plan" if step.startswith("tensorrt") else "model.onnx")
    assert metrics["device"]["gpu"] == keys.nvidia_gpu().name  # type: ignore[union-attr]
    fmt = "tensorrt" if precision == "fp32" else f"tensorrt-{precision}"
    report = _check(cnn, tmp_path / "check", fmt, src, cnn_reference, precision)
    assert report["passed"] is True, report
    with get_runtime("tensorrt").load(src, cnn.model, cnn.root) as session:
        assert session.max_batch == 64
        one = session.run({"image": np.zeros((1, 1, 8, 8), "float32")})
        assert one[0].shape == (1, 10)
        with pytest.raises(StepError, match="outside the engine's optimization profile"):
            session.run({"image": np.zeros((65, 1, 8, 8), "float32")})


@pytest.mark.gpu
@needs_gpu
def test_triton_tensorrt_repository_runs_the_engine(cnn: Tiny, cnn_onnx: Path, cnn_reference: Path,
                                                    tmp_path: Path) -> None:
    cnn.run("tensorrt-from-onnx", tmp_path / "engine", input_path=cnn_onnx, max_batch=16)
    cnn.run("triton-tensorrt-from-tensorrt", tmp_path / "repo", input_path=tmp_path / "engine" / "model.plan")
    report = _check(cnn, tmp_path / "check", "triton-tensorrt", tmp_path / "repo" / "model_repository",
                    cnn_reference, "fp32")
    assert report["passed"] is True, report
