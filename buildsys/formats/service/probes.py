"""Malformed requests a service must refuse with a 4xx: built from its signature, sent to a running server.

Each probe is one request a careless or hostile client could send: a body that is not JSON, not an
object, missing or unknown inputs, a wrong rank or a wrong fixed axis, ragged lists, strings where
numbers belong, fractions for an integer input, and a body over the service's size limit. A 5xx, a
2xx (the service ran what it should have refused) or no answer is a problem, and so is a server
that does not answer /health afterwards, or whose /metrics does not count the requests sent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from buildsys.formats.service.contract import HEALTH_PATH, METRICS_PATH, PREDICT_PATH

if TYPE_CHECKING:
    from buildsys.formats.service.server import ServiceProcess

JSON = {"Content-Type": "application/json"}
Probe = tuple[bytes, dict[str, str], int | None]  # body, headers, declared Content-Length (None: the body's)


def sample(spec: dict[str, Any], value: Any = None, batch: int = 1) -> Any:
    """A nested list of `batch` samples shaped like `spec` (dynamic axes: 1), every element `value`."""
    if value is None:
        value = False if spec["dtype"] == "bool" else 0.0 if spec["dtype"].startswith(("float", "bfloat")) else 0
    dims = [batch] + [d if isinstance(d, int) else 1 for d in spec["shape"][1:]]

    def build(rest: list[int]) -> Any:
        return [build(rest[1:]) for _ in range(rest[0])] if rest else value

    return build(dims)


def _body(inputs: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": inputs}).encode("utf-8")


def probes(signature: dict[str, Any]) -> dict[str, Probe]:
    """The malformed requests for this signature, by name."""
    specs = signature["inputs"]
    valid = {spec["name"]: sample(spec) for spec in specs}
    first = specs[0]
    name = first["name"]
    found: dict[str, Probe] = {
        "not_json": (b'{"inputs": {"' + name.encode() + b'": [[1, 2', JSON, None),
        "not_an_object": (b"[1, 2, 3]", JSON, None),
        "missing_input": (_body({}), JSON, None),
        "unknown_input": (_body({**valid, "not_an_input_of_this_model": [1]}), JSON, None),
        "wrong_rank": (_body({**valid, name: valid[name][0] if len(first["shape"]) > 1 else [valid[name]]}), JSON, None),
        "strings_for_numbers": (_body({**valid, name: sample(first, "x")}), JSON, None),
        "wrong_content_type": (_body(valid), {"Content-Type": "text/plain"}, None),
    }
    fixed = [a for a, d in enumerate(first["shape"]) if a > 0 and isinstance(d, int)]
    if fixed:  # one fixed axis one element longer
        shape = list(first["shape"])
        shape[fixed[-1]] += 1
        found["wrong_shape"] = (_body({**valid, name: sample({**first, "shape": shape})}), JSON, None)
    if len(first["shape"]) > 1:  # two samples, the second one element short along its second axis
        two = sample(first, batch=2)
        two[1] = two[1][:-1] if len(two[1]) > 1 else two[1] + two[1]
        found["ragged"] = (_body({**valid, name: two}), JSON, None)
    ints = [spec for spec in specs if spec["dtype"].startswith(("int", "uint"))]
    if ints:
        found["fraction_for_int"] = (_body({**valid, ints[0]["name"]: sample(ints[0], 0.5)}), JSON, None)
        found["out_of_range_int"] = (_body({**valid, ints[0]["name"]: sample(ints[0], 2**70)}), JSON, None)
    if len(specs) > 1 and specs[1]["shape"] and not isinstance(specs[1]["shape"][0], int):
        found["batch_mismatch"] = (_body({**valid, specs[1]["name"]: sample(specs[1], batch=2)}), JSON, None)
    limit = int(signature.get("max_body_bytes", 8 << 20))
    # A client announcing a body over the limit gets 413 before sending it, and one sending it gets 413 too.
    found["oversized_declared"] = (b"{}", JSON, limit + 1)
    big = _body(valid)
    found["oversized"] = (big[:-1] + b" " * (limit + 1 - len(big)) + big[-1:], JSON, None)
    return found


def probe(server: ServiceProcess, signature: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Send every probe; ({name: status or "no answer"}, problems)."""
    answers: dict[str, Any] = {}
    problems = []
    for name, (body, headers, declared) in probes(signature).items():
        try:
            status, reply = server.call("POST", PREDICT_PATH, body, headers, timeout=60.0, declared_length=declared)
        except OSError as exc:
            answers[name] = "no answer"
            problems.append(f"malformed request '{name}': no answer ({type(exc).__name__})"
                            + ("" if server.alive() else f"; the server died: {server.excerpt()}"))
            continue
        answers[name] = status
        if not 400 <= status < 500:
            what = "a server error" if status >= 500 else "success: it ran a request it should refuse"
            problems.append(f"malformed request '{name}' was answered {status} ({what}); a service must answer "
                            f"4xx: {reply[:200].decode(errors='replace')}")
    try:
        healthy = server.call("GET", HEALTH_PATH, timeout=10.0)[0] == 200
    except OSError:
        healthy = False
    answers["healthy_after"] = healthy
    if not healthy:
        problems.append(f"the service does not answer {HEALTH_PATH} after the malformed requests: {server.excerpt()}")
    elif all(isinstance(a, int) for a in answers.values()):
        answers["metrics"] = counted = predict_counts(server)
        sent = [a for name, a in answers.items() if name not in ("healthy_after", "metrics")]
        want = {"requests": len(sent), "errors": sum(1 for a in sent if a >= 400), "latency_observations": len(sent),
                "by_status": {str(a): sent.count(a) for a in sorted(set(sent))}}
        if counted != want:
            problems.append(f"{METRICS_PATH} does not count the {len(sent)} malformed requests sent to {PREDICT_PATH}: "
                            f"it says {counted}, the probes got {want}")
    return answers, problems


def scrape(server: ServiceProcess) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the service's /metrics: (name, labels, value); OSError when it does not answer 200,
    ValueError when it is not Prometheus' text format."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = server.call("GET", METRICS_PATH, timeout=10.0)
    if status != 200:
        raise OSError(f"{METRICS_PATH} answered {status}")
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(body.decode("utf-8")) for s in family.samples]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(v for n, got, v in samples if n == name and all(got.get(k) == w for k, w in labels.items()))


def predict_counts(server: ServiceProcess) -> dict[str, Any]:
    """What the service's /metrics counts of /predict: requests, errors, latency observations, requests
    by status; {"not_run": why} when /metrics cannot be read."""
    try:
        samples = scrape(server)
    except (OSError, ValueError) as exc:
        return {"not_run": f"{METRICS_PATH} could not be read: {exc}"}
    statuses = sorted({labels["status"] for n, labels, _ in samples if n == "modelbuild_requests_total"
                       and labels.get("path") == PREDICT_PATH}, key=int)
    return {"requests": int(total(samples, "modelbuild_requests_total", path=PREDICT_PATH)),
            "errors": int(total(samples, "modelbuild_request_errors_total", path=PREDICT_PATH)),
            "latency_observations": int(total(samples, "modelbuild_request_duration_seconds_count", path=PREDICT_PATH)),
            "by_status": {s: int(total(samples, "modelbuild_requests_total", path=PREDICT_PATH, status=s))
                          for s in statuses}}
