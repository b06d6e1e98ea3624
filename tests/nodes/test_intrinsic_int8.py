"""The model's own int8 error (buildsys/nodes/intrinsic.py, `simulated_int8`): a classifier whose logits are nearly
tied (the seeded heads of public architectures: RepViT's top-1 margins are 0.7 % of their spread) flips its argmax
at any 8-bit rounding while its logits barely move, so its int8 checks' default top-1 limit falls to what the
model allows (never below the ceiling), while its cosine limit, which tells a broken artifact, stays; a decisive
classifier, and one whose own int8 logits move (a model int8 degrades), keep every default; a limit the user
wrote is never changed. Real PyTorch modules, measured as the reference node does."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from torch import nn

from buildsys.config.data import Batch
from buildsys.config.load import load
from buildsys.nodes.intrinsic import CEILING, measure, of_output, raised

DEPLOY = """\
models:
  m:
    source: {factory: x:build}
    inputs: [{name: x, shape: [batch, 16]}]
    outputs: [{name: logits, kind: scores}]
targets:
  t: {model: m, format: onnx}
"""
INT8 = {"min_cosine": 0.9, "min_top1_agreement": 0.9}


class Classifier(nn.Module):
    """Features, then a 10-class head whose logits are `offset` (the same for every class) plus `spread` × a
    seeded read-out: a small spread against the offset is a near tie at 8 bits."""

    def __init__(self, spread: float, offset: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features, self.head = nn.Linear(16, 64), nn.Linear(64, 10)
        with torch.no_grad():
            self.head.weight.mul_(spread)
            self.head.bias.fill_(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.features(x)))


def _own_int8(tmp_path: Path, module: nn.Module) -> dict[str, float]:
    (tmp_path / "deploy.yaml").write_text(textwrap.dedent(DEPLOY))
    model = load(tmp_path / "deploy.yaml").project.models["m"]
    x = np.random.default_rng(0).standard_normal((64, 16)).astype("float32")
    with torch.no_grad():
        reference = [module(torch.from_numpy(x)).numpy()]
    measured, _ = measure(module, model, Batch({"x": x}, None, "test"), reference)
    assert measured["int8"]["against"] == "simulated int8"
    own = of_output(measured, "int8", "logits")
    assert own is not None
    return own


def test_a_near_tied_classifier_gets_the_top1_limit_it_allows_and_keeps_its_cosine(tmp_path: Path) -> None:
    own = _own_int8(tmp_path, Classifier(spread=0.02, offset=3.0).eval())
    values = own["values"]
    assert values["top1_agreement"] < 0.9 and values["cosine"] > 0.999  # ties flip; the logits barely move
    limits, notes = raised(INT8, list(INT8), own, "int8")
    assert CEILING["int8"]["min_top1_agreement"] <= limits["min_top1_agreement"] < 0.9
    assert limits["min_cosine"] == 0.9  # what tells a broken artifact is never loosened at int8
    assert "simulated int8-vs-float32 top1_agreement" in notes["min_top1_agreement"]
    # a limit the user wrote is never changed
    assert raised(INT8, [], own, "int8")[0] == INT8


def test_a_decisive_classifier_keeps_every_int8_default(tmp_path: Path) -> None:
    own = _own_int8(tmp_path, Classifier(spread=3.0, offset=0.0).eval())
    assert own["values"]["top1_agreement"] >= 0.95  # a few inputs near a tie, as any classifier has
    assert raised(INT8, list(INT8), own, "int8")[0] == INT8


class Outlier(Classifier):
    """One feature a thousand times the others: 8-bit rounding over its range wipes out the rest, so the model's
    own int8 logits move (cosine well below 0.99) — a model int8 degrades, not a near tie."""

    def __init__(self) -> None:
        super().__init__(spread=3.0, offset=0.0)
        with torch.no_grad():
            self.features.weight[0].mul_(1000.0)
            self.head.weight[:, 0].div_(1000.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_a_model_int8_degrades_keeps_the_fixed_int8_limits(tmp_path: Path) -> None:
    own = _own_int8(tmp_path, Outlier().eval())
    assert own["values"]["cosine"] < 0.99 and own["values"]["top1_agreement"] < 0.9
    assert raised(INT8, list(INT8), own, "int8")[0] == INT8


class SlowAtHalf(nn.Module):
    """A linear layer that, at float16, takes 50 ms a sample: an op with no fast CPU kernel at that dtype (a 3-D
    convolution runs about 150x slower at float16 than at float32)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:
            __import__("time").sleep(0.05 * len(x))
        return self.fc(x)


def test_a_precision_too_slow_on_this_cpu_is_left_unmeasured_from_one_sample(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The reference node's measurements only raise default limits: each dtype runs one sample first, stopped past
    its share of the bound (SLOWER_AT_MOST x the float32 run, at least SECONDS_AT_LEAST), and one projected past
    the bound is said and skipped, rather than stopping the reference node at its time budget (torchvision's
    mc3_18: float16 3-D convolutions)."""
    from buildsys.nodes import intrinsic

    monkeypatch.setattr(intrinsic, "SECONDS_AT_LEAST", 0.5)
    (tmp_path / "deploy.yaml").write_text(textwrap.dedent(DEPLOY))
    model = load(tmp_path / "deploy.yaml").project.models["m"]
    module = SlowAtHalf().eval()
    x = np.random.default_rng(0).standard_normal((64, 16)).astype("float32")
    with torch.no_grad():
        reference = [module(torch.from_numpy(x)).numpy()]
    measured, _ = measure(module, model, Batch({"x": x}, None, "test"), reference, seconds32=0.001)
    assert __import__("re").search(r"^float16 runs (about|over) \d+x slower than float32 on this CPU \((projected|"
                                   r"stopped) \d+ s for 64 samples", measured["fp16"]["not_measured"]), measured["fp16"]
    assert measured["fp32"]["against"] == "float64" and measured["int8"]["against"] == "simulated int8"
    unbounded, _ = measure(module, model, Batch({"x": x[:8]}, None, "test"), [reference[0][:8]])
    assert unbounded["fp16"]["against"] == "float16"  # no float32 time given: measured, as before
    # the step's budget nearly spent: a measurement that would fit the float32 bound still gives way to it
    monkeypatch.setattr(intrinsic, "SECONDS_AT_LEAST", 30.0)
    late, _ = measure(module, model, Batch({"x": x}, None, "test"), reference, seconds32=0.001,
                      deadline=__import__("time").monotonic() + 0.2)
    assert "float16" in late["fp16"]["not_measured"] and "time budget left" in late["fp16"]["not_measured"]
