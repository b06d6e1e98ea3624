"""The "litert" runtime: .tflite files on the LiteRT interpreter (ai_edge_litert, XNNPACK on the CPU).

Sessions take feeds in the model's own (source) layout and return outputs in it, like every other
runtime: the layout record next to the file (layout.json, written by the SavedModel step) says how
each input is transposed on the way in and each output on the way back. Quantized (int8/uint8)
inputs are quantized with the tensor's scale and zero point, quantized outputs dequantized.

Outputs are matched to the signature by name: the SavedModel step keys the TFLite signature by the
ONNX output names, which are the model's. When the names differ (a foreign file), the layout
record's output order (the ONNX graph's) decides; without a record, a single output is unambiguous
and several are taken in the flatbuffer's output-tensor order (the converted function's return
order), since TFLite sorts signature outputs by key and shapes alone cannot tell equal-shaped
outputs apart.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from buildsys.errors import StepError, not_installed
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, first_line, fixed_batch, loading
from buildsys.formats.tflite.layout import guess_perm
from buildsys.status import Caveat, CaveatKind

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.localise import Probe

S = TypeVar("S", bound=Session)


class _Tensor:
    """One signature input or output: its key, interpreter details and layout permutation."""

    def __init__(self, key: str, details: dict[str, Any], perm: list[int]):
        self.key = key
        self.details = details
        self.perm = perm
        scale, zero = details.get("quantization", (0.0, 0))
        self.scale, self.zero = float(scale), int(zero)
        self.dtype = details["dtype"]

    @property
    def quantized(self) -> bool:
        import numpy as np

        return self.scale != 0.0 and np.dtype(self.dtype) in (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))

    def encode(self, array: "np.ndarray") -> "np.ndarray":
        """A source-layout feed → the artifact's layout and element type."""
        import numpy as np

        from buildsys.formats.tflite.layout import to_artifact

        array = to_artifact(array, self.perm)
        if self.quantized and array.dtype.kind == "f":
            info = np.iinfo(self.dtype)
            q = np.round(array.astype(np.float64) / self.scale + self.zero)
            return np.clip(q, info.min, info.max).astype(self.dtype)
        return np.ascontiguousarray(array, dtype=self.dtype)

    def decode(self, array: "np.ndarray") -> "np.ndarray":
        """An artifact output → float (dequantized) in the source layout."""
        import numpy as np

        from buildsys.formats.tflite.layout import from_artifact

        if self.quantized:
            array = (array.astype(np.float32) - self.zero) * np.float32(self.scale)
        return from_artifact(array, self.perm)


class LiteRtSession(Session):
    """A signature runner fed in the source layout; outputs come back in the model's order."""

    def __init__(self, path: Path, model: "Model", record: dict[str, Any] | None):
        self.path = path
        self.model = model
        self.record = record
        self.xnnpack = True
        self._bind(_interpreter(path, xnnpack=True))

    def use_threads(self, threads: int | None) -> int | None:
        """LiteRT fixes its threads when the interpreter is made: make it again with `threads`."""
        if threads is None:
            return None
        self._bind(_interpreter(self.path, xnnpack=self.xnnpack, threads=threads))
        return threads

    def _bind(self, interpreter: Any) -> None:
        from buildsys.formats.tflite.layout import SIGNATURE

        model, record, path = self.model, self.record, self.path
        signatures = interpreter.get_signature_list()
        if not signatures:
            raise StepError(f"'{path.name}' has no signature; modelbuild runs .tflite files through their "
                            "SignatureDef (convert with TFLiteConverter.from_saved_model)")
        key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
        self.runner = interpreter.get_signature_runner(key)
        in_details, out_details = self.runner.get_input_details(), self.runner.get_output_details()
        self.inputs = self._match_inputs(in_details, record, path)
        self.outputs = self._match_outputs(interpreter, key, out_details, record, path)
        firsts = {int(t.details["shape_signature"][0]) if len(t.details["shape_signature"]) else 1
                  for t in self.inputs.values()}
        # A fixed first axis (1 after tracing with a batch of 1, or batch_size) takes exactly that many
        # samples per call; short chunks are padded and the padding dropped from the outputs.
        fixed = max(firsts)
        self.fixed = fixed if -1 not in firsts else None
        self.max_batch = self.fixed or fixed_batch(model)

    def _match_inputs(self, details: dict[str, Any], record: dict[str, Any] | None, path: Path) -> dict[str, _Tensor]:
        records = {r["name"]: r for r in (record or {}).get("inputs", [])}
        keys = list(details)
        out = {}
        for i, inp in enumerate(self.model.inputs):
            rec = records.get(inp.name, {})
            key = rec.get("key", inp.name)
            if key not in details:
                if len(keys) != len(self.model.inputs):
                    raise StepError(f"'{path.name}' has inputs [{', '.join(keys)}] but the signature declares "
                                    f"[{', '.join(i.name for i in self.model.inputs)}]")
                key = keys[i]
            perm = rec.get("perm") or guess_perm(list(inp.shape), list(details[key]["shape_signature"]))
            out[inp.name] = _Tensor(key, details[key], perm)
        return out

    def _match_outputs(self, interpreter: Any, signature: str, details: dict[str, Any],
                       record: dict[str, Any] | None, path: Path) -> list[_Tensor]:
        wanted = [o.name for o in self.model.outputs]
        records = (record or {}).get("outputs", [])
        perms = {r["key"]: r.get("perm") for r in records}
        if all(n in details for n in wanted):
            keys = wanted
        elif records and len(records) >= len(wanted):
            by_name = {r["name"]: r["key"] for r in records}
            keys = [by_name[n] for n in wanted] if all(n in by_name for n in wanted) else \
                [r["key"] for r in records[: len(wanted)]]
        elif len(details) == len(wanted) == 1:
            keys = list(details)
        else:
            # Flatbuffer tensor order: the signature maps keys to tensor indices.
            index_of = interpreter._get_full_signature_list()[signature]["outputs"]
            keys = sorted(details, key=lambda k: index_of[k])[: len(wanted)]
        if len(keys) < len(wanted) or any(k not in details for k in keys):
            raise StepError(f"'{path.name}' has outputs [{', '.join(details)}] but the signature declares "
                            f"[{', '.join(wanted)}]")
        return [_Tensor(k, details[k], perms.get(k) or list(range(len(details[k]["shape_signature"]))))
                for k in keys]

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np

        count = len(next(iter(feeds.values())))
        pad = (self.fixed - count) if self.fixed and count < self.fixed else 0
        ready = {}
        for name, tensor in self.inputs.items():
            array = feeds[name]
            if pad:
                array = np.concatenate([array, np.repeat(array[-1:], pad, axis=0)], axis=0)
            ready[tensor.key] = tensor.encode(array)
        try:
            result = self.runner(**ready)
        except RuntimeError as exc:
            # XNNPACK's refusals name it as "XNNPACK" or only as "TfLiteXNNPackDelegate" (a sparse or
            # rank-7 FULLY_CONNECTED): match either spelling.
            if not self.xnnpack or "xnnpack" not in str(exc).lower():
                raise StepError(f"LiteRT failed to run '{self.path.name}': {first_line(exc)}") from exc
            # XNNPACK refused to prepare part of the graph (seen with some int8 graphs): the builtin
            # kernels still compute the same model, so run on them and say so.
            self.note(Caveat(CaveatKind.DEGRADED, "XNNPACK fallback", f"XNNPACK (what Android runs) could not "
                             f"prepare the graph ({first_line(exc)[:120]}); checked on LiteRT's builtin CPU kernels",
                             "litert"))
            self.xnnpack = False
            self._bind(_interpreter(self.path, xnnpack=False))
            result = self.runner(**ready)
        return [t.decode(result[t.key])[:count] if pad else t.decode(result[t.key]) for t in self.outputs]


def litert_unavailable() -> str | None:
    """Why the LiteRT interpreter cannot run here (ai-edge-litert missing), or None; checked without importing it.
    Shared by every runtime that runs a .tflite (the tensor one here, the decoder LM one in formats/llm)."""
    return not_installed(["ai_edge_litert"] if importlib.util.find_spec("ai_edge_litert") is None else [], "tflite")


def layout_session(session: Callable[[Path, "Model", dict[str, Any] | None], S], path: Path, model: "Model") -> S:
    """`session` of the file at `path` (a .tflite here, a SavedModel in tensorflow.py), fed and read in the
    model's own layout by the layout record (layout.json) beside it."""
    from buildsys.formats.tflite.layout import read_layout

    path = Path(path)
    return session(path, model, read_layout(path.parent))


@register_runtime
class LiteRt(Runtime):
    """The LiteRT interpreter (TFLite's runtime, as on Android) with the XNNPACK CPU delegate."""

    name = "litert"
    requires, extra = ("ai_edge_litert",), "tflite"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        return layout_session(LiteRtSession, path, model)

    def intermediates(self, path: Path, model: "Model", root: Path, feeds: dict[str, "np.ndarray"],
                      modules: list[str]) -> "list[Probe]":
        from buildsys.formats.tflite.intermediates import litert_intermediates

        return litert_intermediates(layout_session(LiteRtSession, path, model), feeds, modules)


def _interpreter(path: Path, xnnpack: bool, threads: int | None = None) -> Any:
    """A LiteRT interpreter (`threads`: every CPU); the default op resolver applies XNNPACK to the ops it supports."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with loading(f"LiteRT could not load '{path.name}'", _with_flex_hint):
        return Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1,
                           experimental_op_resolver_type=resolver)


def _with_flex_hint(exc: BaseException) -> str:
    """The first line of why the interpreter refused a file, and what it lacks when the file uses TensorFlow ops."""
    text = first_line(exc)
    hint = " (the file uses TensorFlow ops: it needs the Flex delegate, which this interpreter lacks)" \
        if "Flex" in text or "select TensorFlow" in text else ""
    return f"{text}{hint}"
