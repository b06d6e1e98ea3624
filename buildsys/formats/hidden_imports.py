"""Packages that read as not installed for a while: `hidden(names)`.

Some packages import others at their own import only to probe for them (coremltools and Keras probe for
scikit-learn; onnxruntime.tools imports torch for an export helper): seconds of a worker's start for code it
never calls. Inside `hidden`, each named package this process has not loaded yet has a None entry in
sys.modules, which is importlib's own "not installed" (`import` raises ImportError, `find_spec` returns None);
on leaving, the entries go and the packages are importable again. A package already loaded is left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def hidden(names: Iterable[str]) -> Iterator[None]:
    """Inside: the packages `names` not loaded yet read as not installed."""
    masked = [name for name in names if name not in sys.modules]
    for name in masked:
        sys.modules[name] = None  # type: ignore[assignment]  # None: "not importable", by design
    try:
        yield
    finally:
        for name in masked:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
