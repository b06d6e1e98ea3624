"""Each rewrite family answers a real converter refusal through the planner's rewrite route, end to end through
`modelbuild build`, on models written here that no rewrite names: the first route is refused, the refusal points
at the family, the same route with the family applied where the module is loaded makes an artifact that passes
its numeric check against the original PyTorch model in its runtime.

Refusals met (torch 2.13, onnx2tf 1.28, TensorFlow's TFLite converter, coremltools 9.0): TFLite's
`tf.TensorListReserve` for the GRU that onnx2tf makes a while loop; the legacy ONNX exporter's "Exporting the
operator 'aten::fft_rfft2' / 'aten::view_as_complex' ... is not supported" and "index_add_() ... with duplicated
values"; coremltools' trace frontend on cdist and triu_indices, the legacy ONNX exporter on triu below opset 14
(see each test).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from buildsys.storage.lock import Lock
from tests.conftest import TinyProject

pytestmark = pytest.mark.slow

HAR_GRU = '''\
import torch
from torch import nn


class GruActivity(nn.Module):
    """Windows of nine IMU channels [B, T, 9] -> Conv1d -> GRU -> 6 activities (the classic on-device model; the test
    takes 20 frames, since the rewrite unrolls the GRU over them)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(9, 16, 5, padding=2)
        self.gru = nn.GRU(16, 24, batch_first=True)
        self.fc = nn.Linear(24, 6)

    def forward(self, window):
        features = torch.relu(self.conv(window.transpose(1, 2))).transpose(1, 2)
        _, last = self.gru(features)
        return self.fc(last[-1])


def build():
    return GruActivity()
'''

DENOISER = '''\
import torch
from torch import nn


class SpectralDenoiser(nn.Module):
    """An image denoiser: a 2-D real FFT, a learned gain per low frequency, the inverse FFT, a conv."""

    def __init__(self, size=16, keep=5):
        super().__init__()
        torch.manual_seed(0)
        self.gain = nn.Parameter(torch.rand(keep, keep))
        self.keep, self.size = keep, size
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, image):
        spectrum = torch.fft.rfft2(image, norm="ortho")
        mask = torch.zeros(spectrum.shape[-2:])
        mask[:self.keep, :self.keep] = self.gain
        smooth = torch.fft.irfft2(spectrum * mask, s=image.shape[-2:], norm="ortho")
        return self.conv(smooth)


def build():
    return SpectralDenoiser()
'''

MIXER = '''\
import torch
from torch import nn


class ComplexMixer(nn.Module):
    """Token features as complex numbers (pairs of channels), mixed by a complex weight matrix, then magnitudes."""

    def __init__(self, channels=16):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(channels // 2, channels // 2, 2) * 0.3)
        self.head = nn.Linear(channels // 2, 3)

    def forward(self, tokens):
        z = torch.view_as_complex(tokens.reshape(*tokens.shape[:-1], -1, 2))
        mixed = torch.einsum("btc,cd->btd", z, torch.view_as_complex(self.weight))
        return self.head(mixed.abs().mean(dim=1))


def build():
    return ComplexMixer()
'''

GNN = '''\
import torch
from torch import nn

EDGES = [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (3, 0), (0, 3), (1, 3)]


class GraphLayer(nn.Module):
    """A message-passing layer on a fixed 4-node graph: messages from sources summed into targets with index_add."""

    def __init__(self, features=6):
        super().__init__()
        torch.manual_seed(0)
        self.message = nn.Linear(features, features)
        self.update = nn.Linear(2 * features, 3)
        self.register_buffer("source", torch.tensor([s for s, _ in EDGES]))
        self.register_buffer("target", torch.tensor([t for _, t in EDGES]))

    def forward(self, nodes):
        messages = torch.relu(self.message(nodes.index_select(1, self.source)))
        summed = torch.zeros_like(nodes).index_add(1, self.target, messages)
        return self.update(torch.cat([nodes, summed], dim=-1))


def build():
    return GraphLayer()
'''

POINTS = '''\
import torch
from torch import nn


class PointContext(nn.Module):
    """A point-cloud feature: each point's distances to a set of learned anchors (cdist), then an MLP."""

    def __init__(self, anchors=8):
        super().__init__()
        torch.manual_seed(0)
        self.anchors = nn.Parameter(torch.randn(anchors, 3))
        self.mlp = nn.Sequential(nn.Linear(anchors, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, points):
        distances = torch.cdist(points, self.anchors)  # [B, P, anchors]
        return self.mlp(torch.exp(-distances)).max(dim=1).values


def build():
    return PointContext()
'''

INTERACTION = '''\
import torch
from torch import nn


class FeatureInteraction(nn.Module):
    """A DLRM-style dot interaction: embeddings of each field, their pairwise dot products above the diagonal
    (triu_indices), each field's interactions with the later ones (triu), then an MLP."""

    def __init__(self, fields=5, dim=8):
        super().__init__()
        torch.manual_seed(0)
        self.fields = fields
        self.embed = nn.Linear(1, dim)
        self.mlp = nn.Sequential(nn.Linear(fields * (fields - 1) // 2 + fields, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, values):
        e = self.embed(values.unsqueeze(-1))                    # [B, fields, dim]
        z = torch.bmm(e, e.transpose(1, 2))                     # [B, fields, fields]
        rows, cols = torch.triu_indices(self.fields, self.fields, 1)
        pairs = z[:, rows, cols]
        later = torch.triu(z, diagonal=1).sum(dim=-1)
        return torch.sigmoid(self.mlp(torch.cat([pairs, later], dim=1)))


def build():
    return FeatureInteraction()
'''

SPP = '''\
import torch
from torch import nn


class SppClassifier(nn.Module):
    """SPP-net's spatial pyramid pooling: max pools to 1 × 1, 2 × 2 and 3 × 3 bins over a 5 × 5 map (the bins
    overlap), flattened for a fixed-size classifier whatever the map's size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pools = nn.ModuleList(nn.AdaptiveMaxPool2d(n) for n in (1, 2, 3))
        self.fc = nn.Linear(8 * (1 + 4 + 9), 5)

    def forward(self, image):
        x = torch.relu(self.conv(image))
        return self.fc(torch.cat([p(x).flatten(1) for p in self.pools], dim=1))


def build():
    return SppClassifier()
'''

UPSCALER = '''\
import torch
from torch import nn
from torch.nn import functional as F


class Upscaler(nn.Module):
    """A super-resolution head: features, a bicubic 2x upsampling and a residual on the bicubic-upsampled image,
    then an antialiased downscale for the preview (what torchvision's Resize does inside a model)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, image):
        base = F.interpolate(image, scale_factor=2.0, mode="bicubic", align_corners=False)
        sharp = base + F.interpolate(torch.tanh(self.features(image)), scale_factor=2.0, mode="bicubic")
        return F.interpolate(sharp, size=(5, 7), mode="bilinear", antialias=True)


def build():
    return Upscaler().eval()
'''

CLIP = '''\
import torch
from torch import nn


class ClipClassifier(nn.Module):
    """A clip classifier on 3-D convolutions: [B, 3, 8, 16, 16] clips -> Conv3d / BatchNorm3d blocks -> 5 actions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                                      nn.Conv3d(8, 16, 3, padding=1, stride=(2, 1, 1)), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, clip):
        return self.head(self.features(clip).mean((2, 3, 4)))


def build():
    return ClipClassifier().eval()
'''

SURVIVAL = '''\
import torch
from torch import nn


class SurvivalHead(nn.Module):
    """A rare-event survival model (churn, equipment failure): log-linear per-step hazards h = exp(w·x + b), and
    the log-survival Σ log(1 − h) written with log1p, as such models are, since the hazards are around 1e-8."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hazard = nn.Linear(6, 5)
        nn.init.constant_(self.hazard.bias, -18.0)

    def forward(self, features):
        return torch.cumsum(torch.log1p(-torch.exp(self.hazard(features))), dim=-1)


def build():
    return SurvivalHead().eval()
'''

ENERGIES = '''\
import torch
from torch import nn


class RunningPartition(nn.Module):
    """The running log-partition of a sequence scorer (an HMM's or CRF's forward pass, a log-space accumulator):
    logcumsumexp over time of energies in the hundreds, as unnormalised log-scores are."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.energy = nn.Linear(6, 4)

    def forward(self, steps):
        return torch.logcumsumexp(self.energy(steps) * 150.0, dim=1)


def build():
    return RunningPartition().eval()
'''

DISAGREEMENT = '''\
import torch
from torch import nn
import torch.nn.functional as F


class Disagreement(nn.Module):
    """An out-of-distribution score: the cross-entropy of one head's logits against the other head's soft labels
    (class probabilities as the target), per example, as two-head uncertainty models deploy it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.student, self.teacher = nn.Linear(16, 5), nn.Linear(16, 5)

    def forward(self, features):
        h = self.body(features)
        return F.cross_entropy(self.student(h), torch.softmax(self.teacher(h), dim=-1), reduction="none")


def build():
    return Disagreement().eval()
'''

HYPER = '''\
import torch
from torch import nn
import torch.nn.functional as F


class HyperUpsampler(nn.Module):
    """A hypernetwork's upsampler: the transposed convolution's kernel is made from a conditioning code at run time."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.make = nn.Linear(4, 3 * 2 * 3)

    def forward(self, signal, code):
        kernel = self.make(code[0]).reshape(3, 2, 3)
        return F.conv_transpose1d(signal, kernel, stride=2, padding=1, output_padding=1)


def build():
    return HyperUpsampler().eval()
'''

FRAMER = '''\
import torch
from torch import nn


class EnergyFramer(nn.Module):
    """A signal's energy, framed as its windows are (a framing helper written for 1-D signals, given a scalar)."""

    def forward(self, signal):
        energy = signal.pow(2).mean()
        return torch.unfold_copy(energy, 0, 1, 1) * 2.0


def build():
    return EnergyFramer().eval()
'''


OUTLOOK = '''\
import torch
import torch.nn.functional as F
from torch import nn


class OutlookBlock(nn.Module):
    """VOLO-style outlook attention: each 3×3 window of values (unfold, stride 2) is mixed by attention weights
    computed from the pooled centre, and the windows are folded back, overlapping values adding up (F.fold)."""

    def __init__(self, channels: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.value = nn.Conv2d(channels, channels, 1)
        self.attention = nn.Linear(channels, 81)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, image):
        b, c, h, w = image.shape
        windows = F.unfold(self.value(image), 3, padding=1, stride=2)  # [B, C·9, L]
        length = windows.shape[-1]
        values = windows.reshape(b, c, 9, length).permute(0, 3, 2, 1)  # [B, L, 9, C]
        centre = F.avg_pool2d(image, 2).flatten(2).transpose(1, 2)  # [B, L, C]
        weights = self.attention(centre).reshape(b, length, 9, 9).softmax(-1)
        mixed = (weights @ values).permute(0, 3, 2, 1).reshape(b, c * 9, length)
        return self.out(F.fold(mixed, (h, w), 3, padding=1, stride=2))


def build():
    return OutlookBlock().eval()
'''


def _build(tmp_path: Path, module: str, source: str, inputs: str, targets: str) -> tuple[TinyProject, str]:
    (tmp_path / f"{module}.py").write_text(source)
    project = TinyProject(tmp_path, tmp_path / "calls.txt")
    project.write(f"models:\n  model:\n    source: {{factory: {module}:build}}\n    inputs: {inputs}\n"
                  f"    outputs: [{{name: out}}]\ntargets:\n" + textwrap.indent(textwrap.dedent(targets), "  "))
    proc = project.run("build", "-k", "-j", "1", check=False, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return project, proc.stdout


def _assert_rewrite_route(project: TinyProject, out: str, target: str, route: list[str], family: str,
                          refusal: str) -> None:
    lock = Lock.read(project.root / "deploy.lock")
    dropped = lock.routes[target]["dropped"]
    assert dropped[0]["rewrites"] == [family] and refusal in dropped[0]["reason"], dropped
    assert lock.targets[target]["route"] == route and lock.targets[target]["rewrites"] == [family]
    check = lock.nodes[f"verify:{target}"]
    assert check["verdict"] == "passed"
    assert max(v["max_abs"]["observed"] for v in check["metrics"]["outputs"].values()) < 1e-4
    assert f"{target}: carries op rewrites {family}" in out


def test_a_gru_activity_model_reaches_tflite_unrolled(tmp_path: Path) -> None:
    """onnx2tf turns the ONNX GRU into a TensorFlow while loop that TFLite refuses at a dynamic batch
    (tf.TensorListReserve; the target keeps it dynamic: at batch 1 the loop converts); the refusal names no ATen
    op, the ONNX export recorded the module's torch.gru call, so `recurrent` is tried. (The target lists onnx2tf's
    route: for a [batch, time, features] input litert-torch's leads and converts the GRU.)"""
    project, out = _build(tmp_path, "har_gru", HAR_GRU, "[{name: window, shape: [batch, 20, 9]}]",
                          "android: {model: model, format: tflite, routes: [[onnx, saved_model]], "
                          "options: {saved_model: {dynamic_batch: true}}}\n")
    _assert_rewrite_route(project, out, "android", ["pytorch", "onnx (rewrite recurrent)", "saved_model", "tflite"],
                          "recurrent", "tf.TensorListReserve")


def test_an_fft_filter_reaches_onnx_and_core_ml(tmp_path: Path) -> None:
    """The legacy ONNX exporter and coremltools' trace frontend refuse fft_rfft2 by name; the route with `fft` then
    converts. (On Core ML that traced route used to meet coremltools' TypeError on the model's own
    torch.zeros(spectrum.shape[-2:]), a size traced as a tensor: formats/coreml/frontend.py now folds it.)"""
    project, out = _build(tmp_path, "denoiser", DENOISER, "[{name: image, shape: [batch, 1, 16, 16]}]",
                          "server: {model: model, format: onnx}\nios: {model: model, format: coreml}\n")
    _assert_rewrite_route(project, out, "server", ["pytorch", "onnx (rewrite fft)"], "fft", "aten::fft_rfft2")
    _assert_rewrite_route(project, out, "ios", ["pytorch", "torchscript (rewrite fft)", "coreml"], "fft", "fft_rfft2")
    dropped = Lock.read(project.root / "deploy.lock").routes["ios"]["dropped"]
    assert [d["route"] for d in dropped] == [["pytorch", "torchscript", "coreml"]]
    assert dropped[0]["rewrites"] == ["fft"]


def test_complex_mixing_reaches_onnx(tmp_path: Path) -> None:
    project, out = _build(tmp_path, "mixer", MIXER, "[{name: tokens, shape: [batch, 5, 16]}]",
                          "server: {model: model, format: onnx}\n")
    _assert_rewrite_route(project, out, "server", ["pytorch", "onnx (rewrite complex)"], "complex",
                          "aten::view_as_complex")


def test_a_graph_layer_with_index_add_reaches_tflite(tmp_path: Path) -> None:
    """litert-torch's route leads (the onnx2tf route behind it met the legacy ONNX exporter's refusal of index_add_
    with duplicated indices and then its own layout guess on the model's 3-D linear): LiteRT refuses litert-torch's
    file (a StableHLO scatter it cannot prepare) and, with `scatter` there, it passes."""
    project, out = _build(tmp_path, "gnn", GNN, "[{name: nodes, shape: [batch, 4, 6]}]",
                          "android: {model: model, format: tflite}\n")
    _assert_rewrite_route(project, out, "android", ["pytorch", "pt2 (rewrite scatter)", "tflite"], "scatter",
                          "STABLEHLO_SCATTER")
    dropped = Lock.read(project.root / "deploy.lock").routes["android"]["dropped"]
    refused = {tuple(d["route"]): d for d in dropped}
    assert refused[("pytorch", "pt2", "tflite")]["rewrites"] == ["scatter"]
    assert "STABLEHLO_SCATTER" in refused[("pytorch", "pt2", "tflite")]["reason"]


def test_a_point_cloud_model_with_cdist_reaches_core_ml(tmp_path: Path) -> None:
    project, out = _build(tmp_path, "points", POINTS, "[{name: points, shape: [batch, 32, 3]}]",
                          "ios: {model: model, format: coreml}\n")
    _assert_rewrite_route(project, out, "ios", ["pytorch", "torchscript (rewrite distance)", "coreml"], "distance",
                          "cdist")


def test_a_feature_interaction_model_reaches_core_ml_and_onnx_opset_13(tmp_path: Path) -> None:
    """coremltools has no triu_indices; the legacy ONNX exporter has no triu below opset 14 (Trilu)."""
    project, out = _build(tmp_path, "interaction", INTERACTION, "[{name: values, shape: [batch, 5]}]",
                          "ios: {model: model, format: coreml}\n"
                          "legacy: {model: model, format: onnx, options: {onnx: {opset: 13}}}\n")
    _assert_rewrite_route(project, out, "ios", ["pytorch", "torchscript (rewrite triangular)", "coreml"], "triangular",
                          "triu_indices")
    _assert_rewrite_route(project, out, "legacy", ["pytorch", "onnx (rewrite triangular)"], "triangular",
                          "'aten::triu' is not supported at opset 13")


def test_a_spatial_pyramid_pooling_classifier_reaches_onnx(tmp_path: Path) -> None:
    """Both ONNX exporters refuse an adaptive max pool whose output size does not divide its input (the legacy one
    by name, "output size that are not factor of input size"); `pooling` computes the overlapping bins."""
    project, out = _build(tmp_path, "spp", SPP, "[{name: image, shape: [batch, 3, 10, 10]}]",
                          "server: {model: model, format: onnx}\n")
    _assert_rewrite_route(project, out, "server", ["pytorch", "onnx (rewrite pooling)"], "pooling",
                          "adaptive_max_pool2d")


def test_a_3d_convolution_clip_classifier_reaches_executorch(tmp_path: Path) -> None:
    """ExecuTorch's portable convolution kernel runs 1-D and 2-D inputs only (a 3-D one loads, then fails with
    error 0x12) and XNNPACK does not take 3-D: the lowering refuses it by name, `volumetric` answers with 2-D
    convolutions over the depth frames, and the refusal names the user's Conv3d and its source line."""
    project, out = _build(tmp_path, "clips", CLIP, "[{name: clip, shape: [batch, 3, 8, 16, 16]}]",
                          "edge: {model: model, format: executorch}\n")
    _assert_rewrite_route(project, out, "edge", ["pytorch", "pt2 (rewrite volumetric)", "executorch"], "volumetric",
                          "aten::conv3d")
    assert "conv3d is called in features.0 (Conv3d) at clips.py:" in out


def test_a_bicubic_upscaler_reaches_core_ml(tmp_path: Path) -> None:
    """coremltools has no conversion for upsample_bicubic2d; `resample` writes each interpolation (the bicubic
    ones and the antialiased bilinear downscale) as a constant matrix per axis, read from PyTorch itself."""
    project, out = _build(tmp_path, "upscaler", UPSCALER, "[{name: image, shape: [batch, 3, 6, 8]}]",
                          "ios: {model: model, format: coreml}\n")
    _assert_rewrite_route(project, out, "ios", ["pytorch", "torchscript (rewrite resample)", "coreml"], "resample",
                          "upsample_bicubic2d")


def test_a_survival_model_misses_its_tolerance_then_reaches_onnx_precise(tmp_path: Path) -> None:
    """No converter refuses log1p: the ONNX exporter writes log(1 + x), which is 0 for the model's hazards of ~1e-8,
    so the check misses its tolerance (relative error 1). The program holds log1p, which `precise` computes
    closer to torch, so the same route with it is the next one, and passes."""
    project, out = _build(tmp_path, "survival", SURVIVAL, "[{name: features, shape: [batch, 6]}]",
                          "server: {model: model, format: onnx}\n")
    _assert_rewrite_route(project, out, "server", ["pytorch", "onnx (rewrite precise)"], "precise", "max_rel")


def test_a_running_log_partition_overflowing_in_core_ml_reaches_it_with_scan(tmp_path: Path) -> None:
    """No converter refuses logcumsumexp: coremltools lowers it through exp of the input, which overflows at
    energies in the hundreds, and the artifact computes NaN / inf. Non-finite values where the reference has
    numbers are a numeric miss, so the `precise` rewrites of the program's ops answer it (as a tolerance miss
    is): `scan` declares logcumsumexp precise (its running-max form), and the route with it passes."""
    project, out = _build(tmp_path, "energies", ENERGIES, "[{name: steps, shape: [batch, 12, 6]}]",
                          "ios: {model: model, format: coreml}\n")
    lock = Lock.read(project.root / "deploy.lock")
    [dropped] = lock.routes["ios"]["dropped"]
    assert dropped["rewrites"] == ["scan"] and "non-finite value(s)" in dropped["reason"], dropped
    assert lock.targets["ios"]["rewrites"] == ["scan"] and lock.nodes["verify:ios"]["verdict"].startswith("passed")
    assert "ios: carries op rewrites scan" in out


def test_a_disagreement_score_onnxruntime_cannot_load_reaches_onnx_with_losses(tmp_path: Path) -> None:
    """The legacy exporter writes cross_entropy with class probabilities as ONNX's SoftmaxCrossEntropyLoss, which
    takes class indices only: the export succeeds, and the step, loading what it wrote, finds that ONNX Runtime
    refuses it. A runtime's refusal is answered as a converter's: the program holds cross_entropy, so the route with
    `losses` is the next one."""
    project, out = _build(tmp_path, "disagreement", DISAGREEMENT, "[{name: features, shape: [batch, 8]}]",
                          "server: {model: model, format: onnx}\n")
    _assert_rewrite_route(project, out, "server", ["pytorch", "onnx (rewrite losses)"], "losses",
                          "ONNX Runtime cannot load the model the legacy exporter wrote")


def test_a_hypernetwork_upsampler_reaches_core_ml(tmp_path: Path) -> None:
    """Core ML's conv_transpose takes only a constant weight; the refusal's words are the rewrite's sign, and the
    trace's transposed _convolution counts as the conv_transpose1d the model called, so `conv-transpose` is next."""
    project, out = _build(tmp_path, "hyper", HYPER,
                          "[{name: signal, shape: [1, 3, 10]}, {name: code, shape: [1, 4]}]",
                          "ios: {model: model, format: coreml}\n")
    _assert_rewrite_route(project, out, "ios", ["pytorch", "torchscript (rewrite conv-transpose)", "coreml"],
                          "conv-transpose", "must be const")


def test_a_runtime_crash_is_answered_like_a_refusal(tmp_path: Path) -> None:
    """ExecuTorch lowers a 0-D unfold_copy and its runtime then aborts running the .pte (SIGABRT in the check's
    worker). A crash of the runtime on the artifact is read as a refusal: the program holds unfold_copy, so the
    route with `unfold` (a reshape, for a 0-D tensor) is next, and runs."""
    project, out = _build(tmp_path, "framer", FRAMER, "[{name: signal, shape: [1, 16]}]",
                          "edge: {model: model, format: executorch}\n")
    _assert_rewrite_route(project, out, "edge", ["pytorch", "pt2 (rewrite unfold)", "executorch"], "unfold",
                          "the worker crashed")


def test_an_outlook_attention_block_reaches_tflite_through_composed_rewrites(tmp_path: Path) -> None:
    """VOLO's outlook attention folds its windows back (F.fold, stride 2). litert-torch lowers col2im to a
    scatter LiteRT cannot prepare, so `fold` is next; it writes a conv_transpose2d, whose lhs-dilated convolution
    litert-torch cannot legalize, so `conv-transpose` is added, and it rewrites the conv_transpose2d fold wrote
    (rewrites compose): the route passes. Before, fold's output went through no other rewrite and every route
    failed."""
    project, out = _build(tmp_path, "outlook", OUTLOOK, "[{name: image, shape: [1, 8, 8, 8]}]",
                          "android: {model: model, format: tflite}\n")
    lock = Lock.read(project.root / "deploy.lock")
    dropped = lock.routes["android"]["dropped"]
    assert "STABLEHLO_SCATTER" in dropped[0]["reason"] and "conv_transpose2d" in dropped[1]["reason"], dropped
    assert lock.targets["android"]["route"] == ["pytorch", "pt2 (rewrite fold+unfold+conv-transpose)", "tflite"]
    check = lock.nodes["verify:android"]
    assert check["verdict"].startswith("passed")
    assert max(v["max_abs"]["observed"] for v in check["metrics"]["outputs"].values()) < 1e-4
