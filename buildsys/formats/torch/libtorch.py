"""The "libtorch" runtime: a TorchScript file run by a small C++ program linked against LibTorch, no Python.

The torch wheel ships LibTorch's headers (`torch/include`) and libraries (`torch/lib`); the loader
(`libtorch_loader.cpp`) is compiled against them once per toolchain and cached under
`$MODELBUILD_LIBTORCH_CACHE` (default `${XDG_CACHE_HOME:-~/.cache}/modelbuild/libtorch/<key>/`), keyed
by the loader's source, the torch version, the C++ ABI flag and the compiler's version, so every
project and every test of one toolchain shares one build (13-16 s of CPU with g++ 12). Inputs go
to the program and outputs come back in a raw tensor file (the format is in the loader's header).
This is the format's serving runtime: checks run it when the acceptance asks for `serving`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.runtime import Runtime, Session, fixed_batch

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.data import Batch
    from buildsys.config.schema import Model

SOURCE = Path(__file__).with_name("libtorch_loader.cpp")
BINARY = "libtorch_loader"
#: c10::ScalarType codes of the dtypes a signature may hold (the order of c10/core/ScalarType.h).
SCALAR_TYPES = {"uint8": 0, "int8": 1, "int16": 2, "int32": 3, "int64": 4, "float16": 5, "float32": 6,
                "float64": 7, "bool": 11}
DTYPES = {code: name for name, code in SCALAR_TYPES.items()}
COMPILE_TIMEOUT_S = 900


def compiler() -> str | None:
    """The C++ compiler: $CXX where set, else g++ or c++ on PATH; None when there is none."""
    given = os.environ.get("CXX")
    if given:
        return shutil.which(given)
    return shutil.which("g++") or shutil.which("c++")


def torch_dir() -> Path | None:
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def cache_root() -> Path:
    given = os.environ.get("MODELBUILD_LIBTORCH_CACHE")
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelbuild" / "libtorch"


def compile_command(cxx: str, torch: Path, abi: int, out: Path) -> list[str]:
    """g++ flags for a LibTorch program: the wheel's headers, its libraries (rpath: found at run time
    without LD_LIBRARY_PATH) and the wheel's C++ ABI (a mismatch fails at link time)."""
    include = torch / "include"
    return [cxx, "-std=c++20", "-O1", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{include}",
            f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}", "-w", str(SOURCE), "-o", str(out),
            f"-L{torch / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch / 'lib'}"]


def loader() -> tuple[Path, float]:
    """The compiled loader, built on first use (under a file lock, so concurrent workers build it
    once), and the seconds this call spent compiling (0.0 on a cache hit)."""
    import fcntl  # POSIX only: imported here so that discovering this module works everywhere
    import importlib.metadata

    import torch as torch_module

    cxx, torch = compiler(), torch_dir()
    if cxx is None or torch is None:
        raise StepError("no C++ compiler" if cxx is None else "torch is not installed")
    abi = int(torch_module._C._GLIBCXX_USE_CXX11_ABI)
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.blake2b(b"\0".join([SOURCE.read_bytes(), importlib.metadata.version("torch").encode(),
                                      str(abi).encode(), str(torch).encode(), *(v.encode() for v in version)]),
                          digest_size=10).hexdigest()
    where = cache_root() / key
    binary = where / BINARY
    if binary.is_file():
        return binary, 0.0
    where.mkdir(parents=True, exist_ok=True)
    with open(where / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():  # another worker built it while this one waited
            return binary, 0.0
        partial = where / f".{BINARY}.{os.getpid()}"
        started = time.perf_counter()
        done = subprocess.run(compile_command(cxx, torch, abi, partial), capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise StepError(f"compiling the LibTorch loader failed ({cxx}): {done.stderr.strip()[-600:]}")
        os.replace(partial, binary)
        seconds = time.perf_counter() - started
        print(f"compiled the LibTorch loader in {seconds:.1f} s: {binary}", file=sys.stderr)
        return binary, seconds


def write_tensor(out: BinaryIO, value: "np.ndarray") -> None:
    import numpy as np

    value = np.ascontiguousarray(value)
    out.write(struct.pack("<ii", SCALAR_TYPES[value.dtype.name], value.ndim))
    out.write(struct.pack(f"<{value.ndim}q", *value.shape))
    out.write(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())


def read_outputs(data: bytes) -> list[list[tuple[str, "np.ndarray"]]]:
    """The loader's output file: per batch, (name, array) per output."""
    import numpy as np

    if data[:4] != b"MBTO":
        raise StepError("the LibTorch loader wrote no output file")
    pos = 4

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    batches: list[list[tuple[str, np.ndarray]]] = []
    for _ in range(take("<i")[0]):
        outputs = []
        for _ in range(take("<i")[0]):
            name = data[pos:pos + take("<i")[0]].decode()
            pos += len(name.encode())
            code, ndim = take("<ii")
            shape = take(f"<{ndim}q")
            dtype = np.dtype(DTYPES[code]).newbyteorder("<")
            count = int(np.prod(shape, dtype=np.int64))
            outputs.append((name, np.frombuffer(data, dtype, count, pos).reshape(shape).astype(dtype.newbyteorder("="))))
            pos += count * dtype.itemsize
        batches.append(outputs)
    return batches


class LibTorchSession(Session):
    """A TorchScript file run by the compiled loader: one process per `run_all`, every chunk inside it."""

    def __init__(self, binary: Path, path: Path, model: "Model", compiled_s: float):
        self.binary, self.path, self.model = binary, Path(path), model
        self.max_batch = fixed_batch(model)
        self.compiled_s = compiled_s

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        return self._run_batches([feeds])[0]

    def run_all(self, batch: "Batch") -> list["np.ndarray"]:
        import numpy as np

        parts = self._run_batches(list(batch.chunks(self.max_batch)))
        return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]

    def _run_batches(self, chunks: list[dict[str, "np.ndarray"]]) -> list[list["np.ndarray"]]:
        names = [i.name for i in self.model.inputs]
        with tempfile.TemporaryDirectory(prefix="libtorch-") as tmp:
            inputs, outputs = Path(tmp) / "inputs.bin", Path(tmp) / "outputs.bin"
            with open(inputs, "wb") as out:
                out.write(b"MBTI" + struct.pack("<ii", len(chunks), len(names)))
                for feeds in chunks:
                    for name in names:
                        write_tensor(out, feeds[name])
            done = subprocess.run([str(self.binary), str(self.path), str(inputs), str(outputs)],
                                  capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            if done.returncode != 0:
                text = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()
                raise StepError(f"LibTorch (C++) could not run '{self.path.name}': {' '.join(text[:3])[:500]}")
            batches = read_outputs(outputs.read_bytes())
        return [self._in_order(outputs_of) for outputs_of in batches]

    def _in_order(self, outputs: list[tuple[str, "np.ndarray"]]) -> list["np.ndarray"]:
        """The loader's outputs in the signature's order: by name for a dict, by position otherwise."""
        wanted = [o.name for o in self.model.outputs]
        named = {name: value for name, value in outputs if name}
        if named:
            missing = [n for n in wanted if n not in named]
            if missing:
                raise StepError(f"the TorchScript module's outputs have no {missing} (it has {sorted(named)})")
            return [named[n] for n in wanted]
        if len(outputs) < len(wanted):
            raise StepError(f"the TorchScript module returned {len(outputs)} output(s), the signature has {len(wanted)}")
        return [value for _, value in outputs[:len(wanted)]]


@register_runtime
class LibTorchRuntime(Runtime):
    """TorchScript in a C++ program linked against LibTorch (the torch wheel's own libraries)."""

    name = "libtorch"
    os_packages = {"g++": "g++"}
    part = "LibTorch (C++)"

    requires, extra = ("torch",), "torch"

    def _unavailable(self) -> str | None:
        if compiler() is None:
            return ("no C++ compiler (g++, c++ or $CXX) to build the LibTorch loader with "
                    "(install g++, e.g. apt-get install g++)")
        torch = torch_dir()
        if torch is None or not (torch / "include" / "torch" / "script.h").is_file():
            return "the installed torch has no LibTorch headers (torch/include/torch/script.h)"
        return None

    def host_components(self) -> dict[str, str]:
        return {"c++ compiler": "present" if compiler() is not None else "none"}

    def preimport(self) -> None:
        loader()  # a bench must not time the compile

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        binary, seconds = loader()
        return LibTorchSession(binary, path, model, seconds)
