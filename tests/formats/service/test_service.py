"""The service format on tiny real models: the generated FastAPI app served by a real uvicorn on loopback,
checked over HTTP against the reference, malformed requests answered 4xx, and the Dockerfile linted."""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from buildsys.config.load import load
from buildsys.config.schema import Acceptance
from buildsys.errors import StepError
from buildsys.formats import formats, get_runtime, steps
from buildsys.formats.service import contract, service_app
from buildsys.formats.service.lint import lint_dockerfile
from buildsys.formats.service.probes import probes
from buildsys.formats.service.server import ServiceProcess
from buildsys.planning.expand import expand
from buildsys.nodes.verify import resolve_acceptance
from tests.conftest import REPO, make_tiny_project, out_of_reach
from tests.helpers.models import Tiny, torch_outputs, validation_feeds

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "dockerfile_parse")),
    reason="needs the service extra (fastapi, uvicorn, dockerfile-parse)")

MINE = ("service-from-onnx", "service-torchscript-from-torchscript")
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def cnn_service(cnn: Tiny, cnn_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn-service")
    cnn.run("service-from-onnx", out, input_path=cnn_onnx)
    return out / "service"


@pytest.fixture(scope="module")
def cnn_server(cnn_service: Path) -> Any:
    server = ServiceProcess.start(cnn_service)
    yield server
    server.stop()


def check(tiny: Tiny, out: Path, fmt: str, artifact: Path) -> dict:
    ref = out / "ref"
    tiny.run("reference", ref, extra={"source_format": "pytorch"})
    options = resolve_acceptance(Acceptance(), "fp32", tiny.model.outputs)
    return tiny.run("check", out / "check", input_path=artifact,
                    extra={"format": fmt, "reference": str(ref / "reference.npz")}, **options)


def post(server: ServiceProcess, payload: Any, **kwargs: Any) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, reply = server.call("POST", "/predict", body, kwargs.pop("headers", JSON), **kwargs)
    return status, json.loads(reply) if reply.startswith(b"{") else reply


# --- contract -------------------------------------------------------------------------------------


def test_steps_follow_the_contract_and_the_app_imports_nothing_at_discovery() -> None:
    for name in MINE:
        step = steps()[name]
        assert step.__doc__ and step.produces in formats() and all(c in formats() for c in step.consumes), name
        assert all(info.description for info in step.Options.model_fields.values()), name
        assert step.shipped_files == (contract.APP_SOURCE,)
    # A family groups precisions of one format; the TorchScript backend is a format of its own (as Triton's is).
    assert formats()["service-torchscript"].family == "service-torchscript"
    assert service_app.BODY_ENV == contract.BODY_ENV and service_app.SIGNATURE_FILE == contract.SIGNATURE_FILE
    # modelbuild imports every module of a family to discover it: the shipped app must cost nothing then.
    code = ("import sys, buildsys.formats.service.service_app, buildsys.formats.service.service; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'onnxruntime', 'torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_service_routes_from_onnx_and_torchscript(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", SERVICE_DEPLOY)
    routes = {t: r.words() for t, r in expand(load(project.config)).routes.items()}
    assert routes == {"api": ["pytorch", "onnx", "service"],
                      "api-ts": ["pytorch", "torchscript", "service-torchscript"]}


# --- the step -------------------------------------------------------------------------------------


def test_service_holds_app_signature_model_pinned_requirements_and_dockerfile(cnn_service: Path) -> None:
    assert sorted(p.name for p in cnn_service.iterdir()) == [
        "Dockerfile", "app.py", "model.onnx", "requirements.txt", "signature.json"]
    assert (cnn_service / "app.py").read_bytes() == contract.APP_SOURCE.read_bytes()
    signature = json.loads((cnn_service / "signature.json").read_text())
    assert signature["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert signature["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    assert signature["backend"] == "onnxruntime" and signature["max_body_bytes"] == 8_000_000
    from importlib import metadata

    pins = [line for line in (cnn_service / "requirements.txt").read_text().splitlines() if "==" in line]
    assert pins == [f"{p}=={metadata.version(p)}" for p in contract.SERVED_PACKAGES["onnxruntime"]]
    dockerfile = (cnn_service / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "USER 10001" in dockerfile and "EXPOSE 8000" in dockerfile
    assert lint_dockerfile(dockerfile, cnn_service, 8000) == []


def test_service_is_reproducible_and_options_reach_the_files(cnn: Tiny, cnn_onnx: Path, cnn_service: Path,
                                                             tmp_path: Path) -> None:
    cnn.run("service-from-onnx", tmp_path / "again", input_path=cnn_onnx)
    for path in cnn_service.iterdir():
        assert (tmp_path / "again/service" / path.name).read_bytes() == path.read_bytes(), path.name
    cnn.run("service-from-onnx", tmp_path / "opts", input_path=cnn_onnx, port=9000, max_body_mb=0.5,
            base_image="python:3.12-slim")
    out = tmp_path / "opts/service"
    assert json.loads((out / "signature.json").read_text())["max_body_bytes"] == 500_000
    assert "EXPOSE 9000" in (out / "Dockerfile").read_text() and "FROM python:3.12-slim" in (out / "Dockerfile").read_text()
    assert lint_dockerfile((out / "Dockerfile").read_text(), out, 9000) == []


def test_two_file_onnx_ships_its_side_file(cnn: Tiny, tmp_path: Path) -> None:
    cnn.run("onnx-from-pytorch", tmp_path / "onnx", dynamo=True, external_data=True)
    assert (tmp_path / "onnx/model.onnx.data").is_file()
    cnn.run("service-from-onnx", tmp_path / "svc", input_path=tmp_path / "onnx/model.onnx")
    out = tmp_path / "svc/service"
    assert (out / "model.onnx.data").is_file()
    assert "COPY app.py signature.json model.onnx model.onnx.data ./" in (out / "Dockerfile").read_text()
    assert check(cnn, tmp_path, "service", out)["passed"] is True


def test_docker_build_is_reported_not_run_without_a_daemon(cnn: Tiny, cnn_onnx: Path, tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False).returncode == 0:
        pytest.skip(out_of_reach("a Docker daemon answers here: the build would run (and need the base image)"))
    metrics = cnn.run("service-from-onnx", tmp_path, input_path=cnn_onnx, docker_build=True)
    assert metrics["docker_build"].startswith("not run: no Docker")
    assert "docker_build" not in cnn.run("service-from-onnx", tmp_path / "default", input_path=cnn_onnx)


# --- the check through uvicorn and HTTP -----------------------------------------------------------


def test_check_passes_through_uvicorn_and_http_with_every_probe_refused(cnn: Tiny, cnn_service: Path,
                                                                        tmp_path: Path) -> None:
    metrics = check(cnn, tmp_path, "service", cnn_service)
    assert metrics["passed"] is True and metrics["runtime"] == "service-http", metrics.get("failures")
    assert metrics["outputs"]["logits"]["max_abs"]["observed"] < 1e-5
    facts = metrics["structure"]["facts"]
    assert facts["dockerfile_lint"]["problems"] == [] and facts["app"] == "modelbuild's"
    probes_seen = facts["probes"]
    assert probes_seen.pop("healthy_after") is True
    # /metrics, scraped after the probes, counts every one of them (each a 4xx) and times each.
    counted = probes_seen.pop("metrics")
    sent = list(probes_seen.values())
    assert counted == {"requests": len(sent), "errors": len(sent), "latency_observations": len(sent),
                       "by_status": {str(s): sent.count(s) for s in sorted(set(sent))}}
    assert "findings" not in metrics  # the numeric session's requests and input statistics were counted too
    assert {"not_json", "wrong_rank", "wrong_shape", "ragged", "strings_for_numbers", "oversized"} <= set(probes_seen)
    assert all(400 <= status < 500 for status in probes_seen.values()), probes_seen
    assert probes_seen["oversized"] == probes_seen["oversized_declared"] == 413


def test_served_outputs_match_torch(cnn: Tiny, cnn_server: ServiceProcess) -> None:
    feeds = validation_feeds(cnn)
    status, reply = post(cnn_server, {"inputs": {"image": feeds["image"][:5].tolist()}})
    assert status == 200
    np.testing.assert_allclose(np.asarray(reply["outputs"]["logits"]), torch_outputs(cnn, {"image": feeds["image"][:5]})[0],
                               atol=1e-5)
    assert cnn_server.call("GET", "/health")[0] == 200
    assert json.loads(cnn_server.call("GET", "/signature")[1])["model"] == "cnn"
    assert "PredictRequest" in cnn_server.call("GET", "/openapi.json")[1].decode()


@pytest.mark.parametrize("payload, status, message", [
    (b'{"inputs": {"image": [[1, 2', 422, "json_invalid"),
    ({"inputs": {}}, 422, "missing"),
    ({"inputs": {"image": [[[[0.0] * 8] * 8]], "extra": [1]}}, 422, "extra_forbidden"),
    ({"inputs": {"image": [[[[0.0] * 8] * 7]]}}, 422, "axis 2 is 7, not 8"),
    ({"inputs": {"image": [[[[0.0] * 8] * 8], [[[0.0] * 8] * 7]]}}, 422, "not a rectangular array"),
    ({"inputs": {"image": [[[["a"] * 8] * 8]]}}, 422, "float_type"),
    ({"inputs": {"image": [[[[True] * 8] * 8]]}}, 422, "float_type"),
    ({"inputs": {"image": [[[0.0] * 8] * 8]}}, 422, "list_type"),  # one sample without its batch axis
    ({"inputs": {"image": []}}, 422, "rank 1"),
])
def test_malformed_requests_get_4xx(cnn_server: ServiceProcess, payload: Any, status: int, message: str) -> None:
    got, reply = post(cnn_server, payload)
    assert got == status and message in json.dumps(reply), reply
    assert cnn_server.alive()


def test_a_large_malformed_request_gets_a_short_reply(cnn_server: ServiceProcess) -> None:
    status, reply = post(cnn_server, {"inputs": {"image": [[[["x"] * 8] * 8]] * 64}})
    assert status == 422 and reply["errors"] == 64 * 64 and len(reply["detail"]) == 5
    assert reply["detail"][0] == {"type": "float_type", "loc": ["body", "inputs", "image", 0, 0, 0, 0],
                                  "msg": "Input should be a valid number"}


def test_metrics_count_requests_errors_latency_and_input_statistics(cnn: Tiny, cnn_service: Path) -> None:
    from buildsys.formats.service.probes import predict_counts, scrape, total

    images = validation_feeds(cnn)["image"][:7]
    server = ServiceProcess.start(cnn_service)
    try:
        for part in (images[:3], images[3:]):
            assert post(server, {"inputs": {"image": part.tolist()}})[0] == 200
        assert post(server, {"inputs": {}})[0] == 422
        assert post(server, b'{"inputs": {"image": [[1, 2')[0] == 422
        status, text = server.call("GET", "/metrics")
        samples = scrape(server)
        counted = predict_counts(server)
    finally:
        server.stop()
    assert status == 200 and b"# TYPE modelbuild_request_duration_seconds histogram" in text
    assert counted == {"requests": 4, "errors": 2, "latency_observations": 4, "by_status": {"200": 2, "422": 2}}
    assert total(samples, "modelbuild_request_errors_total", path="/predict", status="422") == 2
    assert total(samples, "modelbuild_requests_total", path="/metrics") == 1  # the first scrape, counted by the second
    values = images.astype(np.float64)
    assert total(samples, "modelbuild_input_samples_total", input="image") == 7  # refused requests add nothing
    for stat, want in (("mean", values.mean()), ("std", values.std()), ("min", values.min()), ("max", values.max())):
        assert total(samples, f"modelbuild_input_{stat}", input="image") == pytest.approx(want, rel=1e-9, abs=1e-12), stat


def test_an_app_whose_metrics_miscount_fails_its_check(cnn: Tiny, cnn_service: Path, tmp_path: Path) -> None:
    broken = tmp_path / "service"
    shutil.copytree(cnn_service, broken)
    app = (broken / "app.py").read_text()
    counting = 'm.requests.labels(path, scope.get("method", ""), str(status)).inc()'
    assert counting in app
    (broken / "app.py").write_text(app.replace(counting, counting.replace(".inc()", ".inc(0)")))
    metrics = check(cnn, tmp_path, "service", broken)
    assert metrics["passed"] is False
    assert any(f.startswith("/metrics does not count the ") for f in metrics["failures"]), metrics["failures"]
    assert any("/metrics does not count what was sent: requests 0" in f["text"] for f in metrics["findings"])


def test_oversized_bodies_get_413_declared_chunked_or_whole(cnn_service: Path) -> None:
    server = ServiceProcess.start(cnn_service, env={contract.BODY_ENV: "2000"})
    try:
        small = {"inputs": {"image": [[[[0.5] * 8] * 8]]}}
        assert post(server, small)[0] == 200  # ~400 bytes
        big = {"inputs": {"image": [[[[0.5] * 8] * 8]] * 10}}
        status, reply = post(server, big)
        assert status == 413 and contract.BODY_ENV in reply["detail"]
        assert post(server, b"{}", declared_length=10**9)[0] == 413
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # no Content-Length: counted
        conn.request("POST", "/predict", body=iter([json.dumps(big).encode()[:1500]] * 2), headers=JSON,
                     encode_chunked=True)
        assert conn.getresponse().status == 413
        conn.close()
        assert server.call("GET", "/health")[0] == 200
    finally:
        server.stop()


def test_integer_inputs_refuse_fractions_and_out_of_range_values(tmp_path: Path) -> None:
    """A hand-made service whose ONNX model takes int64 ids and float weights (y = float(ids) * w)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["f", "w"], ["y"])],
        "ints", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 3]),
                 helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "model.onnx")
    signature = {"model": "ints", "backend": "onnxruntime", "model_file": "model.onnx", "max_body_bytes": 100_000,
                 "inputs": [{"name": "ids", "dtype": "int64", "shape": ["n", 3]},
                            {"name": "w", "dtype": "float32", "shape": ["n", 3]}],
                 "outputs": [{"name": "y", "dtype": "float32", "shape": ["n", 3]}]}
    (tmp_path / "signature.json").write_text(json.dumps(signature))
    shutil.copyfile(contract.APP_SOURCE, tmp_path / "app.py")
    server = ServiceProcess.start(tmp_path)
    try:
        status, reply = post(server, {"inputs": {"ids": [[1, 2, 3]], "w": [[0.5, 1, 2]]}})
        assert status == 200 and reply == {"outputs": {"y": [[0.5, 2.0, 6.0]]}}
        assert post(server, {"inputs": {"ids": [[1, 2.5, 3]], "w": [[1, 1, 1]]}})[0] == 422
        assert post(server, {"inputs": {"ids": [[1, 2, 2**70]], "w": [[1, 1, 1]]}})[0] == 422
        status, reply = post(server, {"inputs": {"ids": [[1, 2, 3]], "w": [[1, 1, 1], [1, 1, 1]]}})
        assert status == 422 and "different numbers of samples" in reply["detail"]
        answers = {name: post(server, body, headers=headers, declared_length=declared)[0]
                   for name, (body, headers, declared) in probes(signature).items()}
        assert {"fraction_for_int", "out_of_range_int", "batch_mismatch"} <= set(answers)
        assert all(400 <= s < 500 for s in answers.values()), answers
    finally:
        server.stop()


# --- broken artifacts fail their check ------------------------------------------------------------


def test_perturbed_model_fails_its_check(cnn: Tiny, cnn_service: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    broken = tmp_path / "service"
    shutil.copytree(cnn_service, broken)
    proto = onnx.load(str(broken / "model.onnx"))
    weight = proto.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(proto, str(broken / "model.onnx"))
    metrics = check(cnn, tmp_path, "service", broken)
    assert metrics["passed"] is False and any(f.startswith("logits:") for f in metrics["failures"])


def test_an_app_answering_500_to_malformed_requests_fails_its_check(cnn: Tiny, cnn_service: Path,
                                                                    tmp_path: Path) -> None:
    broken = tmp_path / "service"
    shutil.copytree(cnn_service, broken)
    app = (broken / "app.py").read_text()
    assert 'raise Refused(422, f"input \'{name}\' has shape' in app
    (broken / "app.py").write_text(app.replace('raise Refused(422, f"input \'{name}\' has shape',
                                               'raise RuntimeError(f"input \'{name}\' has shape'))
    metrics = check(cnn, tmp_path, "service", broken)
    assert metrics["passed"] is False and metrics["structure"]["facts"]["app"] == "modified"
    assert any("'wrong_shape' was answered 500 (a server error)" in f for f in metrics["failures"]), metrics["failures"]


def test_an_app_that_does_not_start_fails_with_its_log(cnn: Tiny, cnn_service: Path, tmp_path: Path) -> None:
    broken = tmp_path / "service"
    shutil.copytree(cnn_service, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(StepError, match="service did not come up on 127.0.0.1:.*(InvalidProtobuf|INVALID_PROTOBUF)"):
        check(cnn, tmp_path, "service", broken)


def test_static_problems_fail_without_a_server(cnn: Tiny, cnn_service: Path, tmp_path: Path) -> None:
    runtime = get_runtime("service-http")
    broken = tmp_path / "service"
    shutil.copytree(cnn_service, broken)
    (broken / "requirements.txt").write_text("fastapi>=0.100\nnumpy\n")
    text = (broken / "Dockerfile").read_text().replace("USER 10001", "USER root")
    (broken / "Dockerfile").write_text(text)
    found = runtime.inspect(broken, cnn.model, "service")
    assert found is not None
    assert "requirements.txt: 'fastapi>=0.100' does not pin an exact version (name==version)" in found["problems"]
    assert "Dockerfile lint: the image must switch to a non-root USER" in found["problems"]
    assert found["facts"]["probes"] == {"not_run": "the service's files have problems"}
    (broken / "signature.json").write_text(json.dumps({"inputs": [{"name": "pixels"}], "outputs": []}))
    assert runtime.inspect(broken, cnn.model, "service")["problems"] == [
        "the service's signature.json has inputs ['pixels'], deploy.yaml's signature ['image']"]


def test_runtime_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert get_runtime("service-http").unavailable() == (
        "uvicorn is not installed (pip install -c constraints.txt 'modelbuild[service]')")


# --- Dockerfile lint ------------------------------------------------------------------------------


@pytest.mark.parametrize("change, problem", [
    (("FROM python:3.11-slim", "FROM python"), "FROM 'python' has no pinned tag"),
    (("FROM python:3.11-slim", "FROM python:latest"), "[DL3006, DL3007]"),
    (("USER 10001\n", ""), "the image must switch to a non-root USER"),
    (("USER 10001", "USER 0"), "the image must switch to a non-root USER"),
    (("pip install --no-cache-dir", "pip install"), "[DL3042]"),
    (('CMD ["uvicorn", "app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]',
      "CMD uvicorn app:create_app --factory"), "[DL3025]"),
    (("EXPOSE 8000", "EXPOSE 9000"), "EXPOSE does not name the service's port 8000"),
    (("/health", "/ready"), "no HEALTHCHECK probing /health"),
    (("COPY app.py", "COPY app.py handler.py"), "COPY names handler.py, which the build context does not hold"),
    (("WORKDIR /srv/service", "WORKDIR srv"), "[DL3000]"),
    (("COPY requirements.txt ./", "ADD requirements.txt ./"), "[DL3020]"),
])
def test_dockerfile_lint_names_each_problem(cnn_service: Path, change: tuple[str, str], problem: str) -> None:
    text = (cnn_service / "Dockerfile").read_text()
    assert change[0] in text
    found = lint_dockerfile(text.replace(change[0], change[1]), cnn_service, 8000)
    assert any(problem in p for p in found), found


# --- TorchScript variant and the end-to-end build -------------------------------------------------


@pytest.mark.slow
def test_torchscript_service_two_outputs_passes_its_check(two: Tiny, tmp_path: Path) -> None:
    two.run("torchscript-from-pytorch", tmp_path / "ts")
    metrics = two.run("service-torchscript-from-torchscript", tmp_path / "svc", input_path=tmp_path / "ts/model.pt")
    out = tmp_path / "svc/service"
    assert (out / "model.pt").is_file() and any(r.startswith("torch==") for r in metrics["requirements"])
    signature = json.loads((out / "signature.json").read_text())
    assert [o["name"] for o in signature["outputs"]] == ["scores", "box"]
    assert [o["shape"] for o in signature["outputs"]] == [["batch", 3], ["batch", 2]]
    result = check(two, tmp_path, "service-torchscript", out)
    assert result["passed"] is True and result["runtime"] == "service-http-torchscript", result.get("failures")


SERVICE_DEPLOY = """\
models:
  tiny:
    source: {factory: "tinynet:build", weights: tiny.pt}
    inputs: [{name: x, shape: [batch, 4]}]
    outputs: [{name: y, kind: scores}]
    data: {calibration: calib.npz, validation: val.npz}
targets:
  api: {model: tiny, format: service, options: {service: {max_body_mb: 2}}}
  api-ts: {model: tiny, format: service-torchscript}
"""


@pytest.mark.slow
def test_build_service_targets_end_to_end(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "proj", SERVICE_DEPLOY)
    out = project.run("build", "api", "api-ts").stdout
    assert out.count("passed") == 2, out
    artifacts = project.root / "artifacts"
    assert (artifacts / "api/service/app.py").read_bytes() == contract.APP_SOURCE.read_bytes()
    assert json.loads((artifacts / "api/service/signature.json").read_text())["max_body_bytes"] == 2_000_000
    assert (artifacts / "api-ts/service/model.pt").is_file()
    assert "Nothing to do" in project.run("build", "api", "api-ts").stdout
