"""A node of the build DAG: one artifact, the reference of a model, the check of a target or its benchmark."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Node:
    """One artifact, reference or check in the build DAG.

    `name` is stable and human ("digits/onnx", "digits/reference", "verify:server"); it is the
    node's key in deploy.lock. `deps` are names of nodes whose outputs this one consumes, the
    first being the main input.
    """

    name: str
    kind: str  # a NodeKind's name (planning.kinds): "artifact" | "reference" | "check" | "bench"
    model: str
    format: str
    step: str
    options: dict[str, Any]
    deps: list[str] = field(default_factory=list)
    source_format: str = ""  # the model's source format when the first dep is the source itself
    data_sets: tuple[str, ...] = ()
    targets: list[str] = field(default_factory=list)  # targets whose deliverable this node is
    target: str = ""  # for checks: the target being verified
    precision: str = "fp32"
