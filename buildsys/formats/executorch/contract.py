"""What the ExecuTorch steps and runtime agree on: the method name and how to tell the runtime is missing.

Neutral ground: the steps (`program.py`) and the runtime (`runtime.py`) both import it, it imports neither.
"""

from __future__ import annotations

import importlib.util

#: The one method every .pte made here exposes (torch.export's entry point keeps its name).
METHOD = "forward"
#: The id ExecuTorch gives the XNNPACK backend inside a program's delegate table.
XNNPACK = "XnnpackBackend"


def executorch_unavailable() -> str | None:
    """Why ExecuTorch cannot build or run here, or None (checked without importing it)."""
    if importlib.util.find_spec("executorch") is None:
        return "executorch not installed (pip install -c constraints.txt 'modelbuild[executorch]')"
    return None
