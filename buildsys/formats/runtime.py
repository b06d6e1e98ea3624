"""The Runtime contract: load an artifact, run batches of inputs, return outputs in model order."""

from __future__ import annotations

import importlib.util
import platform
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator

from buildsys.errors import StepError, not_installed

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.data import Batch
    from buildsys.config.schema import Model
    from buildsys.localise import Probe
    from buildsys.status import Caveat


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" for none): what names the failure, without its trace."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


@contextmanager
def loading(what: str, cause: Callable[[BaseException], str] = first_line) -> Iterator[None]:
    """Turn a failure inside the block (a runtime reading an artifact) into a StepError that says `what` could
    not be loaded ("'model.pt' is not a loadable TorchScript file", "OpenVINO could not load 'model.xml'"),
    then the cause's type and `cause` of it (by default the first line of its message)."""
    try:
        yield
    except Exception as exc:
        raise StepError(f"{what}: {type(exc).__name__}: {cause(exc)}") from exc


class CannotRun(StepError):
    """This runtime cannot execute this artifact (an op it has no implementation for): the check
    reports "not run" with this reason, never a failed or a passed comparison."""


class NotLocalisable(StepError):
    """This runtime (or this artifact) cannot show its intermediate tensors (buildsys.localise): `what`
    says why."""


class Session:
    """A loaded artifact. `run` takes one chunk of samples and returns outputs in model order.

    A session that ran on a lesser path than the one asked for (LiteRT falling back from XNNPACK to
    its builtin kernels) says so in `caveats` (buildsys.status): the check reports them with the
    target's status, and `require_numeric` fails on them."""

    #: Largest number of samples one `run` call accepts (1 for a fixed batch of 1).
    max_batch: int = 64
    caveats: "list[Caveat]"

    def note(self, caveat: "Caveat") -> None:
        """Record a lesser path this session took (once)."""
        if caveat not in self.__dict__.setdefault("caveats", []):
            self.caveats.append(caveat)

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        raise NotImplementedError

    def findings(self) -> list[dict[str, object]]:
        """What the session saw inside the program over every sample it ran, one dict each with `text`
        and, where it must fail the check, `fails: True` (a stand-in's fp16 overflow at an op, by
        module). [] for runtimes that see only inputs and outputs."""
        return []

    def close(self) -> None:
        """Release what `load` started (a server process, a temporary directory). Idempotent."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def use_threads(self, threads: int | None) -> int | None:
        """Run with `threads` intra-op threads where this runtime lets a session choose (a bench's `threads`), and
        say how many it runs with; None: it keeps its own default, which the bench then reports as unknown."""
        return None

    def run_all(self, batch: "Batch") -> list["np.ndarray"]:
        """Run every sample of `batch` in chunks of `max_batch` and concatenate per output."""
        import numpy as np

        parts = [self.run(chunk) for chunk in batch.chunks(self.max_batch)]
        return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]


class Runtime:
    """How to execute one family of artifacts on this host."""

    name: ClassVar[str]
    #: The distributions whose versions enter the keys of checks. A runtime that declares `requires` and not
    #: these gets the distributions of those modules, as pip names them (`ai_edge_litert` → `ai-edge-litert`):
    #: declared only where more packages than the imported ones decide its numbers.
    packages: ClassVar[tuple[str, ...]] = ()
    #: Programs the runtime (or its install step) runs, each with the Debian package that provides it:
    #: `modelbuild doctor --install-os-packages` installs the missing ones.
    os_packages: ClassVar[dict[str, str]] = {}
    #: npm packages (name → exact version) the runtime serves to a browser from disk:
    #: `python -m buildsys.formats.web.install` installs those of every runtime, never a check.
    npm_packages: ClassVar[dict[str, str]] = {}
    #: A runtime that can compute this one's numbers where this one cannot run, labelled as not the
    #: device runtime (Core ML off macOS: "coreml-mil", the MIL reference interpreter). A check uses
    #: it only when the target opts in; None: no stand-in.
    stand_in: ClassVar[str | None] = None
    #: For a stand-in: the words a target's status adds to say whose numbers these are
    #: ("MIL reference, not Apple's runtime"), and what its numbers do not exercise. None for a
    #: device's own runtime.
    label: ClassVar[str | None] = None
    not_exercised: ClassVar[str] = ""
    #: Why `intermediates` cannot show this runtime's intermediate tensors (localisation not available).
    no_intermediates: ClassVar[str] = "modelbuild sees only the inputs and outputs of this runtime"
    #: As a format's serving runtime: what a check calls its part ("serving check not run",
    #: "LibTorch (C++) check not run").
    part: ClassVar[str] = "serving"

    #: The Python modules (import names) the runtime needs, and the pip extra that installs them: `unavailable`
    #: names those missing, with the install command (errors.not_installed).
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = "server"
    #: The one platform (`sys.platform`) it executes on, and the sentence that says so ("Core ML execution needs
    #: macOS"); None: any.
    only_on: ClassVar[tuple[str, str] | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "requires" in cls.__dict__ and "packages" not in cls.__dict__:
            cls.packages = tuple(module.replace("_", "-") for module in cls.requires)

    def unavailable(self) -> str | None:
        """Why this runtime cannot execute here: another platform than it needs, a module it requires not
        installed, or what `_unavailable` adds (a browser, a server binary, a compiler). None if it can.
        Cheap: nothing is imported."""
        if self.only_on is not None and sys.platform != self.only_on[0]:
            return f"{self.only_on[1]} (this host is {platform.system() or sys.platform})"
        return not_installed([m for m in self.requires if importlib.util.find_spec(m) is None], self.extra) \
            or self._unavailable()

    def _unavailable(self) -> str | None:
        """What else this runtime needs that the declarations do not say (None: nothing)."""
        return None

    def host_components(self) -> dict[str, str]:
        """What of this host decides whether (or how) the runtime runs, beyond OS, CPU and packages, for
        the keys of checks that use it as their serving runtime (a C++ compiler for LibTorch): a 'not
        run' made without it never travels to a host that has it. Cheap (`plan` asks it); {} by default."""
        return {}

    def out_of_reach(self) -> str | None:
        """Why no install step of modelbuild's can make this runtime available on this host: another
        OS (Core ML needs macOS), no NVIDIA GPU, or software on no registry this host reaches (Triton's
        ONNX Runtime backend comes only in NGC's containers). None: where `unavailable` answers, installing
        what it names fixes it, so a strict test run (`--strict-runtimes`) fails instead of skipping."""
        return None

    def preimport(self) -> None:
        """Import the toolchain ahead of timing (a bench's warm-up), so no import lands in a measurement.

        The default imports every package by its module name; a runtime whose import has side
        effects to suppress (OpenVINO's telemetry) overrides it."""
        import importlib

        for package in self.packages:
            try:
                importlib.import_module(package.replace("-", "_"))
            except Exception:  # a distribution whose module has another name: load() will import it
                pass

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        raise NotImplementedError

    def intermediates(self, path: Path, model: "Model", root: Path, feeds: dict[str, "np.ndarray"],
                      modules: list[str]) -> "list[Probe]":
        """Every intermediate tensor the artifact computes on `feeds` (one sample), in execution order,
        each with the path among `modules` (the PyTorch module's `named_modules()`) that its name maps to
        (buildsys.localise.names), for per-layer localisation. Raises NotLocalisable (the default, saying
        `no_intermediates`) where this runtime cannot show them."""
        raise NotLocalisable(f"localisation not available for {self.name}: {self.no_intermediates}")

    def inspect(self, path: Path, model: "Model", fmt: str) -> dict | None:
        """Structural facts about an artifact that need no execution, so they hold on every host:
        {"facts": {...}, "problems": ["..."]}. Problems fail the check even where the numeric part
        cannot run (Core ML off macOS). None: this runtime has no structural check."""
        return None


def fixed_batch(model: "Model") -> int:
    """1 when any input's first axis is a fixed size (run one sample per call), else 64."""
    return 1 if any(isinstance(i.shape[0], int) for i in model.inputs) else 64
