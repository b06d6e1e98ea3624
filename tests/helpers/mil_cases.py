"""One small MIL program per op for the reference interpreter's tests: built on consts with coremltools'
Builder, checked against coremltools' value inference (VALUE_CASES) or against PyTorch (TORCH_CASES)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from coremltools import target
from coremltools.converters.mil import Builder as mb

F = torch.nn.functional
RNG = np.random.default_rng(7)  # integer and boolean data, drawn at import


def arr(*shape: int, seed: int = 0) -> np.ndarray:
    """Standard-normal float32 data that depends only on (shape, seed): cases built lazily, in any
    order or selection, see the same numbers (and a case's MIL and PyTorch halves share them)."""
    return np.random.default_rng([seed, *shape]).standard_normal(shape).astype(np.float32)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


X = arr(2, 3, 4)
POS = np.abs(arr(2, 3, 4, seed=1)) + 0.1
UNIT = (np.tanh(arr(2, 3, 4, seed=2)) * 0.9).astype(np.float32)
IMG = arr(2, 4, 6, 6)
BOOL_A, BOOL_B = RNG.random((2, 3)) > 0.5, RNG.random((2, 3)) > 0.5
INTS = RNG.integers(-7, 8, (2, 3)).astype(np.int32)
GRID = (1.4 * np.tanh(arr(2, 5, 7, 2, seed=3))).astype(np.float32)  # resample's coordinates, some outside the image
THETA = (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) + 0.3 * arr(2, 2, 3, seed=4)).astype(np.float32)


@dataclass(frozen=True)
class Case:
    """A program for one op: `build` makes it on consts (or on the function inputs `live`, fed with
    their values, where coremltools' value inference fails at build time); `torch` (TORCH_CASES)
    gives the expected outputs."""

    op: str
    build: Callable[..., Any]
    torch: Callable[[], Any] | None = None
    label: str = ""
    opset: Any = target.iOS17
    rtol: float = 1e-5
    atol: float = 1e-6
    live: tuple[np.ndarray, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.op}-{self.label}" if self.label else self.op


def unary(op: str, x: np.ndarray = X, **kw: Any) -> Case:
    # a copy: coremltools' value inference of thresholded_relu writes into its input
    return Case(op, lambda: getattr(mb, op)(x=x.copy(), **kw), label=",".join(kw))


VALUE_CASES: list[Case] = [
    *[unary(op) for op in ("abs", "ceil", "cos", "cosh", "exp", "exp2", "floor", "round", "sign", "sin", "sinh",
                           "square", "tanh", "erf", "relu", "sigmoid", "softplus", "softsign", "identity")],
    unary("tan", X * 0.5), unary("relu6", X * 4),
    *[unary(op, POS) for op in ("sqrt",)],
    unary("rsqrt", POS, epsilon=1e-3), unary("log", POS, epsilon=1e-3), unary("inverse", POS, epsilon=1e-2),
    *[unary(op, UNIT) for op in ("acos", "asin", "atan", "atanh")],
    Case("logical_not", lambda: mb.logical_not(x=BOOL_A)),
    unary("clip", alpha=-0.5, beta=0.5), unary("threshold", alpha=0.2), unary("elu", alpha=0.7),
    unary("leaky_relu", alpha=0.1), unary("sigmoid_hard", alpha=0.3, beta=0.4),
    unary("linear_activation", alpha=2.0, beta=0.5), unary("scaled_tanh", alpha=1.5, beta=0.7),
    unary("thresholded_relu", alpha=0.3), unary("clamped_relu", alpha=0.1, beta=0.8),
    *[Case("gelu", lambda m=m: mb.gelu(x=X * 3, mode=m), label=m)
      for m in ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION")],
    Case("prelu", lambda: mb.prelu(x=IMG, alpha=np.array([0.1, 0.2, -0.3, 0.4], np.float32))),
    Case("softplus_parametric", lambda: mb.softplus_parametric(
        x=IMG, alpha=np.array([1, 2, 3, 4], np.float32), beta=np.array([0.5, 1, 1.5, 2], np.float32))),
    *[Case(op, lambda op=op: getattr(mb, op)(x=X, y=arr(3, 1)), label="broadcast")
      for op in ("add", "sub", "mul", "real_div", "maximum", "minimum", "equal", "not_equal", "greater",
                 "greater_equal", "less", "less_equal")],
    Case("pow", lambda: mb.pow(x=POS, y=arr(4))),
    Case("floor_div", lambda: mb.floor_div(x=X * 5, y=np.float32(1.5))),
    Case("floor_div", lambda: mb.floor_div(x=INTS, y=np.int32(3)), label="int"),
    Case("mod", lambda: mb.mod(x=X * 5, y=np.float32(1.5))),
    Case("real_div", lambda: mb.real_div(x=INTS, y=np.int32(2)), label="int"),
    *[Case(op, lambda op=op: getattr(mb, op)(x=BOOL_A, y=BOOL_B)) for op in ("logical_and", "logical_or",
                                                                           "logical_xor")],
    *[Case("cast", lambda d=d: mb.cast(x=X * 4, dtype=d), label=d) for d in ("fp16", "int32", "bool")],
    Case("select", lambda: mb.select(cond=BOOL_A, a=arr(2, 3), b=arr(3))),
    Case("fill", lambda: mb.fill(shape=np.array([2, 3], np.int32), value=1.5)),
    Case("fill_like", lambda: mb.fill_like(ref_tensor=X, value=2.5), opset=target.iOS16),
    # shapes and indexing
    Case("reshape", lambda: mb.reshape(x=X, shape=np.array([4, -1], np.int32))),
    Case("reshape", lambda: mb.reshape(x=X, shape=np.array([0, -1], np.int32)), label="zero"),
    Case("transpose", lambda: mb.transpose(x=X, perm=[2, 0, 1])),
    Case("expand_dims", lambda: mb.expand_dims(x=X, axes=[0, -1])),
    Case("squeeze", lambda: mb.squeeze(x=arr(1, 3, 1), axes=[0])),
    Case("squeeze", lambda: mb.squeeze(x=arr(1, 3, 1)), label="all"),
    Case("flatten2d", lambda: mb.flatten2d(x=X, axis=2)),
    Case("concat", lambda: mb.concat(values=(X, arr(2, 1, 4)), axis=1)),
    Case("stack", lambda: mb.stack(values=(X, arr(2, 3, 4, seed=1)), axis=1)),
    Case("split", lambda: mb.split(x=X, num_splits=2, axis=-1)),
    Case("split", lambda: mb.split(x=X, split_sizes=[1, 2], axis=1), label="sizes"),
    Case("slice_by_index", lambda: mb.slice_by_index(
        x=X, begin=[1, 0, 3], end=[2, 3, 0], stride=[1, 2, -1], begin_mask=[False, True, False],
        end_mask=[False, False, True], squeeze_mask=[True, False, False])),
    Case("slice_by_size", lambda: mb.slice_by_size(x=X, begin=[0, 1, -3], size=[2, -1, 2])),
    Case("slice_update", lambda: mb.slice_update(x=X, update=arr(2, 1, 2), begin=[0, 1, 0], end=[2, 2, 4],
                                                 stride=[1, 1, 2]), opset=target.iOS18),
    Case("gather", lambda: mb.gather(x=X, indices=np.array([[2, -1], [0, 1]], np.int32), axis=1)),
    Case("gather", lambda: mb.gather(x=X, indices=np.array([[1, 0], [2, 2]], np.int32), axis=1, batch_dims=1),
         label="batch_dims", opset=target.iOS16),
    Case("gather_along_axis", lambda: mb.gather_along_axis(x=X, indices=RNG.integers(0, 3, (2, 2, 4)).astype(
        np.int32), axis=1)),
    Case("scatter_along_axis", lambda: mb.scatter_along_axis(
        data=X, indices=np.array([[[0, 1, 2, 0]], [[2, 2, 1, 0]]], np.int32), updates=arr(2, 1, 4), axis=1,
        mode="update")),
    Case("tile", lambda: mb.tile(x=X, reps=[1, 2, 3])),
    *[Case("pad", lambda m=m: mb.pad(x=IMG, pad=np.array([1, 2, 2, 1], np.int32), mode=m, constant_val=0.5),
           label=m) for m in ("constant", "reflect", "replicate")],
    Case("shape", lambda: mb.shape(x=X)),
    Case("range_1d", lambda: mb.range_1d(start=np.float32(-1), end=np.float32(2), step=np.float32(0.5))),
    Case("band_part", lambda: mb.band_part(x=arr(2, 5, 5), lower=1, upper=2)),
    Case("non_zero", lambda: mb.non_zero(x=INTS)),
    Case("reverse", lambda: mb.reverse(x=X, axes=[0, 2])),
    Case("topk", lambda: mb.topk(x=X, k=2, axis=1), opset=target.iOS16),
    Case("topk", lambda: mb.topk(x=X, k=3, axis=-1, ascending=True), label="ascending", opset=target.iOS16),
    Case("argsort", lambda: mb.argsort(x=X, axis=2)),
    Case("cumsum", lambda: mb.cumsum(x=X, axis=1)),
    Case("cumsum", lambda: mb.cumsum(x=X, axis=2, reverse=True), label="reverse"),
    # reductions
    *[Case(op, lambda op=op: getattr(mb, op)(x=POS, axes=[0, 2], keep_dims=False))
      for op in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_sum_square",
                 "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum", "reduce_log_sum_exp")],
    Case("reduce_mean", lambda: mb.reduce_mean(x=X, axes=[-1], keep_dims=True), label="keep"),
    Case("reduce_argmax", lambda: mb.reduce_argmax(x=X, axis=1)),
    Case("reduce_argmin", lambda: mb.reduce_argmin(x=X, axis=-1, keep_dims=True)),
    # neural network
    Case("linear", lambda: mb.linear(x=X, weight=arr(5, 4), bias=arr(5))),
    Case("matmul", lambda: mb.matmul(x=arr(2, 1, 3, 4), y=arr(3, 5, 4), transpose_y=True)),
    Case("einsum", lambda: mb.einsum(values=(arr(2, 3, 4, 5), arr(2, 5, 4, 6)), equation="nchw,nwhu->nchu")),
    Case("softmax", lambda: mb.softmax(x=X * 5, axis=1)),
    Case("layer_norm", lambda: mb.layer_norm(x=X, axes=[-1], gamma=arr(4), beta=arr(4), epsilon=1e-5)),
    Case("layer_norm", lambda: mb.layer_norm(x=X, axes=[1, 2], epsilon=1e-3), label="2axes"),
    Case("l2_norm", lambda: mb.l2_norm(x=IMG, epsilon=1e-6)),
    Case("scaled_dot_product_attention", lambda: mb.scaled_dot_product_attention(
        query=arr(2, 3, 5, 8), key=arr(2, 3, 7, 8), value=arr(2, 3, 7, 4),
        attn_mask=RNG.random((5, 7)) > 0.2), opset=target.iOS18),
    Case("cond", lambda: mb.cond(pred=np.bool_(False), _true_fn=lambda: mb.add(x=X, y=1.0),
                                 _false_fn=lambda: mb.mul(x=X, y=2.0))),
    # compressed weights (coremltools' decoders: materialized_val_inference)
    Case("constexpr_cast", lambda: mb.constexpr_cast(source_val=arr(3, 4).astype(np.float16), output_dtype="fp32"),
         opset=target.iOS16),
    Case("constexpr_affine_dequantize", lambda: mb.constexpr_affine_dequantize(
        quantized_data=RNG.integers(-127, 128, (4, 6)).astype(np.int8), zero_point=np.int8(3),
        scale=np.array([0.1, 0.2, 0.3, 0.4], np.float32), axis=0), opset=target.iOS16),
    Case("constexpr_lut_to_dense", lambda: mb.constexpr_lut_to_dense(
        indices=RNG.integers(0, 256, 15).astype(np.uint8), lut=arr(16), shape=np.array([5, 6], np.uint32)),
         label="ios16", opset=target.iOS16),
    Case("constexpr_sparse_to_dense", lambda: mb.constexpr_sparse_to_dense(
        nonzero_data=arr(11), mask=np.array([0b10110101, 0b11001010, 0b00010001], np.uint8),
        shape=np.array([4, 6], np.uint32)), label="ios16", opset=target.iOS16),
    Case("constexpr_blockwise_shift_scale", lambda: mb.constexpr_blockwise_shift_scale(
        data=RNG.integers(-8, 8, (4, 6)).astype(np.int8), scale=arr(2, 3), offset=RNG.integers(-2, 2, (2, 3)).astype(
            np.int8)), opset=target.iOS18, rtol=1e-3, atol=1e-3),
]

# MIL's lstm stacks gates [input, forget, output, cell]; PyTorch's are [input, forget, cell, output].
GATES = [0, 1, 3, 2]


def _mil_lstm_weights(layer: torch.nn.LSTM, suffix: str) -> dict[str, np.ndarray]:
    def order(w: torch.Tensor) -> np.ndarray:
        return np.concatenate([np.split(w.detach().numpy(), 4)[g] for g in GATES])

    bias = getattr(layer, f"bias_ih_l0{suffix}") + getattr(layer, f"bias_hh_l0{suffix}")
    return {"weight_ih": order(getattr(layer, f"weight_ih_l0{suffix}")),
            "weight_hh": order(getattr(layer, f"weight_hh_l0{suffix}")), "bias": order(bias)}


torch.manual_seed(0)
LSTM = torch.nn.LSTM(5, 6, bidirectional=True).eval()
RNN = torch.nn.RNN(5, 6).eval()
SEQ, H0, C0 = arr(7, 2, 5), arr(2, 12), arr(2, 12, seed=1)


def _lstm() -> Any:
    fwd, back = _mil_lstm_weights(LSTM, ""), _mil_lstm_weights(LSTM, "_reverse")
    return mb.lstm(x=SEQ, initial_h=H0, initial_c=C0, **fwd, weight_ih_back=back["weight_ih"],
                   weight_hh_back=back["weight_hh"], bias_back=back["bias"], direction="bidirectional",
                   output_sequence=True)


def _lstm_torch() -> Any:
    # MIL's state is [batch, directions·H]; PyTorch's [directions, batch, H]
    h0 = t(H0).reshape(2, 2, 6).transpose(0, 1).contiguous()
    c0 = t(C0).reshape(2, 2, 6).transpose(0, 1).contiguous()
    out, (h, c) = LSTM(t(SEQ), (h0, c0))
    return out, h.transpose(0, 1).reshape(2, 12), c.transpose(0, 1).reshape(2, 12)


def _rnn() -> Any:
    w = {"weight_ih": RNN.weight_ih_l0.detach().numpy(), "weight_hh": RNN.weight_hh_l0.detach().numpy(),
         "bias": (RNN.bias_ih_l0 + RNN.bias_hh_l0).detach().numpy()}
    return mb.rnn(x=SEQ, initial_h=H0[:, :6], **w, output_sequence=False)


def _rnn_torch() -> Any:
    out, h = RNN(t(SEQ), t(H0[None, :, :6]))
    return out[-1:], h[0]


W_LOOP, X_LOOP = arr(4, 4) * 0.5, arr(3, 4)


def _loop(x: Any) -> Any:
    """h ← tanh(h·W + x), five times: MIL's while_loop with a counter and a state."""
    def body(i: Any, h: Any) -> Any:
        return mb.add(x=i, y=1), mb.tanh(x=mb.add(x=mb.matmul(x=h, y=W_LOOP), y=x))

    return mb.while_loop(_cond=lambda i, h: mb.less(x=i, y=5), _body=body,
                         loop_vars=(np.int32(0), np.zeros((3, 4), np.float32)))[1]


def _loop_torch() -> Any:
    h = torch.zeros(3, 4)
    for _ in range(5):
        h = torch.tanh(h @ t(W_LOOP) + t(X_LOOP))
    return h


W_CONV, B_CONV, W_DEPTH, W_1D = arr(6, 2, 3, 3), arr(6), arr(4, 1, 3, 3), arr(5, 3, 2)
W_T, B_T = arr(4, 3, 3, 3), arr(6)
MEAN, VAR, GAMMA, BETA = arr(4), POS.ravel()[:4].copy(), arr(4, seed=1), arr(4, seed=2)
UPD_A, UPD_B, UPD_ND = arr(2, 2, 4), arr(2, 3, 2), arr(3, 4)
D2S = arr(1, 8, 3, 3)
# depth_to_space reads channel (i·b + j)·C + c (DCR); pixel_shuffle reads c·b² + i·b + j (CRD)
DCR_TO_CRD = np.array([(i * 2 + j) * 2 + c for c in range(2) for i in range(2) for j in range(2)])
IDX = np.array([[0, 1], [1, 2], [0, 0]], np.int32)

# coremltools' value inference ignores concat's `interleave` and scatter_along_axis's `mode`, and
# fails on cumsum's `exclusive`: those variants are checked against PyTorch.
SCATTER_IDX = np.array([[[0, 1, 2, 0]], [[2, 2, 1, 0]]], np.int64)

TORCH_CASES: list[Case] = [
    Case("concat", lambda: mb.concat(values=(X, arr(2, 3, 4, seed=1)), axis=1, interleave=True),
         lambda: torch.stack((t(X), t(arr(2, 3, 4, seed=1))), dim=2).reshape(2, 6, 4), label="interleave"),
    Case("scatter_along_axis", lambda: mb.scatter_along_axis(
        data=X, indices=SCATTER_IDX.astype(np.int32), updates=arr(2, 1, 4), axis=1, mode="add"),
         lambda: t(X).scatter_add(1, torch.from_numpy(SCATTER_IDX), t(arr(2, 1, 4))), label="add"),
    Case("cumsum", lambda x: mb.cumsum(x=x, axis=2, exclusive=True, reverse=True),
         lambda: t(X).flip(2).cumsum(2).flip(2) - t(X), label="exclusive,reverse", live=(X,)),
    Case("silu", lambda: mb.silu(x=X), lambda: F.silu(t(X))),
    Case("while_loop", _loop, _loop_torch, live=(X_LOOP,)),
    Case("conv", lambda: mb.conv(x=IMG, weight=W_CONV, bias=B_CONV, strides=[2, 1], pad_type="custom",
                                 pad=[1, 0, 2, 1], dilations=[1, 2], groups=2),
         lambda: F.conv2d(F.pad(t(IMG), (2, 1, 1, 0)), t(W_CONV), t(B_CONV), stride=(2, 1), dilation=(1, 2),
                          groups=2), label="grouped"),
    Case("conv", lambda: mb.conv(x=IMG, weight=W_DEPTH, pad_type="same", groups=4),
         lambda: F.conv2d(t(IMG), t(W_DEPTH), padding="same", groups=4), label="depthwise-same"),
    Case("conv", lambda: mb.conv(x=X, weight=W_1D, strides=[2], pad_type="valid"),
         lambda: F.conv1d(t(X), t(W_1D), stride=2), label="1d"),
    Case("conv_transpose", lambda: mb.conv_transpose(
        x=IMG, weight=W_T, bias=B_T, strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1], groups=2,
        output_shape=[2, 6, 12, 12]),
         lambda: F.conv_transpose2d(t(IMG), t(W_T), t(B_T), stride=2, padding=1, output_padding=1, groups=2)),
    Case("max_pool", lambda: mb.max_pool(x=IMG, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                         pad=[1, 1, 1, 1], ceil_mode=True),
         lambda: F.max_pool2d(t(IMG), 3, 2, padding=1, ceil_mode=True)),
    *[Case("avg_pool", lambda ex=ex: mb.avg_pool(x=IMG, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom",
                                                 pad=[1, 1, 1, 1], ceil_mode=True, exclude_padding_from_average=ex),
           lambda ex=ex: F.avg_pool2d(t(IMG), 3, 2, padding=1, ceil_mode=True, count_include_pad=not ex),
           label=f"exclude={ex}") for ex in (True, False)],
    Case("l2_pool", lambda: mb.l2_pool(x=IMG, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid"),
         lambda: F.lp_pool2d(t(IMG), 2, 2, 2)),
    Case("batch_norm", lambda: mb.batch_norm(x=IMG, mean=MEAN, variance=VAR, gamma=GAMMA, beta=BETA, epsilon=1e-3),
         lambda: F.batch_norm(t(IMG), t(MEAN), t(VAR), t(GAMMA), t(BETA), eps=1e-3)),
    Case("instance_norm", lambda: mb.instance_norm(x=IMG, gamma=GAMMA, beta=BETA, epsilon=1e-4),
         lambda: F.instance_norm(t(IMG), weight=t(GAMMA), bias=t(BETA), eps=1e-4)),
    *[Case("local_response_norm", lambda n=n: mb.local_response_norm(x=IMG, size=n, alpha=1e-1, beta=0.75, k=1.0),
           lambda n=n: F.local_response_norm(t(IMG), n, alpha=1e-1, beta=0.75, k=1.0), label=f"size={n}")
      for n in (3, 5)],
    Case("lstm", _lstm, _lstm_torch, label="bidirectional"),
    Case("rnn", _rnn, _rnn_torch),
    Case("one_hot", lambda: mb.one_hot(indices=np.array([[1, 3], [0, 2]], np.int32), one_hot_vector_size=4),
         lambda: F.one_hot(torch.tensor([[1, 3], [0, 2]]), 4).float()),
    Case("gather_nd", lambda: mb.gather_nd(x=X, indices=IDX), lambda: t(X)[torch.tensor(IDX[:, 0]),
                                                                           torch.tensor(IDX[:, 1])]),
    Case("scatter", lambda: mb.scatter(data=X, indices=np.array([2, 0], np.int32), updates=UPD_A, axis=1,
                                       mode="update"),
         lambda: t(X).index_copy(1, torch.tensor([2, 0]), t(UPD_A))),
    Case("scatter", lambda: mb.scatter(data=X, indices=np.array([1, 1], np.int32), updates=UPD_B, axis=2, mode="add"),
         lambda: t(X).index_add(2, torch.tensor([1, 1]), t(UPD_B)), label="add"),
    Case("scatter_nd", lambda: mb.scatter_nd(data=X, indices=np.array([[0, 1], [1, 2], [0, 1]], np.int32),
                                             updates=UPD_ND, mode="add"),
         lambda: t(X).index_put((torch.tensor([0, 1, 0]), torch.tensor([1, 2, 1])), t(UPD_ND), accumulate=True)),
    Case("reshape_like", lambda: mb.reshape_like(x=X, ref_tensors=(arr(4, 2), arr(5, 6)), begins=[0, 1],
                                                 ends=[1, 2], end_masks=[False, True]),
         lambda: t(X).reshape(4, 6), opset=target.iOS16),
    Case("crop", lambda: mb.crop(x=IMG, crop_height=[1, 2], crop_width=[0, 3]), lambda: t(IMG)[..., 1:4, 0:3]),
    Case("pixel_shuffle", lambda: mb.pixel_shuffle(x=D2S, upscale_factor=2), lambda: F.pixel_shuffle(t(D2S), 2)),
    Case("pixel_unshuffle", lambda: mb.pixel_unshuffle(x=IMG, downscale_factor=np.uint32(2)),
         lambda: F.pixel_unshuffle(t(IMG), 2), opset=target.iOS16),
    Case("depth_to_space", lambda: mb.depth_to_space(x=D2S, block_size=2),
         lambda: F.pixel_shuffle(t(D2S[:, DCR_TO_CRD]), 2)),
    Case("space_to_depth", lambda: mb.space_to_depth(x=IMG[:, :2], block_size=2),
         lambda: F.pixel_unshuffle(t(IMG[:, :2]), 2)[:, np.argsort(DCR_TO_CRD)]),
    Case("upsample_nearest_neighbor", lambda: mb.upsample_nearest_neighbor(x=IMG, scale_factor_height=2,
                                                                           scale_factor_width=3),
         lambda: F.interpolate(t(IMG), scale_factor=(2, 3), mode="nearest")),
    Case("resize_nearest_neighbor", lambda: mb.resize_nearest_neighbor(x=IMG, target_size_height=12,
                                                                       target_size_width=9),
         lambda: F.interpolate(t(IMG), size=(12, 9), mode="nearest")),
    *[Case("upsample_bilinear", lambda al=al: mb.upsample_bilinear(
        x=IMG, scale_factor_height=2.0, scale_factor_width=2.0, align_corners=al, half_pixel_centers=not al),
           lambda al=al: F.interpolate(t(IMG), scale_factor=2, mode="bilinear", align_corners=al),
           label=f"align_corners={al}", opset=target.iOS16) for al in (True, False)],
    *[Case("resize_bilinear", lambda m=m: mb.resize_bilinear(x=IMG, target_size_height=11, target_size_width=8,
                                                             sampling_mode=m),
           lambda m=m: F.interpolate(t(IMG), size=(11, 8), mode="bilinear", align_corners=m == "STRICT_ALIGN_CORNERS"),
           label=m) for m in ("STRICT_ALIGN_CORNERS", "UNALIGN_CORNERS")],
    # grid_sample: coordinates reaching past the image (1.4 x tanh) so that every padding is exercised; PyTorch's
    # reflection is MIL's reflection with align_corners and its symmetric without (coremltools' own mapping)
    *[Case("resample", lambda s=s, p=p, al=al: mb.resample(
        x=IMG, coordinates=GRID, sampling_mode=s, padding_mode=p, padding_value=0.0,
        coordinates_mode="normalized_minus_one_to_one", align_corners=al),
           lambda s=s, p=p, al=al: F.grid_sample(t(IMG), t(GRID), mode=s, align_corners=al, padding_mode={
               "constant": "zeros", "border": "border", "reflection": "reflection", "symmetric": "reflection"}[p]),
           label=f"{s},{p},align_corners={al}", atol=1e-5)
      for s in ("bilinear", "nearest") for p, al in (("constant", False), ("constant", True), ("border", False),
                                                       ("border", True), ("reflection", True), ("symmetric", False))],
    *[Case("resample", lambda m=m: mb.resample(
        x=IMG, coordinates=(GRID + 1) / 2 if m == "normalized_zero_to_one" else (GRID + 1) / 2 * 5,
        sampling_mode="bilinear", padding_mode="border", padding_value=0.0, coordinates_mode=m, align_corners=True),
           lambda: F.grid_sample(t(IMG), t(GRID), align_corners=True, padding_mode="border"), label=m, atol=1e-5)
      for m in ("normalized_zero_to_one", "unnormalized")],
    # affine_grid + grid_sample: one matrix per sample, the output at another size than the input
    *[Case("affine", lambda al=al: mb.affine(
        x=IMG, transform_matrix=THETA.reshape(2, 6), output_height=5, output_width=7, sampling_mode="bilinear",
        padding_mode="constant", padding_value=0.0, coordinates_mode="normalized_minus_one_to_one", align_corners=al),
           lambda al=al: F.grid_sample(t(IMG), F.affine_grid(t(THETA), [2, 4, 5, 7], align_corners=al),
                                       align_corners=al), label=f"align_corners={al}", atol=1e-5)
      for al in (True, False)],
]
