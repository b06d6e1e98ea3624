"""The classifier of refusals (`Step.answers`, buildsys/lowering/answers.py) on the real refusal texts, and the options
it answers with (their keys, their validation, which steps make fixed shapes).

Every text below is what a step reported (the error deploy.lock keeps), from builds of public architectures
(`ultralytics DetectionModel("yolo11n.yaml")`, a transformers wav2vec2 encoder from a small config) and of the
models of tests/helpers/lowering_models.py and their kin (torch 2.13, coremltools 9.0, onnx2tf 1.28, litert-torch,
ExecuTorch 1.5); the comment says which model and route.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from buildsys.formats import steps
from buildsys.lowering import Answer

#: The ops PyTorch's tables decompose, as far as these refusals need (tests/lowering/test_lowering_decompose.py holds
#: the real table to it): the classifier is torch-free and gets the table from the op analysis.
DECOMPOSABLE = {"grid_sampler", "grid_sampler_2d", "affine_grid_generator", "cdist", "index_add", "fft_rfft"}

REFUSALS: list[tuple[str, str, list[str]]] = [
    # YOLO11n, torch.export with a dynamic batch (pt2, ExecuTorch, litert-torch routes)
    ("pt2-from-pytorch", "model 'yolo': torch.export failed: UserError: Constraints violated (batch)! For more "
     "information, run with TORCH_LOGS=\"+dynamic\". (step pt2-from-pytorch)", ["static export"]),
    # YOLO11n, coremltools' TorchScript frontend (also a BERT encoder, the grid_sample models)
    ("coreml-from-torchscript", "model 'yolo': coremltools.convert failed: TypeError: only 0-dimensional arrays can be "
     "converted to Python scalars (step coreml-from-torchscript)", ["coremltools torch.export frontend"]),
    # YOLO11n, onnx2tf on the head's box decoding
    ("saved-model-from-onnx", "model 'yolo': onnx2tf could not convert the ONNX op Mul (node /m/model.23/Mul_2): operands "
     "[?,84,4], [1,1,84] do not broadcast (onnx2tf's channels-last layout inference) (step saved-model-from-onnx)",
     ["litert-torch"]),
    # the point-cloud model, onnx2tf on the first linear layer's bias
    ("saved-model-from-onnx", "model 'points': onnx2tf could not convert the ONNX op Add (node /embed/Add): operands "
     "[?,32,8], [1,8,1] do not broadcast (onnx2tf's channels-last layout inference) (step saved-model-from-onnx)",
     ["litert-torch"]),
    # the flow-field warp, onnx2tf on a constant output of the graph
    ("saved-model-from-onnx", "model 'warp': onnx2tf could not convert the ONNX op Mul (node /Mul_2): ValueError: Output "
     "tensors of a Functional model must be the output of a TensorFlow `Layer` (thus holding past layer metadata). "
     "Found: 0.10000000149011612 (step saved-model-from-onnx)", ["litert-torch"]),
    # a wav2vec2 encoder (and the GroupNorm audio frontend), coremltools' TorchScript frontend with a dynamic batch
    ("coreml-from-torchscript", "model 'w2v': coremltools.convert failed: ValueError: Cannot add const [is3, "
     "np.int32(16), np.int32(1), 79] (step coreml-from-torchscript)", ["coreml static shapes"]),
    # the same, coremltools' torch.export frontend: group_norm's shape assertion, without a message
    ("coreml-from-pt2", "model 'w2v': coremltools.convert failed: AssertionError:  (step coreml-from-pt2)",
     ["coreml static shapes"]),
    # an rfft model, coremltools' TorchScript frontend (at fixed shapes it converts)
    ("coreml-from-torchscript", "model 'spectrum': coremltools.convert failed: ValueError: Cannot add const (64, is200) "
     "(step coreml-from-torchscript)", ["coreml static shapes"]),
    # the Conv1d+GRU activity model, TFLite from onnx2tf's SavedModel
    ("tflite-from-saved-model", "model 'gru': TFLiteConverter failed on op(s) tf.TensorListReserve: <unknown>:0: error: "
     "loc(callsite(fused[\"TensorListReserve:\", \"model/rnn/TensorArrayV2_1@__inference_serve_945\"] at "
     "callsite(fused[\"PartitionedCall:\", \"PartitionedCall@__inference_signature_wrapper_serve_997\"] at "
     "fused[\"PartitionedCall:\", \"PartitionedCall\"]))): 'tf.TensorListReserve' op requires elem (step "
     "tflite-from-saved-model)", ["onnx2tf rnn-unroll", "litert-torch"]),
    # the flow-field warp, coremltools' torch.export frontend
    ("coreml-from-pt2", "model 'warp': coremltools.convert failed: NotImplementedError: Unsupported fx node "
     "grid_sampler_2d, kind grid_sampler_2d (step coreml-from-pt2)", ["decompose grid_sampler_2d", "decompose core"]),
    # the point-cloud model, coremltools' TorchScript frontend
    ("coreml-from-torchscript", "model 'points': Core ML cannot convert the PyTorch op 'cdist' (coremltools has no "
     "conversion for it); rewrite that part of the model or register a custom conversion (step coreml-from-torchscript)",
     ["decompose cdist", "decompose core"]),
    # a spatial transformer, the legacy ONNX exporter: the other exporter, or the op decomposed
    ("onnx-from-pytorch", "model 'stn': ONNX export failed: operator 'aten::affine_grid_generator' is not supported at "
     "opset 18 (try another opset, the other exporter (dynamo), or rewrite that part of the model) (step "
     "onnx-from-pytorch)", ["onnx dynamo", "decompose affine_grid_generator", "decompose core"]),
    # a running-maximum model, the dynamo ONNX exporter: cummax has no decomposition, the legacy exporter may have it
    ("onnx-from-pytorch", "model 'scan': ONNX export failed: operator 'aten::cummax' has no ONNX translation at opset 18 "
     "(try another opset, the legacy exporter (dynamo: false), or rewrite that part of the model) (step "
     "onnx-from-pytorch)", ["onnx legacy"]),
    # the same model, litert-torch and ExecuTorch: no table decomposes cummax, so nothing answers (a rewrite must)
    ("tflite-from-pt2", "model 'scan': litert-torch could not convert the model: RuntimeError: Lowering not found: "
     "aten.cummax.default (step tflite-from-pt2)", []),
    ("executorch-from-pt2", "model 'scan': lowering to ExecuTorch failed: SpecViolationError: Operator "
     "torch._ops.aten.cummax.default is not in Core ATen opset (https://pytorch.org/docs/stable/torch.compiler_ir.html"
     "#core-aten-ir).\" (step executorch-from-pt2)", []),
    # a spatial transformer, litert-torch and ExecuTorch re-exporting the program (affine_grid's detach_)
    ("tflite-from-pt2", "model 'stn': litert-torch could not convert the model: RuntimeError: Can't detach views "
     "in-place. Use detach() instead. If you are using DistributedDataParallel (DDP) for training, and "
     "gradient_as_bucket_view is set as True, gradients are views of DDP buckets (step tflite-from-pt2)",
     ["decompose core"]),
    ("executorch-from-pt2", "model 'stn': torch.export with fixed shapes [(1, 1, 16, 16)] failed: RuntimeError: Can't "
     "detach views in-place. Use detach() instead. (step executorch-from-pt2)", ["decompose core"]),
    # a segment sum (index_add), coremltools' torch.export frontend on what index_add decomposes into: it names no
    # ATen op, so Core ML's fixed shapes (its unnamed failures are most often symbolic sizes), then the whole program
    # to core ATen (on a route that decomposed it already, the planner adds nothing)
    ("coreml-from-pt2", "model 'index_add': coremltools.convert failed: NotImplementedError: If there existed any whole "
     "slice (e.g. : in x[:, 0]), only torch.index_put(..., accumulate=False) handled yet (step coreml-from-pt2)",
     ["coreml static shapes", "decompose core"]),
    # failures in a converter's own words, naming no op: Core ML at fixed shapes, then the whole program to core ATen
    # (xlogy; MobileViT's int8 .pte, whose step has no fixed-shape switch, goes to core ATen at once)
    ("coreml-from-torchscript", "model 'xlogy': coremltools.convert failed: ValueError: Concat concat_0 got 0 values "
     "(step coreml-from-torchscript)", ["coreml static shapes", "decompose core"]),
    # Longformer through coremltools' torch.export frontend with a dynamic batch, after its as_strided was rewritten:
    # a symbolic size in a translation, in no words that say so; converted at fixed shapes it passes
    ("coreml-from-pt2", "model 'lf': coremltools.convert failed: IndexError: list assignment index out of range "
     "(step coreml-from-pt2)", ["coreml static shapes", "decompose core"]),
    ("executorch-int8-from-pt2", "model 'vit': lowering to ExecuTorch failed: Exception: An error occurred when running "
     "the 'ChannelsLastTaggedReshapePass' pass after the following passes: [] (step executorch-int8-from-pt2)",
     ["decompose core"]),
    # a step the build stopped at its budget is not a refusal: nothing answers it
    ("executorch-int8-from-pt2", "model 'vit': stopped: still running at its 5 min time budget (peak 602 MB), in "
     "torchao/quantization/pt2e/observer.py:1170 (_non_linear_param_search)", []),
    # not a converter's refusal of the model: a missing data set answers nothing
    ("tflite-int8-from-saved-model", "model 'digits': full int8 needs calibration data: add data.calibration to the "
     "model, or set mode: dynamic (step tflite-int8-from-saved-model)", []),
    # a spatial transformer's localisation net: adaptive pooling of a symbolic batch (either frontend)
    ("coreml-from-torchscript", "model 'stn': coremltools.convert failed: ValueError: Adaptive pooling is only "
     "supported when input tensor size is known or output size == (1,1). Received: input size == (is750, 8, 12, 12, "
     "fp32), output size == (np.int32(4), np.int32(4)) (step coreml-from-torchscript)", ["coreml static shapes"]),
    # a translation calling int() on a symbolic size (the group-norm statistics of a dynamic batch, before they were
    # read at run time): SymPy's words, no op named
    ("coreml-fp16-from-pt2", "model 'hf-wavlm': coremltools.convert failed: TypeError: Cannot convert symbols to int "
     "(step coreml-fp16-from-pt2)", ["coreml static shapes"]),
    # litert-torch lowered torch.eye (XLNet's attention mask) to an iota LiteRT has no kernel for: constants folded
    # (the core decomposition writes the same iota: measured on XLNet)
    ("tflite-int8-from-pt2", "model 'hf-xlnet': litert-torch wrote a model LiteRT cannot prepare: ValueError: Didn't "
     "find op for builtin opcode 'STABLEHLO_IOTA' version '1'. An older version of this builtin might be supported. "
     "(step tflite-int8-from-pt2)", ["litert constants folded"]),
    # OpenVINO's ONNX frontend on the sequence ops torch.dstack exports to: the program decomposed to core ATen
    ("openvino-from-onnx", "model 'dstack': OpenVINO could not convert the ONNX model: OpConversionFailure: no "
     "conversion rule for the ONNX operations SequenceMap-18, util::SequenceAt, util::SequenceMark (step "
     "openvino-from-onnx)", ["decompose core"]),
    # torchvision's RAFT (optical flow), coremltools' TorchScript frontend with a dynamic batch: float() of a symbol
    ("coreml-from-torchscript", "model 'tv-raft_small': coremltools.convert failed: TypeError: Cannot convert "
     "expression to float (step coreml-fp16-from-torchscript)", ["coreml static shapes"]),
]


@pytest.mark.parametrize(("step", "text", "labels"), REFUSALS, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(REFUSALS)])
def test_each_refusal_picks_its_answers(step: str, text: str, labels: list[str]) -> None:
    assert [a.label for a in steps()[step].answers(text, decomposable=DECOMPOSABLE)] == labels


def test_answers_say_where_their_options_go() -> None:
    [static] = steps()["pt2-from-pytorch"].answers(REFUSALS[0][1])
    assert (static.at, static.values, static.static_only) == ("loading", {"static_fallback": True}, True)
    [frontend] = steps()["coreml-from-torchscript"].answers(REFUSALS[1][1])
    assert (frontend.via, frontend.values) == (("pt2",), {})
    unroll, litert = steps()["tflite-from-saved-model"].answers(REFUSALS[8][1])
    assert (unroll.at, unroll.values) == ("saved_model", {"enable_rnn_unroll": True}) and litert.via == ("pt2",)
    named, core = steps()["coreml-from-pt2"].answers(REFUSALS[9][1], decomposable=DECOMPOSABLE)
    assert (named.at, named.values) == ("loading", {"decompose": ["grid_sampler_2d"]})
    assert core.values == {"decompose": "core"} and all(a.why for a in (static, frontend, unroll, litert, named, core))


def test_without_the_table_every_named_op_is_answered_and_the_step_says_if_none_decomposes_it() -> None:
    text = REFUSALS[14][1]  # ExecuTorch on cummax
    assert [a.label for a in steps()["executorch-from-pt2"].answers(text)] == ["decompose cummax", "decompose core"]


def test_onnx2tf_stopped_in_its_transposition_trials_runs_again_without_strict_mode() -> None:
    # The wording of a step stopped past its budget names the frame it was in (issue 35, item 5).
    text = ("model 'vit': stopped: 12.5 GB over its 8 GB memory ceiling after 95 s, in onnx2tf/utils/common_functions.py:"
            "5936 (correction_process_for_accuracy_errors) (step saved-model-from-onnx)")
    [answer] = steps()["saved-model-from-onnx"].answers(text)
    assert (answer.label, answer.values) == ("onnx2tf no-strict", {"disable_strict_mode": True})


def test_an_answer_is_hashable_and_reads_back_as_deploy_yaml_writes_it() -> None:
    answer = Answer.of("decompose cdist", {"decompose": ["cdist"]}, at="loading")
    assert answer == Answer.of("decompose cdist", {"decompose": ("cdist",)}, at="loading")
    assert len({answer, answer}) == 1 and answer.values == {"decompose": ["cdist"]}


def _options(step: str, **given: Any) -> dict[str, Any]:
    return steps()[step].Options(**given).model_dump(mode="json")


def test_unset_lowering_options_leave_the_keys_as_they_were() -> None:
    for step in ("pt2-from-pytorch", "torchscript-from-pytorch", "onnx-from-pytorch"):
        assert not {"decompose", "static_fallback"} & set(_options(step))
    assert "static_shapes" not in _options("coreml-from-torchscript")
    assert not {"enable_rnn_unroll", "disable_strict_mode", "param_replacement_file"} & set(_options("saved-model-from-onnx"))
    assert _options("pt2-from-pytorch", decompose=["aten::cdist", "cdist", "aten.grid_sampler_2d.default"])["decompose"] \
        == ["cdist", "grid_sampler_2d"]
    assert _options("pt2-from-pytorch", decompose="core", static_fallback=True) == \
        {**_options("pt2-from-pytorch"), "decompose": "core", "static_fallback": True}
    assert _options("coreml-from-torchscript", static_shapes=True)["static_shapes"] is True


def test_bad_decompose_values_are_refused_saying_what_to_write() -> None:
    with pytest.raises(ValidationError, match=r"decompose: \[\] decomposes nothing"):
        steps()["pt2-from-pytorch"].Options(decompose=[])
    with pytest.raises(ValidationError, match=r"'grid sampler' is not an ATen op name"):
        steps()["pt2-from-pytorch"].Options(decompose=["grid sampler"])
    with pytest.raises(ValidationError, match="decompose"):
        steps()["pt2-from-pytorch"].Options(decompose="everything")


def test_which_steps_make_fixed_shapes() -> None:
    assert steps()["executorch-from-pt2"].makes_static() and steps()["executorch-int8-from-pt2"].makes_static()
    assert steps()["tflite-from-pt2"].makes_static()
    assert not steps()["coreml-from-pt2"].makes_static()
    assert steps()["coreml-from-pt2"].makes_static({"static_shapes": True})
    assert not steps()["onnx-from-pt2"].makes_static() and not steps()["tflite-from-saved-model"].makes_static()


def test_the_planner_places_each_answer_on_its_stop_and_never_undoes_one() -> None:
    from buildsys.lowering import DECOMPOSE_CORE, STATIC_EXPORT, Answer
    from buildsys.planning.answers import answer_route
    from buildsys.planning.routes import Route

    server = Route.parse(["pytorch", "onnx"])
    dynamo, legacy = Answer.of("onnx dynamo", {"dynamo": True}), Answer.of("onnx legacy", {"dynamo": False})
    switched = answer_route(server, 1, dynamo, {}, [], pinned=False)
    assert switched == Route.parse(["pytorch", "onnx (switch onnx dynamo)"])
    assert answer_route(switched, 1, legacy, {}, [], pinned=False) is None  # and back again: never
    assert answer_route(server, 1, dynamo, {"onnx": {"dynamo": False}}, [], pinned=False) is None  # the target chose
    # a static export only where a later step makes fixed shapes anyway
    assert answer_route(Route.parse(["pytorch", "pt2"]), 1, STATIC_EXPORT.answer, {}, [], pinned=False) is None
    assert answer_route(Route.parse(["pytorch", "pt2", "executorch"]), 1, STATIC_EXPORT.answer, {}, [], pinned=False) \
        == Route.parse(["pytorch", "pt2 (switch static export)", "executorch"])
    # decompositions merge at the loading stop, then the whole program, then nothing more
    ios = Route.parse(["pytorch", "pt2 (decompose grid_sampler_2d)", "coreml"])
    more = Answer.of("decompose affine_grid_generator", {"decompose": ["affine_grid_generator"]}, at="loading")
    assert answer_route(ios, 2, more, {}, [], pinned=False) == \
        Route.parse(["pytorch", "pt2 (decompose grid_sampler_2d+affine_grid_generator)", "coreml"])
    core = answer_route(ios, 2, DECOMPOSE_CORE, {}, [], pinned=False)
    assert core == Route.parse(["pytorch", "pt2 (decompose core)", "coreml"])
    assert core is not None and answer_route(core, 2, DECOMPOSE_CORE, {}, [], pinned=False) is None
    # another route: through its formats, unless the target pins its route
    android = Route.parse(["pytorch", "onnx", "saved_model", "tflite"])
    litert = Answer.of("litert-torch", via=("pt2",))
    assert answer_route(android, 3, litert, {}, [], pinned=False) == Route.parse(["pytorch", "pt2", "tflite"])
    assert answer_route(android, 3, litert, {}, [], pinned=True) is None
