"""Which OpInfos of PyTorch's op suite a deployed model can contain, and the few samples of each the op matrix builds.

An op (an OpInfo of `op_db`) is left out, with its reason kept as data, when no float32 sample of it can be an
inference graph of fixed-shape float tensors:

- `no float32 kernel on CPU`: the OpInfo declares no float32 support on CPU (bitwise ops, CUDA-only kernels);
- `backward op`: a gradient kernel (`*_backward*`), never in a forward graph;
- and when every sample is left out for one of the per-sample reasons below (the op takes the most common).

A sample is left out when it holds a sparse tensor or returns one (`sparse tensor`), has no floating-point tensor
input (`no float tensor input`: a factory such as `arange`, a constant once exported), holds or returns a zero-element
tensor (`zero-element tensor`), fails in eager PyTorch on CPU (`eager PyTorch fails on CPU`, CUDA-only
jiterator ops), returns no tensor (`returns no tensor`: `item`, `equal`, `allclose` give Python values),
mutates its input (`mutates its input`: in-place-only variants such as `normal.in_place`), draws random
numbers (`random`: an ATen op tagged `nondeterministic_seeded` ran, e.g. `bernoulli`, `dropout`, `cauchy`), gives
different results on a second call that fills uninitialised memory with NaN (`nondeterministic`: `empty_like`,
`new_empty` return uninitialised memory), or gives
NaN or inf at its input (`non-finite output`: the op is undefined there, so no artifact could be judged on it).

Of the samples kept, `select` takes up to `per_op` small ones (all float inputs together at most `max_numel`
elements where the op has such samples), preferring samples that differ in shape ranks and keyword arguments.
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.coverage import opcase


@dataclass
class Case:
    """One op sample the matrix builds: `opcase.case(op, index)`, its input and output shapes (batch axis first)."""

    op: str
    index: int
    inputs: list[list[int]]
    outputs: list[list[int]]
    aten: list[str] = field(default_factory=list)  # the ATen ops the eager call dispatched, for the failure classes

    @property
    def key(self) -> str:
        return case_key(self.op, self.index)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def case_key(op: str, index: int) -> str:
    """The model name of a case in generated projects and its row key in the results: `add-3`,
    `div-trunc_rounding-0`, `op-__getitem__-0` (modelbuild names start with a letter or digit)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in op)
    return f"{safe if safe[:1].isalnum() else 'op-' + safe}-{index}"


@dataclass
class Selection:
    """The cases to build, and every op left out with its reason (and per-reason sample counts)."""

    cases: list[Case]
    left_out: dict[str, str]
    samples_left_out: dict[str, int]
    torch_version: str = torch.__version__


class _Calls(TorchDispatchMode):
    """Records the ATen ops a call dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[Any] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Equal up to float reordering (LAPACK kernels are not bitwise reproducible); NaN only where NaN."""

    def close(x: torch.Tensor, y: torch.Tensor) -> bool:
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not (x.is_floating_point() or x.is_complex()):
            return torch.equal(x, y)
        return bool(torch.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True))

    return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))


@contextlib.contextmanager
def _uninitialised_memory_filled() -> Iterator[None]:
    """PyTorch's deterministic mode, which fills memory from `empty` with NaN: an op returning it shows."""
    import torch.utils.deterministic as det

    was, was_fill = torch.are_deterministic_algorithms_enabled(), getattr(det, "fill_uninitialized_memory")
    torch.use_deterministic_algorithms(True, warn_only=True)
    setattr(det, "fill_uninitialized_memory", True)  # a module property: set by attribute, as PyTorch documents
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        setattr(det, "fill_uninitialized_memory", was_fill)


def sample_problem(op: Any, sample: Any) -> tuple[str | None, Case | None]:
    """(why this sample is left out, None) or (None, its Case without op name/index filled)."""
    given = list(opcase.tensors_of([sample.input, sample.args, sample.kwargs]))
    if any(t.layout != torch.strided for t in given):
        return "sparse tensor", None
    floats = [t for t in given if t.is_floating_point()]
    if not floats:
        return "no float tensor input", None
    if any(t.numel() == 0 for t in given):
        return "zero-element tensor", None
    module = opcase.OpCase(op.op, sample)
    before = [t.clone() for t in module.example]
    calls = _Calls()
    try:
        with torch.no_grad(), calls:
            first = op.op(*opcase.fill((module.call[0], *module.call[1]), module.example, _buffers(module)),
                          **opcase.fill(module.call[2], module.example, _buffers(module)))
    except Exception as exc:  # noqa: BLE001 - any failure of the op itself leaves the sample out
        return f"eager PyTorch fails on CPU ({type(exc).__name__})", None
    outputs = list(opcase.tensors_of(first))
    if not outputs:
        return "returns no tensor", None
    if any(t.layout != torch.strided for t in outputs):
        return "sparse tensor", None
    if any(t.numel() == 0 for t in outputs):
        return "zero-element tensor", None
    if any(torch.Tag.nondeterministic_seeded in getattr(f, "tags", ()) for f in calls.ops):
        return "random", None
    if not _same(before, module.example):
        return "mutates its input", None
    try:
        with torch.no_grad(), _uninitialised_memory_filled():
            again = list(opcase.tensors_of(module(*module.example_inputs())))
    except Exception as exc:  # noqa: BLE001
        return f"eager PyTorch fails on CPU ({type(exc).__name__})", None
    processed = list(opcase.tensors_of(module.process(first)))  # what the module returns (opcase.py)
    if not _same([opcase.as_output(t).unsqueeze(0) for t in processed], again):
        return "nondeterministic", None
    if not all(bool(torch.isfinite(t).all()) for t in again):
        return "non-finite output", None
    aten = sorted({str(f.overloadpacket) for f in calls.ops if hasattr(f, "overloadpacket")})
    return None, Case("", -1, [list(t.shape) for t in module.example_inputs()], [list(t.shape) for t in again], aten)


def _buffers(module: opcase.OpCase) -> list[torch.Tensor]:
    return [getattr(module, f"const{i}") for i in range(module.n_buffers)]


def op_problem(op: Any) -> str | None:
    """Why the whole op is left out before any sample is looked at, or None."""
    if torch.float32 not in op.supported_dtypes("cpu"):
        return "no float32 kernel on CPU"
    if "backward" in op.name:
        return "backward op"
    return None


def _signature(case: Case, sample: Any) -> tuple[Any, ...]:
    """What makes two samples of one op different enough to take both: input ranks and keyword names."""
    return tuple(len(s) for s in case.inputs), tuple(sorted(sample.kwargs)), len(sample.args)


def select(per_op: int = 2, max_numel: int = 1024, only: set[str] | None = None) -> Selection:
    """The cases of every op of op_db (or of the ops named in `only`) and what was left out, deterministically."""
    from torch.testing._internal.common_methods_invocations import op_db

    warnings.simplefilter("ignore")
    cases: list[Case] = []
    left_out: dict[str, str] = {}
    counts: collections.Counter[str] = collections.Counter()
    for op in op_db:
        name = opcase.op_name(op)
        if only is not None and name not in only:
            continue
        problem = op_problem(op)
        if problem:
            left_out[name] = problem
            continue
        kept: list[tuple[Case, Any]] = []
        reasons: collections.Counter[str] = collections.Counter()
        for index, sample in enumerate(opcase.samples(op)):
            why, case = sample_problem(op, sample)
            if why or case is None:
                reasons[why or "?"] += 1
                continue
            case.op, case.index = name, index
            kept.append((case, sample))
        counts.update(reasons)
        if not kept:
            left_out[name] = reasons.most_common(1)[0][0]
            continue
        cases.extend(_pick(kept, per_op, max_numel))
    return Selection(cases, left_out, dict(counts))


def _pick(kept: list[tuple[Case, Any]], per_op: int, max_numel: int) -> list[Case]:
    """Up to `per_op` small samples, distinct signatures first, in generator order; the smallest when none is small."""
    small = [(c, s) for c, s in kept if sum(_numel(shape) for shape in c.inputs) <= max_numel]
    pool = small or sorted(kept, key=lambda cs: sum(_numel(shape) for shape in cs[0].inputs))[:1]
    chosen: list[Case] = []
    seen: set[tuple[Any, ...]] = set()
    for c, s in pool:
        if _signature(c, s) not in seen and len(chosen) < per_op:
            seen.add(_signature(c, s))
            chosen.append(c)
    for c, _ in pool:
        if len(chosen) >= per_op:
            break
        if c not in chosen:
            chosen.append(c)
    return sorted(chosen, key=lambda c: c.index)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
