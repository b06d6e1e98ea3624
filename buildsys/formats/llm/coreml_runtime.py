"""The runtimes of `llm-coreml`: Core ML itself (macOS only) and the MIL reference interpreter (any OS).

`llm-coreml` loads the package with coremltools, makes one `MLState` per sample (`make_state()`) and
predicts with it, so the cache stays in Core ML between calls; off macOS it is unavailable and the
check runs its stand-in `llm-coreml-mil` instead, saying so (a caveat on every output: "Core ML
execution needs macOS …; computed by llm-coreml-mil instead"). `llm-coreml-mil` evaluates the same
program op by op in NumPy (coreml/mil.py) with the states held as float16 buffers that persist
across calls (`read_state` / `coreml_update_state`), under the same `GenerationSession` as every LLM
runtime: its numbers are the MIL reference's, not Apple's runtime's. `inspect` checks the structure
(states, I/O, spec version) on any OS.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.coreml.runtime import AppleCoreML
from buildsys.formats.llm.contract import CacheSpec
from buildsys.formats.llm.generate import GenerationSession
from buildsys.formats.runtime import CannotRun, Runtime, Session

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.formats.coreml.mil import Fp16Finding, MilProgram

#: iOS18's Core ML specification version: the first with states.
SPEC_VERSION = 9


def _positions(spec: CacheSpec, ids: "np.ndarray", start: int) -> "np.ndarray":
    import numpy as np

    if start + len(ids) > spec.max_cache_len:
        raise StepError(f"positions up to {start + len(ids)} exceed the artifact's max_cache_len {spec.max_cache_len}")
    return np.arange(start, start + len(ids), dtype=np.int32)


class _MilDecoder:
    """The package's program in the MIL reference interpreter; the cache is its two float16 states."""

    def __init__(self, program: "MilProgram", spec: CacheSpec):
        self.program, self.spec = program, spec
        self.max_chunk = spec.max_chunk
        self.findings: dict[tuple[str, str, str], "Fp16Finding"] = {}
        self.reset()

    def reset(self) -> None:
        self.states = self.program.new_states()  # zeroed, as a fresh cache must be

    def forward(self, ids: "np.ndarray", start: int) -> "np.ndarray":
        import numpy as np

        feeds = {"tokens": np.asarray(ids, dtype=np.int32)[None], "cache_position": _positions(self.spec, ids, start)}
        result = self.program.evaluate(feeds, states=self.states)
        for finding in result.findings:
            self.findings.setdefault((finding.kind, finding.op, finding.output), finding)
        return np.asarray(result.outputs["logits"], dtype=np.float32)[0]


class _CoreMLDecoder:
    """Core ML itself (macOS): one MLState per sample, made fresh at each reset."""

    def __init__(self, mlmodel: Any, spec: CacheSpec):
        self.mlmodel, self.spec = mlmodel, spec
        self.max_chunk = spec.max_chunk
        self.reset()

    def reset(self) -> None:
        import numpy as np

        self.state = self.mlmodel.make_state()
        for name in ("k_cache", "v_cache"):  # a new MLState's contents are not specified: zero them
            self.state.write_state(name, np.zeros(self.spec.cache_shape, dtype=np.float16))

    def forward(self, ids: "np.ndarray", start: int) -> "np.ndarray":
        import numpy as np

        feeds = {"tokens": np.asarray(ids, dtype=np.int32)[None], "cache_position": _positions(self.spec, ids, start)}
        return np.asarray(self.mlmodel.predict(feeds, state=self.state)["logits"], dtype=np.float32)[0]


class MilGenerationSession(GenerationSession):
    """Generation by the MIL reference: its findings say what computed the numbers, and any fp16 overflow."""

    def findings(self) -> list[dict[str, object]]:
        from buildsys.formats.coreml.mil_runtime import NOT_EXERCISED, STATUS

        decoder = self.decoder
        assert isinstance(decoder, _MilDecoder)
        out: list[dict[str, object]] = [{"text": f"generation computed by the {STATUS} (Core ML itself: not run: "
                                                 f"needs macOS); {NOT_EXERCISED}; its speed is NumPy's, not Core ML's",
                                         "runtime": LlmCoremlReference.name}]
        out += [{**f.as_dict(), "fails": f.kind != "underflow"} for f in decoder.findings.values()]
        return out


def inspect_stateful(path: Path, fmt: str) -> dict[str, Any]:
    """The structure a stateful LLM package must have (any OS): an ML Program of spec version 9 (iOS18)
    with inputs `tokens` and `cache_position` (int32, length 1 to max_seq_len), output `logits`, and
    states `k_cache`, `v_cache` of llm.json's cache shape in float16; fp16 weights for llm-coreml-fp16."""
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2

    from buildsys.formats.coreml.runtime import inspect_mlpackage

    facts = inspect_mlpackage(path)
    spec = ct.utils.load_spec(str(path))
    cache = CacheSpec.read(path)
    states = []
    for feature in spec.description.state:
        array = feature.type.stateType.arrayType
        states.append({"name": feature.name, "shape": list(array.shape),
                       "dtype": FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()})
    problems = []
    if facts["model_type"] != "mlProgram":
        problems.append(f"expected an ML Program, found {facts['model_type']}")
    if facts["spec_version"] < SPEC_VERSION:
        problems.append(f"specification version {facts['spec_version']} < {SPEC_VERSION}: states need iOS18")
    want_states = [{"name": n, "shape": list(cache.cache_shape), "dtype": "float16"} for n in ("k_cache", "v_cache")]
    if sorted(states, key=lambda s: s["name"]) != want_states:
        problems.append(f"states are {states}, expected {want_states} (llm.json's cache, float16)")
    inputs = {f["name"]: f for f in facts["inputs"]}
    if sorted(inputs) != ["cache_position", "tokens"]:
        problems.append(f"inputs are {sorted(inputs)}, expected ['cache_position', 'tokens']")
    else:
        for name, f in inputs.items():
            if f.get("dtype") != "int32":
                problems.append(f"input '{name}' is {f.get('dtype')}, expected int32")
            upper = max((r[1] for r in f.get("ranges", [])), default=None)
            if upper is not None and upper not in (-1, cache.max_chunk):
                problems.append(f"input '{name}' takes up to {upper} tokens, llm.json says {cache.max_chunk}")
    if [f["name"] for f in facts["outputs"]] != ["logits"]:
        problems.append(f"outputs are {[f['name'] for f in facts['outputs']]}, expected ['logits']")
    for op in ("read_state", "write_state"):  # the package's name of MIL's coreml_update_state
        if not facts["ops"].get(op):
            problems.append(f"the program has no {op} op: its cache is not used as state")
    half = facts.get("compute_precision") == "float16"
    if fmt == "llm-coreml" and half:
        problems.append("format llm-coreml promises float32 compute, but some weights are float16")
    if fmt == "llm-coreml-fp16" and not half:
        problems.append("format llm-coreml-fp16 promises float16 compute, but no weight is float16")
    keep = ("spec_version", "minimum_deployment_target", "inputs", "outputs", "compute_precision", "ops", "bytes")
    return {"facts": {**{k: facts.get(k) for k in keep}, "states": states}, "problems": problems}


@register_runtime
class LlmCoreML(AppleCoreML):
    """Core ML itself (macOS only) generating with the stateful package; elsewhere its stand-in runs."""

    name = "llm-coreml"
    stand_in = "llm-coreml-mil"  # off macOS: the MIL reference interpreter, labelled as such

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        mlmodel = self.mlmodel(path, "CPU_ONLY")
        assert model.generation is not None
        return GenerationSession(_CoreMLDecoder(mlmodel, CacheSpec.read(path)), model.generation.new_tokens)

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        if importlib.util.find_spec("coremltools") is None:
            return None
        return inspect_stateful(Path(path), fmt)


@register_runtime
class LlmCoremlReference(Runtime):
    """The stateful package through the MIL reference interpreter (NumPy; any OS): not Apple's runtime."""

    name = "llm-coreml-mil"
    packages = ("coremltools", "numpy")
    label = "MIL reference, not Apple's runtime"
    not_exercised = ("Apple's compiler, its kernels, their accumulation order and precision, and compute-unit "
                     "placement (CPU / GPU / Neural Engine) are not exercised")

    requires, extra = ("coremltools",), "coreml"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        """Generation through the interpreter; "not run" naming every op it lacks, before anything runs."""
        why = self.unavailable()
        if why:
            raise CannotRun(why)
        from buildsys.formats.coreml.mil import MilProgram

        program = MilProgram.load(Path(path))
        program.require_all()
        if sorted(program.state_names) != ["k_cache", "v_cache"]:
            raise CannotRun(f"the package's states are {program.state_names}, not k_cache and v_cache")
        assert model.generation is not None
        return MilGenerationSession(_MilDecoder(program, CacheSpec.read(path)), model.generation.new_tokens)

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        return LlmCoreML().inspect(path, model, fmt)
