"""Converters' tensor and node names mapped back to PyTorch module paths (`layers.0.conv`).

Each converter spells the module an op came from its own way: the legacy ONNX exporter names nodes
after the scopes it traced through (`/layers/layers.0/conv/Conv`, a scope either the attribute's own
name or the full path), OpenVINO keeps those names as friendly names (`…/Conv/WithoutBiases` for the
half of a split op), the dynamo exporter records `pkg.torch.onnx.name_scopes` on each node, and
coremltools names weights after state-dict keys with dots as underscores (`layers_0_conv_weight`).
Every function here returns a path among `known` (the module's `named_modules()`), or "" when the
name says nothing a path of the module can be read from.
"""

from __future__ import annotations

import ast
from typing import Iterable


def from_scope(name: str, known: Iterable[str]) -> str:
    """The module path of a scoped node name: `/layers/layers.0/conv/Conv` → `layers.0.conv`.

    The last segment is the op itself (and OpenVINO's `WithoutBiases` after it); each segment before it
    is either a full path (`layers.0`) or a child's name under the path so far (`conv`). The longest
    prefix that names a module wins, so `/Relu` (an op of the root module) gives ""."""
    paths = set(known)
    segments = [s for s in name.split("/") if s]
    if len(segments) < 2:
        return ""
    segments = segments[:-2] if segments[-1] == "WithoutBiases" else segments[:-1]
    found, path = "", ""
    for segment in segments:
        path = segment if (not path or segment.startswith(path + ".")) else f"{path}.{segment}"
        if path in paths:
            found = path
    return found


def from_name_scopes(value: str, known: Iterable[str]) -> str:
    """The innermost module among the dynamo exporter's `pkg.torch.onnx.name_scopes` list
    (`"['', 'layers', 'layers.0', 'layers.0.bn', '_native_batch_norm…']"` → `layers.0.bn`)."""
    paths = set(known)
    try:
        scopes = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return ""
    return next((s for s in reversed(list(scopes)) if isinstance(s, str) and s and s in paths), "")


def from_underscored(name: str, known: Iterable[str]) -> str:
    """A module path from a name whose dots became underscores (`layers_0_conv`), or "" when no path of
    the module spells that way; of two paths that both do (`a_b.c` and `a.b_c`), the first in `known`."""
    if not name:
        return ""
    table: dict[str, str] = {}
    for path in known:
        table.setdefault(path.replace(".", "_"), path)
    return table.get(name, "")


def from_class_scopes(name: str, known: Iterable[str]) -> str:
    """A module path from litert-torch's tensor names, a scope per module spelled `<class>_<attribute>`
    (`pkg.Net/torch.nn.modules.container.Sequential_layers/pkg.Block_1/torch.nn.modules.conv.Conv2d_conv`
    → `layers.1.conv`); of a fused tensor's names (`;`-separated) the first, its output's. "" otherwise."""
    paths = set(known)
    first = name.split(";")[0]
    found, path = "", ""
    for scope in first.split("/")[1:]:
        _, _, attribute = scope.rpartition(".")[2].partition("_")
        if not attribute:
            return found
        path = f"{path}.{attribute}" if path else attribute
        if path in paths:
            found = path
    return found
