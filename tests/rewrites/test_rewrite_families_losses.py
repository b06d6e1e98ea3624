"""The losses family (buildsys/rewrites/losses.py) against torch in float32 and float64: cross_entropy with class
indices and probabilities, weights, ignore_index, label smoothing, every reduction, unbatched and K-D inputs;
nll_loss and linear_cross_entropy (with out-features dims and torch's chunked `options`); the ops gone from every
graph; through the legacy ONNX exporter into onnxruntime, whose shape inference rejects the SoftmaxCrossEntropyLoss
it writes for an unbatched input."""

from __future__ import annotations

import io
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from buildsys import rewrites
from tests.helpers.rewrite_checks import assert_equivalent, check, randn
from tests.helpers.rewrite_ops import Fn

DTYPES = [torch.float32, torch.float64]
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=str)
REDUCTIONS = ["none", "sum", "mean"]
#: input shape, then target shape: batched, unbatched, 2-D and K-D losses
SHAPES = [((6, 5), (6,)), ((5,), ()), ((3, 4, 2, 3), (3, 2, 3))]


def same(fn: Any, *args: torch.Tensor) -> None:
    got, want = rewrites.apply(Fn(fn), ["losses"])(*args), fn(*args)
    assert_equivalent(got, want, 1e-5 if want.dtype == torch.float32 else 1e-10)


def classes(shape: tuple[int, ...], count: int, seed: int = 1, ignore: int | None = None) -> torch.Tensor:
    target = torch.randint(0, count, shape, generator=torch.Generator().manual_seed(seed))
    if ignore is not None and target.numel() > 1:
        target.view(-1)[::3] = ignore
    return target


@dtypes
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_cross_entropy_with_class_indices(shapes: Any, reduction: str, dtype: torch.dtype) -> None:
    (ishape, tshape), count = shapes, shapes[0][1 if len(shapes[0]) > 1 else 0]
    x, weight = randn(*ishape, dtype=dtype), torch.rand(count, dtype=dtype) + 0.1
    for ignore in (-100, 2):
        t = classes(tshape, count, ignore=ignore)
        same(lambda x: F.cross_entropy(x, t, reduction=reduction, ignore_index=ignore), x)
        same(lambda x, w: F.cross_entropy(x, t, weight=w, reduction=reduction, ignore_index=ignore), x, weight)
        same(lambda x, w: F.cross_entropy(x, t, weight=w, reduction=reduction, ignore_index=ignore,
                                          label_smoothing=0.3), x, weight)
        same(lambda x: F.nll_loss(torch.log_softmax(x, 0 if x.dim() == 1 else 1), t, reduction=reduction,
                                  ignore_index=ignore), x)


@dtypes
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_cross_entropy_with_class_probabilities(shapes: Any, reduction: str, dtype: torch.dtype) -> None:
    ishape = shapes[0]
    x, t = randn(*ishape, dtype=dtype), torch.softmax(randn(*ishape, seed=3, dtype=dtype), 0)
    weight = torch.rand(ishape[1 if len(ishape) > 1 else 0], dtype=dtype)
    same(lambda x, t: F.cross_entropy(x, t, reduction=reduction), x, t)
    same(lambda x, t, w: F.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.2), x, t, weight)


def test_every_target_ignored_gives_torch_nan() -> None:
    x, t = randn(4, 3), torch.full((4,), -100)
    same(lambda x: F.cross_entropy(x, t), x)
    same(lambda x: F.cross_entropy(x, t, label_smoothing=0.1), x)


def test_legacy_reduction_flags() -> None:
    x, t = torch.log_softmax(randn(4, 3), 1), classes((4,), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same(lambda x: F.nll_loss(x, t, size_average=False), x)
        same(lambda x: F.nll_loss(x, t, reduce=False), x)


@dtypes
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy(reduction: str, dtype: torch.dtype) -> None:
    from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions

    x, w, b = randn(5, 4, dtype=dtype), randn(6, 4, seed=2, dtype=dtype), randn(6, seed=4, dtype=dtype)
    t = classes((5,), 6, ignore=-100)
    same(lambda x, w: F.linear_cross_entropy(x, w, t, reduction=reduction), x, w)
    same(lambda x, w, b: F.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction, label_smoothing=0.1), x, w, b)
    same(lambda x, w: F.linear_cross_entropy(x, w, t, reduction=reduction, options=LinearCrossEntropyOptions(batch_chunk_size=2)),
         x, w)
    w3 = randn(6, 2, 4, seed=5, dtype=dtype)  # out-features: a 2-D loss over (batch, classes, 2)
    same(lambda x, w: F.linear_cross_entropy(x, w, classes((5, 2), 6), reduction=reduction), x, w3)
    same(lambda x, w: F.linear_cross_entropy(x[0], w, t[0], reduction=reduction), x, w)  # unbatched


def test_no_loss_op_is_left_in_any_graph() -> None:
    from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions

    x, w, t = randn(5, 4), randn(6, 4, seed=2), classes((5,), 6)
    check(lambda x: F.cross_entropy(x, t.remainder(4), label_smoothing=0.1), "losses", x,
          graphs=True)
    check(lambda x: F.nll_loss(x, t.remainder(4)), "losses", x, graphs=True)
    options = LinearCrossEntropyOptions(batch_chunk_size=2)
    module = rewrites.apply(Fn(lambda x, w: F.linear_cross_entropy(x, w, t, reduction="none", options=options)),
                            ["losses"])
    program = torch.export.export(module, (x, w), strict=False)
    assert all(str(n.target).startswith("aten.") for n in program.graph.nodes if n.op == "call_function"), \
        program.graph


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_cross_entropy_runs_in_onnxruntime(shapes: Any) -> None:
    import onnxruntime

    (ishape, tshape), count = shapes, shapes[0][1 if len(shapes[0]) > 1 else 0]
    x, t, weight = randn(*ishape), classes(tshape, count, ignore=1), torch.rand(count) + 0.1
    fn = lambda x: F.cross_entropy(x, t, weight=weight, ignore_index=1, reduction="none", label_smoothing=0.1)  # noqa: E731
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rewrites.apply(Fn(fn), ["losses"]), (x,), f, dynamo=False, opset_version=18)
    session = onnxruntime.InferenceSession(f.getvalue())
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert_equivalent(torch.from_numpy(got), fn(x), 1e-5)


@dtypes
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_margin_losses_keep_small_values(reduction: str, dtype: torch.dtype) -> None:
    x, y = randn(4, 6, dtype=dtype) * 12, torch.sign(randn(4, 6, seed=5, dtype=dtype))
    same(lambda x, y: F.soft_margin_loss(x, y, reduction=reduction), x, y)
    labels, weight = (randn(4, 6, seed=6) > 0).to(dtype), torch.rand(6, dtype=dtype)
    same(lambda x, y: F.multilabel_soft_margin_loss(x, y, reduction=reduction), x, labels)
    same(lambda x, y, w: F.multilabel_soft_margin_loss(x, y, weight=w, reduction=reduction), x, labels, weight)


def test_soft_margin_loss_through_onnx_keeps_what_log_of_one_plus_loses() -> None:
    """The dynamo exporter writes log(1 + exp(−yx)) (the legacy one refuses the op): 0 where −yx < −17 in float32.
    The family keeps torch's value."""
    import onnxruntime

    x, y = torch.tensor([20.0, 9.0, 0.5, -3.0]), torch.ones(4)
    fn = lambda x: F.soft_margin_loss(x, y, reduction="none")  # noqa: E731
    for names, close in (([], False), (["losses"], True)):
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(rewrites.apply(Fn(fn), names) if names else Fn(fn), (x,), f, dynamo=True,
                              opset_version=18, verbose=False)
        session = onnxruntime.InferenceSession(f.getvalue())
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        assert torch.allclose(got, fn(x), rtol=1e-5, atol=0) is close, (names, got, fn(x))


@dtypes
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_embedding_losses(reduction: str, dtype: torch.dtype) -> None:
    x, y = randn(5, 7, dtype=dtype), torch.sign(randn(5, 7, seed=8, dtype=dtype))
    same(lambda x, y: F.hinge_embedding_loss(x, y, reduction=reduction), x, y)
    same(lambda x, y: F.hinge_embedding_loss(x, y, margin=0.3, reduction=reduction), x, y)
    a, b, t = randn(5, 7, dtype=dtype), randn(5, 7, seed=9, dtype=dtype), torch.tensor([1, -1, 1, -1, -1])
    same(lambda a, b: F.cosine_embedding_loss(a, b, t, reduction=reduction), a, b)
    same(lambda a, b: F.cosine_embedding_loss(a, b, t, margin=-0.2, reduction=reduction), a, b)
    same(lambda a, b: F.cosine_embedding_loss(a[0], b[0], t[1], reduction=reduction), a, b)  # unbatched
    check(lambda a, b: F.cosine_embedding_loss(a, b, t) + F.hinge_embedding_loss(a, b.sign()), "losses", a, b,
          graphs=True)
