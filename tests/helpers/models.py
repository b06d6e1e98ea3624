"""Tiny real PyTorch models written into a temp project (factory module + weights + data) with their configs.

Every model builds in milliseconds; tests run the real exporters, quantizers and runtimes on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.config.schema import Model
from buildsys.formats import StepContext, get_step

MODULE = "tinymodels"

FACTORIES = '''\
"""Factories of the tiny test models."""
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 3))

    def forward(self, x):
        return self.body(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, image):
        return self.fc(torch.relu(self.conv(image)).flatten(1))


class TwoHeads(nn.Module):
    """Returns a dict in the opposite order of the signature: sessions must reorder by name."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 16)
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 2)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return {"box": self.reg(h), "scores": self.cls(h)}


class TwoHeadsTuple(TwoHeads):
    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.cls(h), self.reg(h)


class Unsupported(nn.Module):
    """linalg.eigh has no ONNX translation in either exporter."""

    def forward(self, x):
        return torch.linalg.eigh(x.T @ x)[0][:3].expand(x.shape[0], 3)


class Tokens(nn.Module):
    """Token and position embeddings, BERT-style: the position ids come from integer arithmetic
    (`arange + 0`) that a quantizer must leave integer."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(50, 16)
        self.pos = nn.Embedding(8, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1]).unsqueeze(0) + 0
        return self.fc((self.tok(ids) + self.pos(positions)).mean(1))


class Cell(nn.Module):
    """One LSTMCell step with its state as inputs and outputs (a streaming model, like Silero VAD)."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(8, 32)
        self.fc = nn.Linear(32, 3)

    def forward(self, x, h, c):
        h_next, c_next = self.cell(x, (h, c))
        return self.fc(h_next), h_next, c_next


class Lstm(nn.Module):
    """A batch-first LSTM encoder (2 layers by default) over a few frames, like a keyword spotter's."""

    def __init__(self, layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(6, 16, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, frames):
        out, _ = self.lstm(frames)
        return self.fc(out[:, -1])


class RMSNorm(nn.Module):
    """Llama-style RMSNorm: ONNX Runtime fuses it into SimplifiedLayerNormalization."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class RmsMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.norm = RMSNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.norm(self.up(x)))


class SmallHead(nn.Module):
    """A classifier whose head is initialised small (timm scales EVA-02's and BEiT's by 1e-3): logits of ~1e-4."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 64)
        self.head = nn.Linear(64, 4)
        with torch.no_grad():
            self.head.weight.mul_(1e-3)
            self.head.bias.mul_(1e-3)

    def forward(self, x):
        return self.head(nn.functional.gelu(self.up(x)))


class LnGelu(nn.Module):
    """LayerNorm then GELU: ONNX Runtime fuses the GELU into com.microsoft.Gelu."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(nn.functional.gelu(self.norm(self.up(x))))


class CausalAttention(nn.Module):
    """A transformer block's attention with a causal mask buffer, the common way: torch.jit.trace's
    structural check fails on the boolean mask although the trace computes exactly what eager does."""

    def __init__(self, float_mask=False):
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        mask = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
        if float_mask:
            mask = torch.zeros(6, 6).masked_fill(mask, float("-inf"))
        self.register_buffer("causal", mask)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attn(h, h, h, attn_mask=self.causal, need_weights=False)
        return self.head(a + h).mean(1)


class Branchy(nn.Module):
    """Real data-dependent control flow: a trace records one branch only."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x) * 3


class XnnpackRefusal(nn.Module):
    """A layer whose product always cancels ([x, x] @ [W; -W] == 0): full-int8 calibration gives it an
    output scale near 1e-8, and XNNPACK refuses an int8 fully-connected layer whose requantization scale
    (input x weight / output) is 256 or more, when it builds its runtime; LiteRT's builtin kernels run it."""

    def __init__(self):
        super().__init__()
        w = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
        self.main = nn.Linear(8, 4)
        self.side = nn.Linear(16, 4, bias=False)
        with torch.no_grad():
            self.side.weight.copy_(torch.cat([w, -w], dim=1))

    def forward(self, x):
        return self.main(x) + self.side(torch.cat([x, x], dim=1))


def lstm():
    return Lstm()


def lstm_one_layer():
    return Lstm(layers=1)


def xnnpack_refusal():
    return XnnpackRefusal()


def rms_mlp():
    return RmsMlp()


def ln_gelu():
    return LnGelu()


def small_head():
    return SmallHead()


def causal_attention():
    return CausalAttention()


def causal_attention_float():
    return CausalAttention(float_mask=True)


def branchy():
    return Branchy()


def mlp(hidden=32):
    return MLP(hidden)


def tokens():
    return Tokens()


def lstm_cell():
    return Cell()


def cnn():
    return CNN()


def two_heads():
    return TwoHeads()


def two_heads_tuple():
    return TwoHeadsTuple()


def unsupported():
    return Unsupported()


class ColumnWeights(nn.Module):
    """Weights a user builds with NumPy: `arange(n)[:, None]` is a column NumPy strides 0 along its size-1 dim, a
    lifted constant that keeps that stride (ExecuTorch's emitter refused it: '0 in strides')."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)

    def forward(self, x):
        import numpy as np

        column = torch.from_numpy((np.arange(4, dtype=np.float32) / 4)[:, None])
        return self.body(x) @ column + x.sum(-1, keepdim=True)


def column_weights():
    return ColumnWeights()


class CrossAttention(nn.Module):
    """Attention whose keys and values are narrower than its queries: nn.MultiheadAttention then projects
    through three separate weights, which XNNPACK's partitioner leaves outside its delegate when int8."""

    def __init__(self):
        super().__init__()
        self.memory = nn.Linear(12, 12)
        self.attention = nn.MultiheadAttention(16, 2, kdim=12, vdim=12, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        kv = self.memory(x[..., :12])
        return self.head(self.attention(x, kv, kv, need_weights=False)[0])


def cross_attention():
    return CrossAttention()


class Chaotic(nn.Module):
    """A linear map plus a small logistic-map orbit of its inputs: the orbit is chaotic, so float32 and float64
    part ways on it (an ill-conditioned model: its own float32 is far from its float64) while staying bounded."""

    def __init__(self, chaos=0.05):
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.chaos = chaos

    def forward(self, x):
        z = torch.sigmoid(x[:, :4])
        for _ in range(40):
            z = 3.99 * z * (1 - z)
        return self.linear(x) + self.chaos * z


def chaotic():
    return Chaotic(0.05)


def chaotic_wild():
    return Chaotic(1.0)


class PositionBuckets(nn.Module):
    """A learned bias per bucket of relative positions, the buckets computed in int64 (abs, *, +, clamp) as
    T5 and WavLM do: a PT2E quantizer annotates those ops whatever their dtype."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Embedding(8, 6)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        n = x.shape[1]
        position = torch.arange(n)[:, None] - torch.arange(n)[None, :]
        bucket = torch.clamp(position.abs() * 2 + 1, max=7)
        return self.fc(x) + self.bias(bucket).mean(1)


def position_buckets():
    return PositionBuckets()


class DistributionHead(nn.Module):
    """YOLO's box head (distribution focal loss): a softmax over 8 bins per box side, read out as the expected
    bin, and a sigmoid score. torch.export keeps the softmax as `softmax.int`."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 33)
        self.register_buffer("bins", torch.arange(8, dtype=torch.float32))

    def forward(self, x):
        out = self.fc(x)
        sides = out[:, :32].view(x.shape[0], 4, 8).softmax(-1)
        return torch.cat([(sides * self.bins).sum(-1), torch.sigmoid(out[:, 32:])], dim=1)


def distribution_head():
    return DistributionHead()


class PatchAttention(nn.Module):
    """A small vision encoder: a conv stem padded on its bottom-right edge, patches as tokens, one attention block
    with fused q/k/v split per head and a rotary-style scaling of q and k, a pooled head. Its transposes and pad
    only move values: TFLite's int8 kernels of them keep one scale on both sides."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(dim, dim, 2)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)
        self.heads = heads
        self.rotary = nn.Parameter(torch.linspace(0.5, 1.5, dim // heads))

    def forward(self, image):
        x = nn.functional.pad(torch.relu(self.stem(image)), [0, 1, 0, 1])
        tokens = torch.relu(self.mix(x)).flatten(2).transpose(1, 2)
        b, t, _ = tokens.shape
        qkv = self.qkv(tokens).view(b, t, self.heads, -1).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = q * self.rotary, k * self.rotary
        attended = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
        return self.head(self.out(attended.transpose(1, 2).reshape(b, t, -1)).mean(1))


def patch_attention():
    return PatchAttention()


class LinearAttention(nn.Module):
    """Separable (linear) self-attention over conv patches, written as MobileViTv2's is: one score per patch, a
    context vector per channel, multiplied into the values through `expand_as`."""

    def __init__(self, dim=16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.qkv = nn.Conv2d(dim, 1 + 2 * dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)
        self.head = nn.Linear(dim, 5)
        self.dim = dim

    def forward(self, image):
        x = torch.relu(self.stem(image))
        q, k, v = self.qkv(x).split([1, self.dim, self.dim], dim=1)
        context = (k * torch.softmax(q, dim=-1)).sum(dim=-1, keepdim=True)
        return self.head(self.out(torch.relu(v) * context.expand_as(v)).mean((2, 3)))


def linear_attention():
    return LinearAttention()


class UnfoldedPatches(nn.Module):
    """MobileViT's unfolding: a conv feature map cut into 2x2 patches by reshape + permute (pixels of a patch
    position side by side), a 1x1 conv over them, folded back the same way and mixed by a second 1x1 conv (GELUs:
    the dynamic Conv + ReLU has its own test model, `residual`)."""

    def __init__(self, dim=16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)
        self.head = nn.Linear(dim, 5)

    def forward(self, image):
        x = torch.nn.functional.gelu(self.stem(image))
        b, c, h, w = x.shape
        patches = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, 4, -1)
        y = torch.nn.functional.gelu(self.mix(patches))
        y = y.reshape(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
        return self.head(self.out(y).mean((2, 3)))


def unfolded_patches():
    return UnfoldedPatches()


class ResidualBlock(nn.Module):
    """A ResNet basic block after a stem: Conv + BN + ReLU, Conv + BN, the skip added, ReLU, pooled into a head."""

    def __init__(self, dim=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, image):
        x = self.stem(image)
        return self.head(torch.relu(x + self.conv2(self.conv1(x))).mean((2, 3)))


def residual_block():
    return ResidualBlock()


class Vanishing(nn.Module):
    """A deep MLP initialised too small, as seeded, untrained weights often are (Hugging Face's normal(0, 0.02) for
    every conv of MobileViT): each layer shrinks its input, and the outputs are float32 subnormals (about 1e-39)."""

    def __init__(self, width=16, depth=16):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width if i else 8, width, bias=False) for i in range(depth))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.normal_(0.0, 7e-4)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x)) + 0.5 * layer(x)
        return x


def vanishing():
    return Vanishing()


class InPlaceInput(nn.Module):
    """Scales and clips its input in place before its layers, as preprocessing written into `forward` often does
    (`x[:, :3] -= mean`, `x.clamp_()`): its exported program mutates a user input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x[:, :4] = x[:, :4] * 0.5
        x.clamp_(min=-1.0, max=1.0)
        return self.fc(x)


def in_place_input():
    return InPlaceInput()


def broken():
    raise RuntimeError("the factory refused to build")


def not_a_module():
    return 42
'''

KINDS: dict[str, dict[str, Any]] = {
    "mlp": {"factory": "mlp", "inputs": [{"name": "x", "shape": ["batch", 4]}],
            "outputs": [{"name": "y", "kind": "scores"}], "classes": 3},
    "cnn": {"factory": "cnn", "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8], "layout": "NCHW"}],
            "outputs": [{"name": "logits", "kind": "scores"}], "classes": 10},
    "two": {"factory": "two_heads", "inputs": [{"name": "x", "shape": ["batch", 4]}],
            "outputs": [{"name": "scores", "kind": "scores"}, {"name": "box", "kind": "values"}], "classes": 3},
    "two-tuple": {"factory": "two_heads_tuple", "inputs": [{"name": "x", "shape": ["batch", 4]}],
                  "outputs": [{"name": "scores", "kind": "scores"}, {"name": "box", "kind": "values"}], "classes": 3},
    "unsupported": {"factory": "unsupported", "inputs": [{"name": "x", "shape": ["batch", 4]}],
                    "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "column": {"factory": "column_weights", "inputs": [{"name": "x", "shape": ["batch", 4]}],
               "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "lstm": {"factory": "lstm", "inputs": [{"name": "frames", "shape": ["batch", 20, 6]}],
             "outputs": [{"name": "logits", "kind": "scores"}], "classes": 3},
    # Six frames: the cells an int8 step unrolls, and its lowering time, grow with the frames.
    "lstm-short": {"factory": "lstm", "inputs": [{"name": "frames", "shape": ["batch", 6, 6]}],
                   "outputs": [{"name": "logits", "kind": "scores"}], "classes": 3},
    # One layer over 20 frames: past the int8 steps' unrolling bounds where a test lowers them to 16
    # (max_unrolled_steps, max_unrolled_cells): converting an unrolled layer costs time in proportion to its cells.
    "lstm-one-layer": {"factory": "lstm_one_layer", "inputs": [{"name": "frames", "shape": ["batch", 20, 6]}],
                       "outputs": [{"name": "logits", "kind": "scores"}], "classes": 3},
    "rms": {"factory": "rms_mlp", "inputs": [{"name": "x", "shape": ["batch", 8]}],
            "outputs": [{"name": "y", "kind": "scores"}], "classes": 4},
    "ln-gelu": {"factory": "ln_gelu", "inputs": [{"name": "x", "shape": ["batch", 8]}],
                "outputs": [{"name": "y", "kind": "scores"}], "classes": 4},
    "small-head": {"factory": "small_head", "inputs": [{"name": "x", "shape": ["batch", 8]}],
                   "outputs": [{"name": "y", "kind": "scores"}], "classes": 4},
    "causal": {"factory": "causal_attention", "inputs": [{"name": "x", "shape": ["batch", 6, 8]}],
               "outputs": [{"name": "y", "kind": "scores"}], "classes": 4},
    "causal-float": {"factory": "causal_attention_float", "inputs": [{"name": "x", "shape": ["batch", 6, 8]}],
                     "outputs": [{"name": "y", "kind": "scores"}], "classes": 4},
    "xnnpack-refusal": {"factory": "xnnpack_refusal", "inputs": [{"name": "x", "shape": ["batch", 8]}],
                        "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "cross-attention": {"factory": "cross_attention", "inputs": [{"name": "x", "shape": ["batch", 5, 16]}],
                        "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "chaotic": {"factory": "chaotic", "inputs": [{"name": "x", "shape": ["batch", 8]}],
                "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "chaotic-wild": {"factory": "chaotic_wild", "inputs": [{"name": "x", "shape": ["batch", 8]}],
                     "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "buckets": {"factory": "position_buckets", "inputs": [{"name": "x", "shape": ["batch", 5, 6]}],
                "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "dfl": {"factory": "distribution_head", "inputs": [{"name": "x", "shape": ["batch", 6]}],
            "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "patches": {"factory": "patch_attention", "inputs": [{"name": "image", "shape": ["batch", 3, 16, 16]}],
                "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "linear-attention": {"factory": "linear_attention", "inputs": [{"name": "image", "shape": ["batch", 3, 16, 16]}],
                         "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "unfolded-patches": {"factory": "unfolded_patches", "inputs": [{"name": "image", "shape": ["batch", 3, 16, 16]}],
                         "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "residual": {"factory": "residual_block", "inputs": [{"name": "image", "shape": ["batch", 3, 8, 8]}],
                 "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "vanishing": {"factory": "vanishing", "inputs": [{"name": "x", "shape": ["batch", 8]}],
                  "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "in-place-input": {"factory": "in_place_input", "inputs": [{"name": "x", "shape": ["batch", 8]}],
                       "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "branchy": {"factory": "branchy", "inputs": [{"name": "x", "shape": ["batch", 4]}],
                "outputs": [{"name": "y", "kind": "values"}], "classes": 0},
    "tokens": {"factory": "tokens", "inputs": [{"name": "ids", "shape": ["batch", 8], "dtype": "int64"}],
               "outputs": [{"name": "y", "kind": "values"}], "classes": 0, "vocab": 50},
    "cell": {"factory": "lstm_cell", "inputs": [{"name": "x", "shape": ["batch", 8]}, {"name": "h", "shape": ["batch", 32]},
                                                {"name": "c", "shape": ["batch", 32]}],
             "outputs": [{"name": "y", "kind": "scores"}, {"name": "h_next", "kind": "values"},
                         {"name": "c_next", "kind": "values"}], "classes": 3},
}


@dataclass
class Tiny:
    """A tiny model project: its root, its name and its config."""

    root: Path
    name: str
    model: Model
    kind: str

    def net(self) -> Any:
        """The model with its weights, straight from PyTorch (for direct comparisons)."""
        from buildsys.formats.torch.loading import load_module

        return load_module(self.model, self.root)

    def with_source(self, **changes: Any) -> "Tiny":
        """The same project with source fields changed (e.g. factory='tinymodels:broken')."""
        source = self.model.source.model_copy(update=changes)
        return Tiny(self.root, self.name, self.model.model_copy(update={"source": source}), self.kind)

    def with_model(self, **changes: Any) -> "Tiny":
        data = self.model.model_dump()
        data.update(changes)
        return Tiny(self.root, self.name, Model.model_validate(data), self.kind)

    def ctx(self, out_dir: Path, options: Any = None, step: str | None = None, input_path: Path | None = None,
            precision: str = "fp32", **extra: Any) -> StepContext:
        out_dir.mkdir(parents=True, exist_ok=True)
        if step is not None and (options is None or isinstance(options, dict)):
            options = get_step(step).Options.model_validate(options or {})
        return StepContext(model_name=self.name, model=self.model, root=self.root, input_path=input_path,
                           out_dir=out_dir, options=options, precision=precision, extra=dict(extra))

    def run(self, step: str, out_dir: Path, input_path: Path | None = None, precision: str = "fp32",
            extra: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """Run one registered step in-process, as the worker would; returns its metrics."""
        ctx = self.ctx(out_dir, options, step=step, input_path=input_path, precision=precision, **(extra or {}))
        return get_step(step)().run(ctx)


def make_model(root: Path, kind: str = "mlp", *, name: str | None = None, samples: int = 48,
               calibration: bool = True, validation: bool = True, example: bool = False, weights: bool = True,
               seed: int = 0) -> Tiny:
    """Write the factory module, trained-free weights and data for model `kind` under `root`.

    The validation labels are the model's own predictions with a few flipped, so the float model
    has an accuracy below 1 that quantization can be judged against.
    """
    import numpy as np
    import torch

    spec = KINDS[kind]
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{MODULE}.py").write_text(FACTORIES)
    source: dict[str, Any] = {"factory": f"{MODULE}:{spec['factory']}"}
    model = Model.model_validate({"source": source, "inputs": spec["inputs"], "outputs": spec["outputs"]})
    tiny = Tiny(root, name or kind, model, kind)
    torch.manual_seed(seed)
    net = tiny.net()
    if weights:
        torch.save(net.state_dict(), root / f"{kind}.pt")
        source["weights"] = f"{kind}.pt"
    rng = np.random.default_rng(seed)

    def inputs(n: int) -> dict[str, np.ndarray]:
        return {i["name"]: rng.integers(0, spec["vocab"], (n, *i["shape"][1:])) if i.get("dtype") == "int64"
                else rng.standard_normal((n, *i["shape"][1:])).astype("float32") for i in spec["inputs"]}

    data: dict[str, Any] = {}
    if validation:
        val = inputs(samples)
        if spec["classes"]:
            with torch.no_grad():
                out = net(*[torch.from_numpy(v) for v in val.values()])
            scores = out["scores"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out
            labels = scores.argmax(-1).numpy()
            labels[:2] = (labels[:2] + 1) % spec["classes"]
            val["labels"] = labels
        np.savez(root / "val.npz", **val)
        data["validation"] = "val.npz"
    if calibration:
        np.savez(root / "calib.npz", **inputs(32))
        data["calibration"] = "calib.npz"
    if example:
        np.savez(root / "example.npz", **inputs(4))
        data["example"] = "example.npz"
    model = Model.model_validate({"source": source, "inputs": spec["inputs"], "outputs": spec["outputs"], "data": data})
    return Tiny(root, name or kind, model, kind)


def torch_outputs(tiny: Tiny, feeds: dict[str, Any]) -> list[Any]:
    """The PyTorch model's outputs on `feeds`, in signature order, as numpy arrays."""
    from buildsys.formats.torch.runtimes import TorchSession

    return TorchSession(tiny.net(), tiny.model).run(feeds)


def validation_feeds(tiny: Tiny) -> dict[str, Any]:
    from buildsys.config.data import eval_batch

    return eval_batch(tiny.model, tiny.root).inputs


__all__ = ["Tiny", "make_model", "torch_outputs", "validation_feeds", "FACTORIES", "MODULE"]
