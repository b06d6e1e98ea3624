"""docs/architecture.md stays true to the code: every module of buildsys is named in its tables by its exact path,
and no module is over the size limit."""

from __future__ import annotations

import re

from tests.conftest import REPO

PACKAGE = REPO / "buildsys"
DOC = REPO / "docs" / "architecture.md"


def _rows() -> list[tuple[str, set[str]]]:
    """Each row of the Modules section's tables: (its first cell's path, every backticked `*.py` or path it names)."""
    section = DOC.read_text().split("## Modules", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 3 or not cells[1].strip().startswith("`"):
            continue
        rows.append((cells[1].strip().strip("`"), set(re.findall(r"`([\w/.<>-]+)`", line))))
    return rows


def named(module: str, rows: list[tuple[str, set[str]]]) -> bool:
    """Whether `module` (a path relative to buildsys/) is named exactly: its whole path anywhere in the tables, or
    its file name in the row of its own package (`formats/coreml/` naming `mil_ops.py`, never `mil_ops_nn.py`)."""
    folder, _, name = module.rpartition("/")
    return any(module in names or (first == f"{folder}/" and name in names) for first, names in rows)


def test_every_module_is_named_by_its_exact_path() -> None:
    rows = _rows()
    modules = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    missing = [m for m in modules if not named(m, rows)]
    assert not missing, f"docs/architecture.md's Modules tables do not name: {', '.join(missing)}"


def test_every_package_has_a_row() -> None:
    rows = {first for first, _ in _rows()}
    packages = sorted(f"{p.relative_to(PACKAGE)}/" for p in PACKAGE.rglob("*") if (p / "__init__.py").exists())
    missing = [p for p in packages if p not in rows and not any(r.startswith(p) for r in rows)]
    assert not missing, f"docs/architecture.md has no row for the packages: {', '.join(missing)}"


def test_a_near_name_does_not_count() -> None:
    """The rule the test above applies: `mil_ops.py` is not named by `mil_ops_nn.py`, `data.py` not by `data`."""
    rows = [("formats/coreml/", {"mil_ops_nn.py"}), ("config/", {"data"})]
    assert not named("formats/coreml/mil_ops.py", rows) and not named("config/data.py", rows)
    assert named("formats/coreml/mil_ops_nn.py", rows)


#: The most lines a module of buildsys may hold: past it, a module does two jobs (split it by job).
MAX_MODULE_LINES = 400


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = sorted(f"{name} ({n} lines)" for name, n in sizes.items() if n > MAX_MODULE_LINES)
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {', '.join(over)}"


#: Test folders that do not mirror one package: the whole product end to end, the code base's own shape, and
#: formats/shared (the modules of formats/ itself, several families at once); with the fixtures' folders.
NOT_A_PACKAGE = {"e2e", "meta", "formats/shared", "helpers", "data", "models", "plugins"}


def test_the_tests_mirror_the_package_layout() -> None:
    """Every test file sits in a folder named as the buildsys package it tests (tests/planning ↔ buildsys/planning,
    tests/formats/coreml ↔ buildsys/formats/coreml), or in one of NOT_A_PACKAGE; none at the tests root."""
    tests = REPO / "tests"
    assert not sorted(p.name for p in tests.glob("test_*.py")), "a test file at the tests root: move it beside its package"
    for path in sorted(tests.rglob("test_*.py")):
        folder = path.parent.relative_to(tests).as_posix()
        if any(folder == f or folder.startswith(f + "/") for f in NOT_A_PACKAGE):
            continue
        assert (PACKAGE / folder / "__init__.py").exists(), f"{path.relative_to(REPO)}: no package buildsys/{folder}"
