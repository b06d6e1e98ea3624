"""What every PT2E quantizer shares (buildsys/formats/torch/pt2e.py): the histogram observer's range search over
Python floats gives torchao's own ranges, bit for bit, on activations of every shape a network makes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from torchao.quantization.pt2e.observer import HistogramObserver  # noqa: E402

from buildsys.formats.torch.pt2e import fast_range_search  # noqa: E402


def _activations(kind: str, seed: int) -> list["torch.Tensor"]:
    g = torch.Generator().manual_seed(seed)
    normal = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    make = {
        "normal": lambda: normal(3000) * 2,
        "relu": lambda: torch.relu(normal(3000) * 3),
        "softmax": lambda: torch.softmax(normal(30, 100) * 5, -1).flatten(),
        "sparse outliers": lambda: torch.cat([torch.zeros(2990), normal(10) * 50]),
        "gelu": lambda: torch.nn.functional.gelu(normal(3000) * 3),
        "saturated sigmoid": lambda: torch.sigmoid(normal(3000) * 20),
        "heavy tail": lambda: normal(3000) + (torch.rand(3000, generator=g) < 0.01) * normal(3000) * 30,
    }[kind]
    return [make() for _ in range(4)]


@pytest.mark.parametrize("kind", ["normal", "relu", "softmax", "sparse outliers", "gelu", "saturated sigmoid",
                                  "heavy tail"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_range_search_is_torchaos_bit_for_bit(kind: str, seed: int) -> None:
    fast_range_search()
    original = HistogramObserver.original_param_search  # type: ignore[attr-defined]
    observer = HistogramObserver(eps=2**-12)
    for x in _activations(kind, seed):
        observer(x)
    want, got = original(observer), observer._non_linear_param_search()
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), (kind, want, got)


def test_installing_twice_keeps_the_original() -> None:
    fast_range_search()
    first = HistogramObserver.original_param_search  # type: ignore[attr-defined]
    fast_range_search()
    assert HistogramObserver.original_param_search is first  # type: ignore[attr-defined]
    assert not getattr(first, "modelbuild", False)
