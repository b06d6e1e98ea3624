"""The package's import graph has no cycle: every import counts, module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

from tests.conftest import REPO

PACKAGE = REPO / "buildsys"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The buildsys modules `path` imports anywhere except under `if TYPE_CHECKING:` (never executed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("buildsys")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("buildsys") and not node.level:
            for alias in node.names:  # `from buildsys.formats import torch` names a submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found & known


def import_graph() -> nx.DiGraph:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in files.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in imported_modules(path, set(files)) if target != name)
    return graph


def test_buildsys_has_no_import_cycle() -> None:
    cycles = sorted(sorted(c) for c in nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_format_families_depend_on_each_other_without_a_cycle() -> None:
    """Families may use what the format they convert from provides (onnx → torch), never both ways round,
    and what is not a format (loading the source model: buildsys.formats.torch.loading) lives outside formats/."""
    families = nx.DiGraph()
    for a, b in import_graph().edges:
        fa, fb = (m.split(".")[2] if m.startswith("buildsys.formats.") and m.count(".") >= 3 else None for m in (a, b))
        if fa and fb and fa != fb:
            families.add_edge(fa, fb)
    cycles = sorted(sorted(c) for c in nx.simple_cycles(families))
    assert not cycles, "cycles among format families: " + "; ".join(" → ".join(c) for c in cycles)
    assert not (PACKAGE / "formats/torch/module.py").exists()


def test_the_cycle_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from buildsys.errors import describe\n\nif TYPE_CHECKING:\n    import buildsys.planning.plan\n")
    assert imported_modules(module, {"buildsys.errors", "buildsys.planning.plan"}) == {"buildsys.errors"}


def test_every_package_is_installed() -> None:
    """pyproject lists buildsys's packages explicitly (recipes/ is mapped in): none may be missing."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
