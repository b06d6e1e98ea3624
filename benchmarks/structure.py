"""The package's structure in figures: import cycles (at import time and through function-level imports), how
many internal imports sit inside functions, how many modules sit at the top level, and how many `Any` the code
holds. Reads the source with `ast` (nothing is imported), so it measures any checkout:

    python benchmarks/structure.py [CHECKOUT] [--core planning]

`--core` names the package whose cycles are counted (default: the planning modules, which the planning package
gathers; for an older checkout the top-level modules that decided routes are counted instead).
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import networkx as nx

#: The modules that held route choice before buildsys/planning/ existed (issue "Shape, third step").
OLD_PLANNING = ("plan", "graph", "decide", "routes", "rewrite_routes", "coverage", "repair", "reroute", "kinds",
                "qat", "remote")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]], int, int]:
    """module → modules it imports at import time; module → every module it imports at run time (function-level
    imports too); the same with the imports made for type checking only; how many internal imports there are
    (type-only ones left out), and how many of them are inside functions."""
    known = {module_name(root, p) for p in (root / "buildsys").rglob("*.py")}
    at_import: dict[str, set[str]] = {m: set() for m in known}
    anywhere: dict[str, set[str]] = {m: set() for m in known}
    typed: dict[str, set[str]] = {m: set() for m in known}
    total = inside = 0
    for path in (root / "buildsys").rglob("*.py"):
        name = module_name(root, path)
        tree = ast.parse(path.read_text())

        def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
            nonlocal total, inside
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    for c in child.body:
                        visit_one(c, in_function, True)
                    for c in child.orelse:
                        visit_one(c, in_function, type_only)
                    continue
                visit_one(child, in_function, type_only)

        def visit_one(child: ast.AST, in_function: bool, type_only: bool) -> None:
            nonlocal total, inside
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in known else child.module
                           for a in child.names]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if not target or not target.startswith("buildsys"):
                    continue
                typed[name].add(target)
                if type_only:
                    continue
                total += 1
                inside += in_function
                anywhere[name].add(target)
                if not in_function:
                    at_import[name].add(target)
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, nested, type_only)

        visit(tree, False, False)
    return at_import, anywhere, typed, total, inside


def cycles(graph: dict[str, set[str]], members: set[str]) -> dict[str, object]:
    """The strongly connected groups among `members` (imports through other modules count: a path that leaves
    the group and comes back is still a cycle) and how many pairs of them reach each other."""
    g = nx.DiGraph([(a, b) for a, bs in graph.items() for b in bs])
    g.add_nodes_from(graph)
    groups = [sorted(c & members) for c in nx.strongly_connected_components(g) if len(c & members) > 1]
    pairs = sum(len(c) * (len(c) - 1) // 2 for c in groups)
    return {"groups": groups, "mutually_reachable_pairs": pairs}


def count_any(root: Path) -> int:
    return sum(len([t for t in ast.walk(ast.parse(p.read_text())) if isinstance(t, ast.Name) and t.id == "Any"])
               for p in (root / "buildsys").rglob("*.py"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", nargs="?", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    root = Path(args.checkout)
    at_import, anywhere, typed, total, inside = imports(root)
    if (root / "buildsys" / "planning").is_dir():
        planning = {m for m in anywhere if m.startswith("buildsys.planning")}
    else:
        planning = {f"buildsys.{m}" for m in OLD_PLANNING if f"buildsys.{m}" in anywhere}
    top = sorted(p.name for p in (root / "buildsys").iterdir() if p.suffix == ".py" and p.name != "__init__.py")
    print(json.dumps({
        "planning_modules": len(planning),
        "planning_cycles_at_import_time": cycles(at_import, planning),
        "planning_cycles_with_function_level_imports": cycles(anywhere, planning),
        "planning_cycles_with_type_checking_imports_too": cycles(typed, planning),
        "internal_imports": total, "inside_functions": inside,
        "top_level_modules": len(top), "any_annotations": count_any(root),
    }, indent=2))


if __name__ == "__main__":
    main()
