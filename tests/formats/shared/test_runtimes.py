"""Runtimes: loading each artifact family, output order, batching, dtype casts and missing packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from buildsys.config.data import Batch, eval_batch
from buildsys.errors import StepError
from buildsys.formats import get_runtime, runtimes
from buildsys.formats import formats
from tests.helpers.models import Tiny, make_model, torch_outputs, validation_feeds

MINE = ("torch-eager", "torchscript", "torch-export", "onnxruntime")


def test_every_executable_format_of_mine_has_its_runtime() -> None:
    assert set(MINE) <= set(runtimes())
    for fmt in ("pytorch", "torchscript", "torchscript-file", "pt2", "pt2-file", "onnx", "onnx-file",
                "onnx-optimized", "onnx-fp16", "onnx-int8"):
        assert formats()[fmt].runtime in runtimes(), fmt
    for name in MINE:
        assert get_runtime(name).unavailable() is None, name


def test_missing_package_is_a_reason_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("onnxruntime", "torch") else real(name, *a))
    assert get_runtime("onnxruntime").unavailable() == (
        "onnxruntime is not installed (pip install -c constraints.txt 'modelbuild[server]')")
    assert get_runtime("torchscript").unavailable() == (
        "torch is not installed (pip install -c constraints.txt 'modelbuild[torch]')")


@pytest.mark.parametrize("kind", ["two", "two-tuple"])
def test_torch_eager_returns_outputs_in_signature_order(tmp_path: Path, kind: str) -> None:
    # 'two' returns {"box", "scores"} (dict in the other order), 'two-tuple' returns (scores, box)
    tiny = make_model(tmp_path, kind)
    session = get_runtime("torch-eager").load(None, tiny.model, tiny.root)  # type: ignore[arg-type]
    scores, box = session.run_all(eval_batch(tiny.model, tiny.root))
    assert scores.shape == (48, 3) and box.shape == (48, 2)


def test_torch_runtimes_agree(two: Tiny, tmp_path: Path) -> None:
    two.run("torchscript-from-pytorch", tmp_path / "ts")
    two.run("pt2-from-pytorch", tmp_path / "pt2")
    batch = eval_batch(two.model, two.root)
    expected = get_runtime("torch-eager").load(None, two.model, two.root).run_all(batch)  # type: ignore[arg-type]
    for name, path in (("torchscript", tmp_path / "ts/model.pt"), ("torch-export", tmp_path / "pt2/model.pt2")):
        got = get_runtime(name).load(path, two.model, two.root).run_all(batch)
        assert len(got) == len(expected) == 2, name
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)


def test_onnxruntime_feeds_by_name_casts_and_orders_outputs(two: Tiny, tmp_path: Path) -> None:
    two.run("onnx-from-pytorch", tmp_path)
    session = get_runtime("onnxruntime").load(tmp_path / "model.onnx", two.model, two.root)
    feeds = validation_feeds(two)
    scores, box = session.run({"x": feeds["x"].astype(np.float64)})  # cast to the graph's float32
    expected = torch_outputs(two, feeds)
    np.testing.assert_allclose(scores, expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(box, expected[1], rtol=1e-4, atol=1e-5)


def test_run_all_chunks_by_max_batch(tmp_path: Path) -> None:
    tiny = make_model(tmp_path / "p", "mlp")
    fixed = tiny.with_model(inputs=[{"name": "x", "shape": [1, 4]}])
    tiny.run("onnx-from-pytorch", tmp_path / "dyn")
    dynamic = get_runtime("onnxruntime").load(tmp_path / "dyn/model.onnx", tiny.model, tiny.root)
    assert dynamic.max_batch == 64
    one = get_runtime("torch-eager").load(None, fixed.model, fixed.root)  # type: ignore[arg-type]
    assert one.max_batch == 1
    calls = []
    original = one.run
    one.run = lambda feeds: calls.append(len(feeds["x"])) or original(feeds)  # type: ignore[method-assign]
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)}
    (out,) = one.run_all(Batch(feeds, None, "test"))
    assert calls == [1] * 5 and out.shape == (5, 3)
    np.testing.assert_allclose(out, dynamic.run_all(Batch(feeds, None, "test"))[0], rtol=1e-4, atol=1e-5)


def test_onnxruntime_rejects_a_graph_whose_inputs_are_not_in_the_signature(two: Tiny, tmp_path: Path) -> None:
    two.run("onnx-from-pytorch", tmp_path)
    renamed = two.with_model(inputs=[{"name": "features", "shape": ["batch", 4]}])
    with pytest.raises(StepError, match=r"the ONNX model's input\(s\) x are not in the signature \(features\)"):
        get_runtime("onnxruntime").load(tmp_path / "model.onnx", renamed.model, renamed.root)


def test_unloadable_files_are_step_errors(two: Tiny, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model")
    for name, pattern in (("torchscript", "not a loadable TorchScript file"),
                          ("torch-export", "not a loadable torch.export program"),
                          ("onnxruntime", "onnxruntime could not load 'junk.bin'")):
        with pytest.raises(StepError, match=pattern):
            get_runtime(name).load(junk, two.model, two.root)
