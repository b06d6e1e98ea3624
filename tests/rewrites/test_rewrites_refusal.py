"""buildsys.rewrites.for_refusal: real converter refusals (torch 2.13, coremltools 9.0, executorch 1.5,
litert-torch, openvino 2026, onnx2tf 1.28 on the keyword spotter and the recommender of
tests/helpers/rewrite_models.py; benchmarks/rewrite_matrix.py reproduces them) → the rewrites that remove
what was refused. Texts are verbatim, shortened where marked with '…'.
"""

from __future__ import annotations

import pytest

from buildsys.rewrites import explain_refusal, for_refusal, ops_named

# torch.export(strict=False) of each model, as torch names the ops: before decompositions, and after.
SPOTTER_OPS = ["aten.abs.default", "aten.add.Tensor", "aten.conv2d.default", "aten.linear.default", "aten.log.default",
               "aten.matmul.default", "aten.mean.dim", "aten.pad.default", "aten.pow.Tensor_Scalar",
               "aten.relu.default", "aten.stft.default", "aten.transpose.int", "aten.unsqueeze.default",
               "aten.view.default"]
SPOTTER_DECOMPOSED = ["aten._fft_r2c.default", "aten.abs.default", "aten.addmm.default", "aten.arange.start_step",
                      "aten.convolution.default", "aten.index.Tensor", "aten.log.default", "aten.mm.default",
                      "aten.permute.default", "aten.unfold.default", "aten.view.default"]
RECOMMENDER_OPS = ["<built-in function getitem>", "aten.cat.default", "aten.embedding_bag.padding_idx",
                   "aten.linear.default", "aten.relu.default", "aten.sigmoid.default"]
RECOMMENDER_TS = ["aten::cat", "aten::embedding_bag", "aten::linear", "aten::relu", "aten::sigmoid"]  # TorchScript
LSTM_OPS = ["aten.lstm.input", "aten.linear.default"]

ONNX_LEGACY_STFT = (
    "SymbolicValueError: STFT does not currently support complex types  [Caused by the value '61 defined in (%61 : "
    "Float(*, *, strides=[4256, 1], requires_grad=0, device=cpu) = onnx::Reshape[allowzero=0](%50, %60), scope: "
    "tests.helpers.rewrite_models.KeywordSpotter:: # /work/main/.venv/lib/python3.11/site-packages/torch/functional.py"
    ":679:0\n)' (type 'Tensor') in the TorchScript graph. The containing node has kind 'onnx::Reshape'.] \n    (node "
    "defined in /work/main/.venv/lib/python3.11/site-packages/torch/functional.py(679): stft\n…")
COREML_TRACE_STFT = "TypeError: only 0-dimensional arrays can be converted to Python scalars"
COREML_EXPORT_STFT = "NotImplementedError: Unsupported fx node unfold, kind unfold"
EXECUTORCH_STFT = (
    "SpecViolationError: These operators are taking Tensor inputs with mismatched dtypes:\n\nOperator: <EdgeOpOverload:"
    " aten.abs.default>: schema = aten::abs(Tensor self) -> Tensor with args: {'self': torch.complex64, '__ret_0': "
    "torch.float32}\nstack trace: File \"/work/wt-rewrites/tests/helpers/rewrite_models.py\", line 51, in forward\n    "
    "power = spec.abs().pow(2)                                   # [B, F, T]\nPlease make sure the dtypes of the "
    "Tensor inputs are the same as the dtypes of the corresponding outputs.")
LITERT_STFT = (
    "RuntimeError: Unsupported ir element type: complex<f32>\n\nWhile executing %permute : [num_users=1] = "
    "call_function[target=torch.ops.aten.permute.default](args = (%_fft_r2c, [0, 2, 1]), kwargs = {})\nOriginal "
    "traceback:\nFile \"/work/wt-rewrites/tests/helpers/rewrite_models.py\", line 49, in forward\n    spec = "
    "torch.stft(audio, self.n_fft, hop_length=self.hop, window=self.window, center=True,\nUse tlparse to see full "
    "graph. (https://github.com/pytorch/tlparse?tab=readme-ov-file#tlparse-parse-structured-pt2-logs)")
COREML_BAG = "NotImplementedError: PyTorch convert function for op 'embedding_bag' not implemented."
COREML_EXPORT_BAG = "NotImplementedError: Unsupported fx node _embedding_bag, kind _embedding_bag"
EXECUTORCH_BAG = "RuntimeError: Failed to load method forward, error: 0x:14"
LITERT_BAG = (
    "RuntimeError: Lowering not found: aten._embedding_bag.default\n\nWhile executing %_embedding_bag : [num_users=1] "
    "= call_function[target=torch.ops.aten._embedding_bag.default](args = (%p_bag_weight, %ids, %offsets), kwargs = {})"
    "\nOriginal traceback:\nFile \"/work/wt-rewrites/tests/helpers/rewrite_models.py\", line 69, in forward\n    "
    "pooled = self.bag(ids, offsets)\n…")
ONNX2TF_BAG = "ModuleNotFoundError: No module named 'onnx2tf.ops.Loop'"
OPENVINO_BAG = (
    "OpConversionFailure: Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:"
    "\nFrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted. Failed operations detailed log:\n"
    "-- ReduceSum-20 with a message:\n[ONNX Frontend] Conversion failed for ReduceSum-20\n…\nSummary:\n-- Conversion "
    "is failed for: ReduceSum-20, Slice-20\n")


def names(text: str, ops: list[str] | tuple[()] = ()) -> list[str]:
    return [r.name for r in for_refusal(text, ops)]


@pytest.mark.parametrize("text", [ONNX_LEGACY_STFT, COREML_TRACE_STFT, EXECUTORCH_STFT, LITERT_STFT],
                         ids=["onnx-legacy", "coreml-trace", "executorch", "litert"])
def test_every_spotter_refusal_with_its_program_finds_the_fft_family(text: str) -> None:
    assert names(text, SPOTTER_OPS) == ["fft"]  # the family, not also its member stft


def test_spotter_refusals_without_the_program() -> None:
    assert names(ONNX_LEGACY_STFT) == ["fft", "complex"]      # names STFT; "complex types" signs both
    assert names(LITERT_STFT) == ["fft", "complex"]           # names torch.stft and _fft_r2c
    assert set(names(EXECUTORCH_STFT)) == {"fft", "complex"}  # only the complex64 symptom
    assert names(COREML_TRACE_STFT) == []                      # names nothing: it needs the program


def test_the_decomposed_unfold_points_at_the_fft_family() -> None:
    """coremltools' export route refuses the unfold that stft decomposes into (the issue's "coremltools has no
    unfold"): with the decomposed program, the FFT family (which removes both unfold and _fft_r2c) ranks first
    and `unfold`, which adds nothing to it here, is left out; a model's own unfold is `unfold`'s."""
    assert names(COREML_EXPORT_STFT, SPOTTER_DECOMPOSED) == ["fft"]
    assert names(COREML_EXPORT_STFT, SPOTTER_OPS) == ["fft"]
    assert names(COREML_EXPORT_STFT, ["aten.unfold.default", "aten.sum.dim_IntList"]) == ["unfold"]


@pytest.mark.parametrize("text", [COREML_BAG, COREML_EXPORT_BAG, EXECUTORCH_BAG, LITERT_BAG, ONNX2TF_BAG, OPENVINO_BAG],
                         ids=["coreml", "coreml-export", "executorch", "litert", "onnx2tf", "openvino"])
def test_every_recommender_refusal_with_its_program_finds_the_scatter_family(text: str) -> None:
    assert names(text, RECOMMENDER_OPS) == ["scatter"]  # the family, not also its member embedding-bag
    assert names(text, RECOMMENDER_TS) == ["scatter"]  # TorchScript spelling of the program's ops


def test_recommender_refusals_without_the_program() -> None:
    for text in (COREML_BAG, COREML_EXPORT_BAG, LITERT_BAG, ONNX2TF_BAG):
        assert names(text) == ["scatter"]
    assert names(EXECUTORCH_BAG) == [] and names(OPENVINO_BAG) == []  # no op named: needs the program


def test_the_reasons_are_data() -> None:
    [match] = explain_refusal(EXECUTORCH_BAG, RECOMMENDER_OPS)
    assert (match.rewrite.name, match.tier, match.ops) == ("scatter", "in-program", ("embedding_bag",))
    assert match.why == "the refusal names no op and the program has embedding_bag"
    [match] = explain_refusal(ONNX2TF_BAG, RECOMMENDER_OPS)
    assert match.tier == "sign" and "Loop" in match.why
    first = explain_refusal(LITERT_STFT)[0]
    assert (first.rewrite.name, first.tier, first.ops) == ("fft", "named", ("_fft_r2c", "stft"))


def test_a_program_without_the_op_gets_no_rewrite() -> None:
    # a Loop in an LSTM model is not an embedding bag; naming no op, the program's LSTM is the guess
    assert names(ONNX2TF_BAG, LSTM_OPS) == ["recurrent"]
    assert names("CUDA out of memory", RECOMMENDER_OPS) == ["scatter"]  # names no op: the program decides
    assert names("Lowering not found: aten.grid_sampler_2d.default", RECOMMENDER_OPS) == []
    assert ops_named("Lowering not found: aten.grid_sampler_2d.default") == ["grid_sampler_2d"]


def test_each_rewrite_is_found_from_its_op_in_any_spelling() -> None:
    cases = {
        "aten::roll": "roll", "aten.diff.default": "diff", "PyTorch convert function for op 'col2im' not "
        "implemented.": "fold", "Exporting the operator 'aten::view_as_complex' to ONNX opset version 17 is not "
        "supported": "complex", "Lowering not found: aten._scaled_dot_product_flash_attention_for_cpu.default": "sdpa",
        "Unsupported fx node im2col, kind im2col": "unfold", "nn.EmbeddingBag is not supported": "scatter",
    }
    for text, rewrite in cases.items():
        assert names(text)[0] == rewrite, text
    assert ops_named(COREML_BAG) == ["embedding_bag"] and ops_named(LITERT_BAG) == ["_embedding_bag"]


# --- the families: refusals of the one-op modules of tests/helpers/rewrite_ops.py (benchmarks/rewrite_matrix.py
# --ops --variant before), with their programs as torch.export (or, for the ONNX export, the eager call) names them
FFT2_OPS = ["aten.fft_rfft2.default", "aten.fft_irfft2.default", "aten.mul.Tensor", "aten.zeros.default"]
FFT2_DECOMPOSED = ["aten._fft_r2c.default", "aten._fft_c2r.default", "aten.mul.Tensor", "aten.full.default"]
MIXING_OPS = ["aten.view_as_complex.default", "aten.complex.default", "aten.einsum.default", "aten.view_as_real.default"]
INDEX_ADD_OPS = ["aten.zeros.default", "aten.index_add.default"]
SCATTER_REDUCE_OPS = ["aten.zeros.default", "aten.scatter_reduce.two", "aten.abs.default"]
GRU_CALLS = ["aten::addmm", "aten::gru", "aten::sigmoid_", "aten::stack", "aten::tanh_", "aten::zeros"]  # ONNX export
LSTM_CELL_TRACED = ["aten::linear", "aten::unsafe_chunk", "aten::sigmoid", "aten::tanh", "aten::mul", "aten::add"]

FAMILY_REFUSALS = [  # (converter, text, program, the rewrites it points at)
    ("onnx-legacy", "UnsupportedOperatorError: Exporting the operator 'aten::fft_rfft2' to ONNX opset version 17 is "
     "not supported", FFT2_OPS, ["fft"]),
    ("coreml", "NotImplementedError: PyTorch convert function for op 'fft_rfft2' not implemented.", FFT2_OPS, ["fft"]),
    ("coreml-export", "NotImplementedError: Unsupported fx node _fft_r2c, kind _fft_r2c", FFT2_DECOMPOSED, ["fft"]),
    ("litert", "NotImplementedError: FFT normalization != 0 is not yet implemented.\n\nWhile executing %_fft_r2c : "
     "[num_users=1] = call_function[target=torch.ops.aten._fft_r2c.default](args = (%args_0, [1, 2], 1, True), "
     "kwargs = {})", FFT2_DECOMPOSED, ["fft"]),
    ("executorch", "SpecViolationError: These operators are taking Tensor inputs with mismatched dtypes:\n\nOperator: "
     "<EdgeOpOverload: aten.mul.Tensor>: schema = aten::mul.Tensor(Tensor self, Tensor other) -> Tensor with args: "
     "{'self': torch.complex64, 'other': torch.complex64, '__ret_0': torch.complex64}", FFT2_DECOMPOSED, ["fft"]),
    ("openvino", "RuntimeError: Exception from src/inference/src/cpp/infer_request.cpp:224:\nException from "
     "src/plugins/intel_cpu/src/graph.cpp:1628:\nNode node_DFT_53 of type RDFT\nCheck 'isInverse' failed at "
     "src/plugins/intel_cpu/src/nodes/rdft.cpp:314:\nSignal size greater than input size is not supported yet",
     ["aten::fft_rfft", "aten::_fft_r2c", "aten::fft_irfft", "aten::_fft_c2r"], ["fft"]),
    ("onnx-legacy", "UnsupportedOperatorError: Exporting the operator 'aten::view_as_complex' to ONNX opset version 17 "
     "is not supported", MIXING_OPS, ["complex"]),
    ("executorch", "SpecViolationError: \nOperator torch._ops.aten.complex.default is not in Core ATen opset "
     "(https://pytorch.org/docs/stable/torch.compiler_ir.html#core-aten-ir).\"", MIXING_OPS, ["complex"]),
    ("litert", "RuntimeError: torch.complex64\n\nWhile executing %view_as_complex : [num_users=1] = call_function"
     "[target=torch.ops.aten.view_as_complex.default](args = (%view,), kwargs = {})", MIXING_OPS, ["complex"]),
    ("onnx-legacy", "SymbolicValueError: ONNX export does not support exporting 'index_add_()' function with "
     "duplicated values in 'index' parameter yet.  [Caused by the value '13 defined in (%13 : Float(4, 16, …) = "
     "onnx::Constant[value=<Tensor>](), …", INDEX_ADD_OPS, ["scatter"]),
    ("litert", "RuntimeError: Only update, Add, Multiply, Maximum and Minimum operations are currently supported for "
     "stablehlo.scatter.Node number 0 (STABLEHLO_SCATTER) failed to prepare.", INDEX_ADD_OPS, ["scatter"]),
    ("onnx-legacy", "OnnxExporterError: ONNX does not support include_self=False for scatter_reduce",
     SCATTER_REDUCE_OPS, ["scatter"]),
    ("coreml", "NotImplementedError: PyTorch convert function for op 'index_copy' not implemented.",
     ["aten.zeros.default", "aten.index_copy.default"], ["scatter"]),
    ("executorch", "RuntimeError: Failed to load method forward, error: 0x:14", SCATTER_REDUCE_OPS, ["scatter"]),
    ("tflite", "TFLiteConverter failed on op(s) tf.TensorListReserve: <unknown>:0: error: loc(callsite(fused["
     "\"TensorListReserve:\", \"model/rnn/TensorArrayV2_1@__inference_serve_936\"] …", GRU_CALLS, ["recurrent"]),
    ("onnx2tf", "ValueError: Output tensors of a Functional model must be the output of a TensorFlow `Layer` (thus "
     "holding past layer metadata). Found: [[[0. 0.]\n  [0. 0.]…", GRU_CALLS, ["recurrent"]),
    ("coreml", "NotImplementedError: PyTorch convert function for op 'unsafe_chunk' not implemented.",
     LSTM_CELL_TRACED, ["recurrent"]),
]


@pytest.mark.parametrize(("converter", "text", "program", "expected"), FAMILY_REFUSALS,
                         ids=[f"{r[3][0]}-{r[0]}-{i}" for i, r in enumerate(FAMILY_REFUSALS)])
def test_each_familys_refusals_point_at_it(converter: str, text: str, program: list[str], expected: list[str]) -> None:
    from buildsys.planning.answers import refusal_rewrites

    assert refusal_rewrites(text, program) == expected


def test_the_same_refusal_without_a_matching_program_points_elsewhere_or_nowhere() -> None:
    """A refusal is only answered by a rewrite that can change the program: a sign alone is not enough."""
    tensor_list = FAMILY_REFUSALS[14][1]
    assert names(tensor_list, ["aten::linear", "aten::relu"]) == []  # nothing in the program a rewrite removes
    assert names(tensor_list) == ["recurrent"]      # no program known: the sign decides
    # a program without a scatter: the sign cannot point at the scatter family (naming no ATen op, the refusal
    # falls to what the program has, as any such refusal does)
    assert names("ONNX does not support include_self=False for scatter_reduce", FFT2_OPS) == ["fft"]


def test_a_conjugate_without_a_kernel_points_at_the_complex_families() -> None:
    """ExecuTorch on an inverse FFT of a real signal: what it names is the conjugate, only ever of a complex value."""
    text = ("the program's operator aten::_conj_copy.out has no kernel in the ExecuTorch runtime and XNNPACK did not "
            "take it: the .pte would fail to load (error 0x14, missing operator)")
    assert set(names(text)) == {"fft", "complex"}


def test_a_step_stopped_at_its_budget_points_at_no_rewrite() -> None:
    """A stop names no op, so the program's ops would decide ("in-program"); but no rewrite makes a lowering that
    ran out of time or memory cheaper, so none is tried (DenseNet's ExecuTorch int8 lowering went on to the pooling
    rewrite, which the quantizer then refused)."""
    from buildsys.planning.answers import refusal_rewrites

    program = ["aten::conv2d", "aten::adaptive_avg_pool2d", "aten::linear"]
    stopped = ("stopped: still running at its 5 min time budget (peak 1.09 GB), in torch/fx/traceback.py:130 "
               "(__init__), from executorch/exir/program/_program.py:116 (wrapper)")
    over = "stopped: 1.52 GB over its 1.50 GB memory ceiling after 17 s, in hog.py:17 (forward)"
    assert refusal_rewrites(stopped, program) == refusal_rewrites(over, program) == []
    assert refusal_rewrites("lowering to ExecuTorch failed: an internal error", program) == ["pooling"]


def test_a_refusal_naming_no_op_takes_its_converters_answer_before_the_rewrite_its_program_suggests() -> None:
    """Core ML refused a window partition's rank-6 reshape: the text names no op, so the attention rewrite came only
    from the program holding multi-head attention (a guess), while the step's symptom (static shapes) was read
    from the text itself. The guessed rewrite's route failed the same way, then static shapes passed: the answer
    now goes first (pipeline.answered, `answers_first`). A refusal naming its op keeps the rewrite first."""
    from types import SimpleNamespace

    from buildsys.planning.answers import answers_first
    from buildsys.planning.pipeline import answered
    from buildsys.planning.routes import Route

    rank = ('coremltools.convert failed: ValueError: Core ML only supports tensors with rank <= 5. Layer "x1_1", '
            'with type "reshape", outputs a rank 6 tensor.')
    program = ["aten::scaled_dot_product_attention", "aten::view", "aten::permute", "aten::_convolution"]
    plain = Route.parse(["pytorch", "torchscript", "coreml-fp16"])
    assert answers_first(plain, 2, rank, program)
    assert not answers_first(plain, 2, "PyTorch convert function for op 'stft' not implemented", ["aten::stft"])
    assert not answers_first(plain, 2, "an internal error", [])  # no rewrite suggested at all
    # a guess, but the step's only answer is generic (litert-torch's whole program decomposed): the rewrite first
    # (VOLO's outlook attention: its scatter refusal was answered by `fold`, tests/rewrites/test_rewrite_families_routes.py)
    scatter = ("litert-torch wrote a model LiteRT cannot prepare: RuntimeError: Only update, Add, Multiply, Maximum and "
               "Minimum are currently supported for stablehlo.scatter.Node number 27 (STABLEHLO_SCATTER)")
    litert = Route.parse(["pytorch", "pt2", "tflite"])
    assert not answers_first(litert, 2, scatter, ["aten::col2im", "aten::_convolution"])

    static = ["pytorch", "torchscript", "coreml-fp16 (switch coreml static shapes)"]
    record = {"route": plain.words(), "rewrites": ["sdpa"], "answers": [static]}
    for first, expected in ((True, static), (False, ["pytorch", "torchscript (rewrite sdpa)", "coreml-fp16"])):
        context = SimpleNamespace(config=SimpleNamespace(rewrites=None), options={},
                                  history=[{**record, **({"answers_first": True} if first else {})}])
        assert answered([plain], context)[1].words() == expected
