"""Byte-reproducible artifacts: remove what makes two builds of the same inputs differ.

deploy.lock is committed, so two clean builds on two machines must give the same digests wherever
the model, data and toolchain are the same. Three converters put build-specific bytes into their
files: TorchScript archives carry the trace's Python call stacks (absolute paths of the checkout) and
type names numbered by what the process compiled before,
torch.export programs carry stack traces, and TensorFlow names traced functions with a process-wide
counter (so a SavedModel depends on how many conversions its worker ran before) and writes a random
UUID into fingerprint.pb. Each helper here runs inside a step, on the file the step just wrote.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# TensorFlow uids used by one conversion start at the next multiple of this, so that they are large,
# distinctive numbers that can be told apart from the digits in layer names.
_UID_BUCKET = 1_000_000


def torchscript_without_debug_info(path: Path) -> None:
    """Rewrite a TorchScript (or lite-interpreter) archive in place without its `*.debug_pkl` records.

    Those records hold the trace's call stacks with the build host's absolute paths
    (`/home/ci/repo/model.py(43): forward`). Loading and running do not need them; only error
    messages lose their Python source lines. The archive is rewritten with torch's own writer, so
    record alignment stays what torch.jit.load expects, and `.data/serialization_id` (derived from
    record checksums) comes out the same for the same records.
    """
    import torch

    reader = torch._C.PyTorchFileReader(str(path))
    names = [n for n in reader.get_all_records() if not n.endswith(".debug_pkl") and n != ".data/serialization_id"]
    records = [(name, reader.get_record(name)) for name in names]
    del reader
    # The writer names the archive's top folder after the file's stem: write under the same name.
    staging = path.parent / ".without-debug-info"
    staging.mkdir(exist_ok=True)
    writer = torch._C.PyTorchFileWriter(str(staging / path.name))
    for name, data in records:
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    del writer
    (staging / path.name).replace(path)
    staging.rmdir()


def fresh_torchscript_types() -> None:
    """Start TorchScript's type naming afresh, as in a new process, before a trace or script whose archive
    is an artifact.

    TorchScript names a module type that clashes with one compiled earlier in the process
    `___torch_mangle_<n>`, from a counter of the process-wide compilation unit, and the names are written
    into the archive. A worker kept warm across nodes (buildsys.running.pool) has compiled other models first, how
    many depending on the build's order (-j), so the same model would give other bytes. A fresh
    compilation unit, class registry and concrete-type store make the names depend on this model only.
    Modules compiled before keep their own compilation unit and keep working.
    """
    import torch
    import torch.jit._recursive as recursive
    import torch.jit._state as state

    state._python_cu = torch._C.CompilationUnit()
    state._clear_class_state()
    state._jit_caching_layer.clear()
    state._jit_function_overload_caching.clear()
    recursive.concrete_type_store = recursive.ConcreteTypeStore()


def exported_program_without_stack_traces(program: Any) -> None:
    """Drop the stack traces (build host paths) from every node of a torch.export program, in place."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            node.meta.pop("stack_trace", None)


@contextmanager
def tensorflow_uids() -> Iterator[dict[str, int]]:
    """Run a SavedModel conversion from a known TensorFlow uid; yields {'start', 'end'} (end set on exit).

    TensorFlow's uid counter only grows, per process. Burning it up to the next multiple of a
    million costs ~0.1 s and makes every uid of this conversion an offset from a known start,
    which `canonical_saved_model` then rewrites as that offset.
    """
    from tensorflow.python.framework import ops

    start = (ops.uid() // _UID_BUCKET + 1) * _UID_BUCKET
    while ops.uid() < start - 1:
        pass
    span = {"start": start, "end": start}
    yield span
    span["end"] = ops.uid()


def canonical_saved_model(directory: Path, start: int, end: int) -> None:
    """Rewrite `directory`/saved_model.pb with uids in [start, end) as offsets from `start`, and
    fingerprint.pb without its random UUID, so the same conversion gives the same bytes anywhere."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import fingerprint_pb2, saved_model_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    pb = directory / "saved_model.pb"
    model = saved_model_pb2.SavedModel()
    model.ParseFromString(pb.read_bytes())

    def offset(match: re.Match[str]) -> str:
        uid = int(match.group(0))
        return str(uid - start) if start <= uid < end else match.group(0)

    def in_string(match: re.Match[str]) -> str:  # uids appear in names and as bare strings ("1000376")
        return re.sub(r"(?<!\d)\d{7,}(?!\d)", offset, match.group(0))

    # Only inside quoted strings: numeric fields (shapes, constants) are never touched.
    text = re.sub(r'"(?:[^"\\\n]|\\.)*"', in_string, text_format.MessageToString(model))
    canonical = saved_model_pb2.SavedModel()
    text_format.Parse(text, canonical)
    for graph in canonical.meta_graphs:  # the function library's order follows a hash-ordered dict
        library = graph.graph_def.library
        functions = sorted(library.function, key=lambda f: f.signature.name)
        gradients = sorted(library.gradient, key=lambda g: (g.function_name, g.gradient_func))
        del library.function[:], library.gradient[:]
        library.function.extend(functions)
        library.gradient.extend(gradients)
    pb.write_bytes(canonical.SerializeToString(deterministic=True))
    fingerprint = directory / "fingerprint.pb"
    if fingerprint.exists():
        fp = fingerprint_pb2.FingerprintDef()
        fp.ParseFromString(fingerprinting.CreateFingerprintDef(str(directory)))
        # TensorFlow fills the uuid at random on each save; derive it from the content hashes instead.
        fp.uuid = ""
        fp.uuid = str(int(hashlib.blake2b(fp.SerializeToString(deterministic=True), digest_size=16).hexdigest(), 16))
        fingerprint.write_bytes(fp.SerializeToString(deterministic=True))
