"""The ExecuTorch runtime: a .pte run by ExecuTorch's own C++ runtime (Python bindings), XNNPACK kernels included.

This is the runtime an app links (the same program loader, memory planner, portable kernels and
XNNPACK delegate), not PyTorch: a check that passes here has run the bytes that ship.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.executorch.contract import METHOD, executorch_unavailable
from buildsys.formats.runtime import Runtime, Session
from buildsys.formats.torch.loading import outputs_in_order

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model
    from buildsys.localise import Probe


class PteSession(Session):
    """One loaded method. A .pte has static shapes: every call gets exactly the program's batch.

    `max_batch` is the batch the program was exported with (read from its method metadata), so the
    check's chunks fit; a last, shorter chunk is padded by repeating its samples and the padding's
    outputs are dropped.
    """

    def __init__(self, method: Any, model: Model, batch: int, path: Path | None = None):
        self.method = method
        self.model = model
        self.max_batch = batch
        self.path = path
        self._pool_before: int | None = None  # the process's thread count before use_threads, for close()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np
        import torch

        n = len(next(iter(feeds.values())))
        args = []
        for inp in self.model.inputs:
            value = feeds[inp.name]
            if n < self.max_batch:  # pad by cycling through the chunk's own samples
                value = np.concatenate([value] * -(-self.max_batch // n), axis=0)[: self.max_batch]
            args.append(torch.from_numpy(np.ascontiguousarray(value)))
        try:
            result = self.method.execute(args)
        except Exception as exc:
            raise StepError(f"ExecuTorch could not run the program on inputs of shapes "
                            f"{[tuple(a.shape) for a in args]}: {type(exc).__name__}: {_first_line(exc)}") from exc
        return [np.asarray(t.detach().numpy() if isinstance(t, torch.Tensor) else t)[:n]
                for t in outputs_in_order(list(result), self.model)]

    def use_threads(self, threads: int | None) -> int | None:
        """XNNPACK's kernels run on ExecuTorch's one process-wide thread pool, which an app sizes with
        `_unsafe_reset_threadpool`. A delegate takes the pool when its method loads, and resizing makes a new
        pool, so the method is loaded again after it ("unsafe": any other method loaded before would run on
        the freed pool; a worker holds one session at a time). close() puts the old size back."""
        if threads is None or self.path is None:
            return None
        from executorch.extension.pybindings import portable_lib

        if self._pool_before is None:
            self._pool_before = int(portable_lib._threadpool_get_thread_count())
        self.method = None  # released before its pool is
        portable_lib._unsafe_reset_threadpool(threads)
        self.method = _load_method(self.path)
        return int(portable_lib._threadpool_get_thread_count())

    def close(self) -> None:
        if self._pool_before is not None:
            from executorch.extension.pybindings import portable_lib

            self.method = None  # loaded on the pool about to be freed: never run again
            portable_lib._unsafe_reset_threadpool(self._pool_before)
            self._pool_before = None


@register_runtime
class ExecutorchRuntime(Runtime):
    """executorch.runtime: load_program → load_method('forward') → execute, on the CPU with XNNPACK."""

    name = "executorch"
    requires, extra = ("executorch",), "executorch"

    def load(self, path: Path, model: Model, root: Path) -> Session:
        try:
            method = _load_method(Path(path))
            meta = method.metadata
        except Exception as exc:
            raise StepError(f"ExecuTorch could not load '{Path(path).name}': {type(exc).__name__}: "
                            f"{_first_line(exc)}") from exc
        sizes = _input_sizes(meta)
        if len(sizes) != len(model.inputs):
            raise StepError(f"'{Path(path).name}' takes {len(sizes)} input(s) but the signature declares "
                            f"{len(model.inputs)} ({', '.join(i.name for i in model.inputs)})")
        batch = sizes[0][0] if sizes and sizes[0] else 1
        return PteSession(method, model, batch, Path(path))

    def intermediates(self, path: Path, model: Model, root: Path, feeds: dict[str, np.ndarray],
                      modules: list[str]) -> list[Probe]:
        """Not the .pte's own tensors (its XNNPACK delegate calls are opaque to ExecuTorch's devtools) but a
        stand-in's: the program it was lowered from, saved beside it, re-lowered one op per XNNPACK delegate
        call and run here with the ETDump debug buffer on (formats/executorch/intermediates.py)."""
        from buildsys.formats.executorch.intermediates import (
            pte_intermediates,
            saved_program,
        )

        saved_program(path)  # no program beside it: not available, and why (before loading the .pte)
        batch = self.load(path, model, Path(root)).max_batch
        return pte_intermediates(path, model, feeds, batch, modules)

    def inspect(self, path: Path, model: Model, fmt: str) -> dict | None:
        """Delegates, portable operators and input shapes, read from the program (no execution)."""
        if executorch_unavailable():
            return None
        from executorch.exir._serialize._program import deserialize_pte_binary
        from executorch.runtime import Runtime as EtRuntime

        data = Path(path).read_bytes()
        plan = deserialize_pte_binary(data).program.execution_plan[0]
        sizes = _input_sizes(EtRuntime.get().load_program(data).metadata(METHOD))
        facts = {"method": plan.name, "delegates": sorted({d.id for d in plan.delegates}),
                 "portable_operators": sorted({op.name for op in plan.operators}),
                 "input_shapes": [list(s) for s in sizes]}
        problems = []
        for inp, shape in zip(model.inputs, sizes):
            declared = list(inp.shape)
            wrong = [a for a, d in enumerate(declared) if isinstance(d, int) and (a >= len(shape) or shape[a] != d)]
            if len(shape) != len(declared) or wrong:
                problems.append(f"input '{inp.name}' has shape {list(shape)} in the program but {declared} in "
                                f"the signature")
        if len(sizes) != len(model.inputs):
            problems.append(f"the program takes {len(sizes)} input(s), the signature declares {len(model.inputs)}")
        return {"facts": facts, "problems": problems}


def _load_method(path: Path) -> Any:
    """The program's `forward`, loaded by ExecuTorch's runtime (its delegates initialised)."""
    from executorch.runtime import Runtime as EtRuntime

    return EtRuntime.get().load_program(path).load_method(METHOD)


def _input_sizes(meta: Any) -> list[tuple[int, ...]]:
    """The static shape of every tensor input of a method, in order."""
    return [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
