"""Public architectures for the model matrix, built from the packages users take them from, with seeded weights.

This file is copied verbatim into every project benchmarks/model_matrix.py generates and is its deploy.yaml
factory (`zoo:build`, `kwargs: {arch: NAME}`). `ARCHS` is plain data (the benchmark reads it without importing
any model package); `build` imports timm, transformers, ultralytics or torchvision only when called, under
`torch.manual_seed(0)`, with no download: timm's `create_model(pretrained=False)`, transformers'
`from_config` of a small config, ultralytics' model yaml, torchvision's builders with `weights=None`.

Every module takes positional tensors and returns a tuple of tensors (transformers' output objects and
ultralytics' training-time tuples are unwrapped the way their exporters do: ultralytics heads in export mode,
transformers called with `return_dict=True` and the named outputs taken).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Input size of image models unless an entry says otherwise.
IMAGE = 64
#: Tokens per text sample; vocabulary of the small text configs.
TOKENS, VOCAB = 16, 1000
#: Samples per speech waveform (a quarter second at 16 kHz).
WAVE = 4000


@dataclass(frozen=True)
class Arch:
    """One architecture: where it comes from, how it is built, its inputs and outputs."""

    name: str
    category: str  # classification | detection | segmentation | speech | text-encoder | text-decoder
    package: str  # timm | transformers | ultralytics | torchvision
    builder: str  # the package's name for it: a timm model, a transformers class, a yaml, a torchvision builder
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape without the batch axis, data kind)
    outputs: tuple[tuple[str, str], ...]  # (name, kind: scores | values)
    options: dict[str, Any] = field(default_factory=dict)


def _image(size: int = IMAGE, channels: int = 3) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return (("pixels", (channels, size, size), "image"),)


_TEXT = (("input_ids", (TOKENS,), "tokens"), ("attention_mask", (TOKENS,), "mask"))
_IDS = (("input_ids", (TOKENS,), "tokens"),)
_WAVE = (("waveform", (WAVE,), "audio"),)
_LOGITS = (("logits", "scores"),)
_HIDDEN = (("hidden", "values"),)
_BOXES = (("logits", "values"), ("boxes", "values"))


def _timm(name: str, size: int = IMAGE, **options: Any) -> Arch:
    return Arch(name, "classification", "timm", name, _image(size), _LOGITS, {"num_classes": 10, **options})


def _hf(name: str, category: str, cls: str, config: str, inputs: Any, outputs: Any, attrs: tuple[str, ...],
        **cfg: Any) -> Arch:
    return Arch(name, category, "transformers", cls, inputs, outputs, {"config": config, "attrs": attrs, "cfg": cfg})


_SMALL_TEXT = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 128, "max_position_embeddings": 64}
_SMALL_DECODER = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 128, "max_position_embeddings": 64}
_SMALL_VISION = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                 "image_size": IMAGE, "num_labels": 10}
_SMALL_AUDIO = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                "conv_dim": (32, 32, 32), "conv_stride": (5, 4, 2), "conv_kernel": (10, 4, 2),
                "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}

ARCHS: tuple[Arch, ...] = (
    # --- classification: timm ------------------------------------------------------------------------
    _timm("resnet18"), _timm("resnet50"), _timm("mobilenetv2_100"), _timm("mobilenetv3_small_100"),
    _timm("mobilenetv4_conv_small"), _timm("efficientnet_b0"), _timm("convnext_atto"), _timm("regnety_002"),
    _timm("ghostnet_100"), _timm("densenet121"), _timm("vit_tiny_patch16_224", img_size=IMAGE),
    _timm("mobilevit_xxs"), _timm("mobilevitv2_050"), _timm("efficientvit_b0"),
    _timm("levit_128s", 64, img_size=64), _timm("repvit_m0_9"), _timm("fastvit_t8"),
    _timm("mixer_s16_224", img_size=IMAGE), _timm("hrnet_w18_small"), _timm("inception_v3", 96),
    _timm("edgenext_xx_small"), _timm("mobileone_s0"), _timm("pvt_v2_b0"), _timm("tiny_vit_5m_224", 224),
    _timm("eva02_tiny_patch14_224", 56, img_size=56), _timm("sequencer2d_s"),
    _timm("xcit_nano_12_p16_224", img_size=IMAGE),
    _timm("efficientformerv2_s0", 64, img_size=64), _timm("swin_tiny_patch4_window7_224", 224),
    _timm("starnet_s1"), _timm("mambaout_femto"), _timm("hgnetv2_b0"), _timm("coat_lite_tiny", img_size=IMAGE),
    # --- classification: transformers ----------------------------------------------------------------
    _hf("hf-vit", "classification", "ViTForImageClassification", "ViTConfig", _image(), _LOGITS, ("logits",),
        patch_size=8, **_SMALL_VISION),
    _hf("hf-dinov2", "classification", "Dinov2ForImageClassification", "Dinov2Config", _image(), _LOGITS,
        ("logits",), patch_size=8, **_SMALL_VISION),
    _hf("hf-convnextv2", "classification", "ConvNextV2ForImageClassification", "ConvNextV2Config", _image(),
        _LOGITS, ("logits",), hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10),
    _hf("hf-clip-vision", "classification", "CLIPVisionModel", "CLIPVisionConfig", _image(), (("pooled", "values"),),
        ("pooler_output",), patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, image_size=IMAGE),
    # --- detection ------------------------------------------------------------------------------------
    Arch("yolo11n", "detection", "ultralytics", "yolo11n.yaml", _image(128), (("boxes", "values"),)),
    Arch("yolov8n", "detection", "ultralytics", "yolov8n.yaml", _image(128), (("boxes", "values"),)),
    Arch("yolov10n", "detection", "ultralytics", "yolov10n.yaml", _image(128), (("boxes", "values"),)),
    Arch("yolo12n", "detection", "ultralytics", "yolo12n.yaml", _image(128), (("boxes", "values"),)),
    Arch("yolo26n", "detection", "ultralytics", "yolo26n.yaml", _image(128), (("boxes", "values"),)),
    Arch("yolo11n-pose", "detection", "ultralytics", "yolo11n-pose.yaml", _image(128), (("boxes", "values"),)),
    Arch("rtdetr-l", "detection", "ultralytics", "rtdetr-l.yaml", _image(128), (("boxes", "values"),)),
    _hf("hf-detr", "detection", "DetrForObjectDetection", "DetrConfig", _image(), _BOXES,
        ("logits", "pred_boxes"), use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False,
        d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=10, num_labels=5),
    _hf("hf-yolos", "detection", "YolosForObjectDetection", "YolosConfig", _image(), _BOXES,
        ("logits", "pred_boxes"), patch_size=8, num_detection_tokens=10, num_labels=5,
        **{k: v for k, v in _SMALL_VISION.items() if k not in ("image_size", "num_labels")}, image_size=[IMAGE, IMAGE]),
    # --- segmentation ---------------------------------------------------------------------------------
    Arch("yolo11n-seg", "segmentation", "ultralytics", "yolo11n-seg.yaml", _image(128),
         (("boxes", "values"), ("protos", "values"))),
    _hf("hf-segformer", "segmentation", "SegformerForSemanticSegmentation", "SegformerConfig", _image(),
        (("logits", "values"),), ("logits",), num_labels=5, hidden_sizes=[16, 32, 64, 128], decoder_hidden_size=64,
        depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 4, 4]),
    _hf("hf-mobilevit-seg", "segmentation", "MobileViTForSemanticSegmentation", "MobileViTConfig", _image(),
        (("logits", "values"),), ("logits",), num_labels=5, image_size=IMAGE),
    _hf("hf-dpt-depth", "segmentation", "DPTForDepthEstimation", "DPTConfig", _image(), (("depth", "values"),),
        ("predicted_depth",), patch_size=8, backbone_out_indices=[0, 1, 2, 3], num_hidden_layers=4,
        **{k: v for k, v in _SMALL_VISION.items() if k not in ("num_hidden_layers", "num_labels")},
        neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32),
    Arch("deeplabv3-mobilenet", "segmentation", "torchvision", "deeplabv3_mobilenet_v3_large", _image(),
         (("out", "values"),), {"num_classes": 5}),
    Arch("lraspp-mobilenet", "segmentation", "torchvision", "lraspp_mobilenet_v3_large", _image(),
         (("out", "values"),), {"num_classes": 5}),
    # --- speech ---------------------------------------------------------------------------------------
    _hf("hf-wav2vec2", "speech", "Wav2Vec2Model", "Wav2Vec2Config", _WAVE, _HIDDEN, ("last_hidden_state",),
        **_SMALL_AUDIO),
    _hf("hf-hubert", "speech", "HubertModel", "HubertConfig", _WAVE, _HIDDEN, ("last_hidden_state",), **_SMALL_AUDIO),
    _hf("hf-wavlm", "speech", "WavLMModel", "WavLMConfig", _WAVE, _HIDDEN, ("last_hidden_state",), **_SMALL_AUDIO),
    _hf("hf-whisper-encoder", "speech", "WhisperForAudioClassification", "WhisperConfig",
        (("features", (16, 64), "features"),), _LOGITS, ("logits",), num_mel_bins=16, max_source_positions=32,
        d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
        decoder_attention_heads=4, decoder_ffn_dim=128, vocab_size=VOCAB, num_labels=10),
    _hf("hf-ast", "speech", "ASTForAudioClassification", "ASTConfig", (("features", (64, 16), "features"),), _LOGITS,
        ("logits",), max_length=64, num_mel_bins=16, patch_size=8, frequency_stride=8, time_stride=8,
        num_labels=10, **{k: v for k, v in _SMALL_VISION.items() if k not in ("image_size", "num_labels")}),
    _hf("hf-data2vec-audio", "speech", "Data2VecAudioModel", "Data2VecAudioConfig", _WAVE, _HIDDEN,
        ("last_hidden_state",), **_SMALL_AUDIO),
    # --- text encoders --------------------------------------------------------------------------------
    _hf("hf-bert", "text-encoder", "BertModel", "BertConfig", _TEXT, _HIDDEN, ("last_hidden_state",), **_SMALL_TEXT),
    _hf("hf-distilbert", "text-encoder", "DistilBertModel", "DistilBertConfig", _TEXT, _HIDDEN,
        ("last_hidden_state",), vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
        max_position_embeddings=64),
    _hf("hf-roberta", "text-encoder", "RobertaModel", "RobertaConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        **{**_SMALL_TEXT, "max_position_embeddings": 64 + 2}),
    _hf("hf-albert", "text-encoder", "AlbertModel", "AlbertConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        embedding_size=32, **_SMALL_TEXT),
    _hf("hf-electra", "text-encoder", "ElectraModel", "ElectraConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        embedding_size=32, **_SMALL_TEXT),
    _hf("hf-deberta-v2", "text-encoder", "DebertaV2Model", "DebertaV2Config", _TEXT, _HIDDEN, ("last_hidden_state",),
        **_SMALL_TEXT),
    _hf("hf-mobilebert", "text-encoder", "MobileBertModel", "MobileBertConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32, num_feedforward_networks=2,
        **_SMALL_TEXT),
    _hf("hf-mpnet", "text-encoder", "MPNetModel", "MPNetConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        **{**_SMALL_TEXT, "max_position_embeddings": 64 + 2}),
    _hf("hf-modernbert", "text-encoder", "ModernBertModel", "ModernBertConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        **{**_SMALL_TEXT, "global_attn_every_n_layers": 2, "local_attention": 8, "pad_token_id": 0,
           "eos_token_id": 2, "bos_token_id": 1, "cls_token_id": 1, "sep_token_id": 2}),
    _hf("hf-t5-encoder", "text-encoder", "T5EncoderModel", "T5Config", _TEXT, _HIDDEN, ("last_hidden_state",),
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
    _hf("hf-clip-text", "text-encoder", "CLIPTextModel", "CLIPTextConfig", _TEXT, (("pooled", "values"),),
        ("pooler_output",), **{**_SMALL_TEXT, "eos_token_id": 2}),
    _hf("hf-xlnet", "text-encoder", "XLNetModel", "XLNetConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        vocab_size=VOCAB, d_model=64, n_layer=2, n_head=4, d_inner=128),
    _hf("hf-funnel", "text-encoder", "FunnelBaseModel", "FunnelConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        vocab_size=VOCAB, block_sizes=[1, 1], d_model=64, n_head=4, d_head=16, d_inner=128),
    _hf("hf-roformer", "text-encoder", "RoFormerModel", "RoFormerConfig", _TEXT, _HIDDEN, ("last_hidden_state",),
        embedding_size=64, **_SMALL_TEXT),
    _hf("hf-squeezebert", "text-encoder", "SqueezeBertModel", "SqueezeBertConfig", _TEXT, _HIDDEN,
        ("last_hidden_state",), embedding_size=64, **_SMALL_TEXT),
    # --- text decoders --------------------------------------------------------------------------------
    _hf("hf-gpt2", "text-decoder", "GPT2LMHeadModel", "GPT2Config", _IDS, _LOGITS, ("logits",), vocab_size=VOCAB,
        n_embd=64, n_layer=2, n_head=4, n_positions=64),
    _hf("hf-llama", "text-decoder", "LlamaForCausalLM", "LlamaConfig", _IDS, _LOGITS, ("logits",),
        num_key_value_heads=2, **_SMALL_DECODER),
    _hf("hf-mistral", "text-decoder", "MistralForCausalLM", "MistralConfig", _IDS, _LOGITS, ("logits",),
        num_key_value_heads=2, sliding_window=8, **_SMALL_DECODER),
    _hf("hf-qwen2", "text-decoder", "Qwen2ForCausalLM", "Qwen2Config", _IDS, _LOGITS, ("logits",),
        num_key_value_heads=2, **_SMALL_DECODER),
    _hf("hf-qwen3", "text-decoder", "Qwen3ForCausalLM", "Qwen3Config", _IDS, _LOGITS, ("logits",),
        num_key_value_heads=2, head_dim=16, **_SMALL_DECODER),
    _hf("hf-phi3", "text-decoder", "Phi3ForCausalLM", "Phi3Config", _IDS, _LOGITS, ("logits",),
        num_key_value_heads=2, pad_token_id=0, **_SMALL_DECODER),
    _hf("hf-gemma", "text-decoder", "GemmaForCausalLM", "GemmaConfig", _IDS, _LOGITS, ("logits",),
        num_key_value_heads=1, head_dim=16, **_SMALL_DECODER),
    _hf("hf-gpt-neox", "text-decoder", "GPTNeoXForCausalLM", "GPTNeoXConfig", _IDS, _LOGITS, ("logits",),
        **_SMALL_DECODER),
    _hf("hf-opt", "text-decoder", "OPTForCausalLM", "OPTConfig", _IDS, _LOGITS, ("logits",), vocab_size=VOCAB,
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64,
        max_position_embeddings=64),
    _hf("hf-bloom", "text-decoder", "BloomForCausalLM", "BloomConfig", _IDS, _LOGITS, ("logits",), vocab_size=VOCAB,
        hidden_size=64, n_layer=2, n_head=4),
    _hf("hf-mamba", "text-decoder", "MambaForCausalLM", "MambaConfig", _IDS, _LOGITS, ("logits",), vocab_size=VOCAB,
        hidden_size=64, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
)

#: Architectures no matrix, test or doc of modelbuild named before they were measured (issue 56), by a rule fixed
#: before the first run (benchmarks/model_matrix.py --unseen; docs/coverage.md, "Never seen before"):
#: - timm: of its model modules none of the above (nor benchmarks/unseen_windows.py) comes from, sorted by name, those
#:   whose smallest model holds at most 15 M parameters (counted on the meta device), every second one from the
#:   first; of each, that smallest model at its own input size;
#: - torchvision: its video and optical-flow builders of at most 15 M parameters that run at 8 frames of 64 × 64
#:   (mc3_18; s3d's pooling needs 16 frames of 224) or two 128 × 128 images (raft_small), and its two smallest
#:   classifiers (shufflenet_v2_x0_5, squeezenet1_1);
#: - transformers: one small config of each class issue 56 names that the zoo lacks: a sliding-window long-document
#:   encoder (Longformer), a time-series forecaster (PatchTST) and an audio codec (EnCodec).
UNSEEN: tuple[Arch, ...] = (
    *(_timm(name, size) for name, size in (
        ("halonet_h1", 256), ("convit_tiny", 224), ("crossvit_tiny_240", 240), ("cs3darknet_focus_s", 256),
        ("deit_tiny_patch16_224", 224), ("dpn48b", 224), ("efficientvim_m1", 224), ("hardcorenas_b", 224),
        ("inception_next_atto", 224), ("lowformer_b0", 224), ("poolformerv2_s12", 224), ("pit_ti_224", 224),
        ("resnest14d", 224), ("rexnet_100", 224), ("shvit_s1", 224), ("swiftformer_xs", 224),
        ("vit_tiny_r_s16_p8_224", 224), ("ese_vovnet19b_slim_dw", 224))),
    Arch("tv-mc3_18", "video", "torchvision", "mc3_18", (("clip", (3, 8, 64, 64), "image"),), _LOGITS,
         {"num_classes": 10}),
    Arch("tv-raft_small", "optical-flow", "torchvision", "raft_small",
         (("first", (3, 128, 128), "image"), ("second", (3, 128, 128), "image")),
         tuple((f"flow_{i}", "values") for i in range(1, 5)),
         {"call": {"num_flow_updates": 4}}),
    Arch("tv-shufflenet_v2_x0_5", "classification", "torchvision", "shufflenet_v2_x0_5", _image(), _LOGITS,
         {"num_classes": 10}),
    Arch("tv-squeezenet1_1", "classification", "torchvision", "squeezenet1_1", _image(), _LOGITS,
         {"num_classes": 10}),
    _hf("hf-longformer", "text-encoder", "LongformerModel", "LongformerConfig", _TEXT, _HIDDEN,
        ("last_hidden_state",), attention_window=8, **{**_SMALL_TEXT, "max_position_embeddings": 64 + 2}),
    _hf("hf-patchtst", "time-series", "PatchTSTForPrediction", "PatchTSTConfig",
        (("past_values", (64, 3), "features"),), (("forecast", "values"),), ("prediction_outputs",),
        num_input_channels=3, context_length=64, prediction_length=16, patch_length=8, patch_stride=8, d_model=32,
        num_attention_heads=4, num_hidden_layers=2, ffn_dim=64),
    _hf("hf-encodec", "speech", "EncodecModel", "EncodecConfig", (("waveform", (1, WAVE), "audio"),),
        (("audio", "values"),), ("audio_values",), audio_channels=1, num_filters=8, num_residual_layers=1,
        upsampling_ratios=[4, 4, 2], hidden_size=32, codebook_size=64, target_bandwidths=[1.5], sampling_rate=8000,
        num_lstm_layers=1),
)

BY_NAME = {a.name: a for a in (*ARCHS, *UNSEEN)}


class Outputs(nn.Module):
    """A model called with its one or two inputs by name, returning the named attributes of its output as a tuple.

    The inputs are named parameters, not `*tensors`: torch.export matches `dynamic_shapes` to the signature, and a
    variadic forward takes them as one tuple (modelbuild's export with a dynamic batch then fails)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], attrs: tuple[str, ...], **call: Any) -> None:
        super().__init__()
        self.model, self.names, self.attrs, self.call = model, names, attrs, call

    def forward(self, first: torch.Tensor, second: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        given = (first,) if second is None else (first, second)
        out = self.model(**dict(zip(self.names, given)), **self.call)
        return tuple(getattr(out, a) if not isinstance(out, dict) else out[a] for a in self.attrs)


class Flat(nn.Module):
    """A model whose output (a tensor, or a tuple/list/dict of them) is returned as a flat tuple of tensors."""

    def __init__(self, model: nn.Module, **call: Any) -> None:
        super().__init__()
        self.model, self.call = model, call

    def forward(self, first: torch.Tensor, second: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        out = self.model(first, **self.call) if second is None else self.model(first, second, **self.call)
        if isinstance(out, dict):
            out = tuple(out.values())
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _build_timm(arch: Arch) -> nn.Module:
    import timm  # type: ignore[import-not-found]  # from the package directory (site_packages.py)

    return Flat(timm.create_model(arch.builder, pretrained=False, **arch.options))


def _build_transformers(arch: Arch) -> nn.Module:
    import transformers

    config = getattr(transformers, arch.options["config"])(**arch.options["cfg"])
    config._attn_implementation = "eager"  # noqa: SLF001 - the attention users export: no fused kernels
    model = getattr(transformers, arch.builder)(config)
    call: dict[str, Any] = {"return_dict": True}
    if arch.category == "text-decoder":
        call["use_cache"] = False
    names = tuple(n if n != "pixels" else "pixel_values" for n, _, _ in arch.inputs)
    names = tuple({"waveform": "input_values", "features": "input_features" if "Whisper" in arch.builder
                   else "input_values"}.get(n, n) for n in names)
    return Outputs(model, names, tuple(arch.options["attrs"]), **call)


def _build_ultralytics(arch: Arch) -> nn.Module:
    from ultralytics.nn import tasks  # type: ignore[import-not-found]

    kind = tasks.RTDETRDetectionModel if arch.builder.startswith("rtdetr") else \
        tasks.SegmentationModel if "-seg" in arch.builder else tasks.PoseModel if "-pose" in arch.builder else \
        tasks.DetectionModel
    model = kind(arch.builder, verbose=False)
    for m in model.modules():  # as ultralytics' own exporter does: heads return their decoded output alone
        if hasattr(m, "export") and hasattr(m, "format"):
            m.export = True
    return Flat(model)


def _build_torchvision(arch: Arch) -> nn.Module:
    from torchvision import models  # type: ignore[import-not-found]
    from torchvision.models import segmentation  # type: ignore[import-not-found]

    options = {k: v for k, v in arch.options.items() if k != "call"}
    if arch.category == "segmentation":
        return Flat(getattr(segmentation, arch.builder)(weights=None, weights_backbone=None, **options))
    return Flat(models.get_model(arch.builder, weights=None, **options), **arch.options.get("call", {}))


def build(arch: str) -> nn.Module:
    """The deploy.yaml factory: the architecture named `arch` with seeded weights, in eval mode."""
    spec = BY_NAME[arch]
    torch.manual_seed(0)
    make = {"timm": _build_timm, "transformers": _build_transformers, "ultralytics": _build_ultralytics,
            "torchvision": _build_torchvision}[spec.package]
    return make(spec).eval()
