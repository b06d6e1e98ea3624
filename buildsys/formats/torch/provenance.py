"""FX provenance kept without copying it: `shared_provenance()`, for the lowerings that run many graph passes.

Every node an FX pass creates or replaces records where it came from (`node.meta["from_node"]`, a list of
`torch.fx.traceback.NodeSource`), and each new NodeSource deep-copies the whole chain of the node it came from.
The chains grow with every pass, so the copies grow with the number of passes times the graph's size: lowering
timm's MobileViT-v2 (int8, 64 px) to ExecuTorch spent 38 s of 243 s in those deep copies, 2 s with the chains
shared (cProfile, the same host and load; docs/performance.md). NodeSource objects are never changed once made
(passes build new lists of them), so sharing a chain instead of copying it records the same provenance.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def shared_provenance() -> Iterator[None]:
    """Within the block, a new NodeSource holds its node's provenance chain itself, not a deep copy of it."""
    from torch.fx import traceback

    original = traceback.NodeSource.__init__

    def init(self: Any, node: Any, pass_name: str = "", action: Any = None) -> None:
        chain = node.meta.get("from_node") if node is not None else None
        if chain is None:
            original(self, node, pass_name, action)
            return
        node.meta["from_node"] = []  # the original copies this (now empty) list, then it gets the chain back
        try:
            original(self, node, pass_name, action)
        finally:
            node.meta["from_node"] = chain
        self.from_node = list(chain)

    traceback.NodeSource.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        traceback.NodeSource.__init__ = original  # type: ignore[method-assign]
