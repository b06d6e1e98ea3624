"""`prefer: latency | size | accuracy` (planning/prefer.py): a target builds and checks its other plain routes,
ships the best under its objective, records the comparison in deploy.lock, and a later build takes the chosen
route without measuring again. Real exports through real ONNX Runtime; the choice among measured figures is
tested on figures given (a latency is this host's, never asserted)."""

from __future__ import annotations

from pathlib import Path

from buildsys.planning.prefer import chosen_record
from buildsys.records import ComparedRoute
from tests.planning.test_routes import PT2_ROUTE, TS_ROUTE, Project

FIRST = ["pytorch", "onnx"]


def test_a_target_that_prefers_size_compares_its_routes_ships_the_smallest_and_a_noop_measures_nothing(
        tmp_path: Path) -> None:
    project = Project(tmp_path, "prefer: size")
    proc = project.run("build")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "chosen   verify:t" in proc.stdout and "prefer size: " in proc.stdout, proc.stdout
    lock = project.lock()
    chosen = lock.routes["t"]["chosen"]
    assert chosen["prefer"] == "size" and [c["route"] for c in chosen["compared"]] == [FIRST, PT2_ROUTE, TS_ROUTE]
    first, pt2, traced = chosen["compared"]
    # the model branches on its data: torch.export refuses it, and the rival's failure is recorded, not fatal
    assert pt2["passed"] is False and "torch.export failed" in pt2["reason"]
    for passed in (first, traced):  # each passing route measured: its deliverable's bytes, latency, accuracy
        assert passed["passed"] and passed["bytes"] > 0 and passed["latency_ms"] > 0 and passed["fidelity"] > 0.99
    assert chosen == chosen_record("size", chosen["compared"])  # the choice the rule makes on what was measured
    assert lock.targets["t"]["route"] == chosen["route"]  # what shipped is what was chosen
    shipped = sum(size for _, _, size, _ in lock.targets["t"]["files"])
    assert shipped == next(c["bytes"] for c in chosen["compared"] if c["route"] == chosen["route"])

    calls = project.calls()
    again = project.run("build")
    assert again.returncode == 0 and "Nothing to do" in again.stdout and project.calls() == calls, again.stdout

    # Another objective compares again; every route's artifact is in the cache, so nothing converts twice.
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(deploy.read_text().replace("prefer: size", "prefer: accuracy"))
    other = project.run("build")
    assert other.returncode == 0 and "prefer accuracy: " in other.stdout, other.stdout
    assert project.lock().routes["t"]["chosen"]["prefer"] == "accuracy"
    assert not any(line.split()[:2] in (["built", "m/onnx"], ["built", "m/torchscript"])
                   for line in other.stdout.splitlines()), other.stdout


def test_prefer_cannot_pin_a_route_too(tmp_path: Path) -> None:
    project = Project(tmp_path, "prefer: latency\n    via: [torchscript]")
    proc = project.run("plan")
    assert proc.returncode != 0
    assert "deploy.yaml:" in proc.stdout + proc.stderr and "'prefer' chooses among routes and 'via' pins one" in \
        proc.stdout + proc.stderr


def _route(name: str, **measured: float) -> ComparedRoute:
    return ComparedRoute(route=["pytorch", name], passed=True, key=name, **measured)  # type: ignore[typeddict-item]


def test_a_rival_replaces_the_first_route_only_when_better_by_more_than_the_noise() -> None:
    first = _route("a", latency_ms=1.0, bytes=1000, fidelity=0.90)
    close = _route("b", latency_ms=0.97, bytes=995, fidelity=0.9005)  # within 5 %, 1 %, 0.1 %
    assert chosen_record("latency", [first, close])["route"] == first["route"]
    assert chosen_record("size", [first, close])["route"] == first["route"]
    assert chosen_record("accuracy", [first, close])["route"] == first["route"]
    assert "the route built first stays" in chosen_record("size", [first, close])["gain"]

    fast = _route("c", latency_ms=0.5, bytes=2000, fidelity=0.89)
    small = _route("d", latency_ms=2.0, bytes=500, fidelity=0.91)
    failed = ComparedRoute(route=["pytorch", "e"], passed=False, reason="refused")
    latency = chosen_record("latency", [first, failed, fast, small])
    assert latency["route"] == fast["route"] and latency["key"] == "c"
    assert latency["gain"] == "0.5 ms against 1 ms, 2.00× faster than the route built first"
    size = chosen_record("size", [first, fast, small])
    assert size["route"] == small["route"] and size["gain"] == "0.5 KB against 1.0 KB, 2.00× smaller than the route built first"
    assert chosen_record("accuracy", [first, fast, small])["route"] == small["route"]
    # a rival that measured no latency (a stand-in) cannot win on it
    assert chosen_record("latency", [first, _route("f", bytes=1)])["route"] == first["route"]
