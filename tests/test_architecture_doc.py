"""docs/architecture.md stays true to the code: every module and package of buildsys is in its table."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "buildsys"


def _modules_table() -> str:
    return (REPO / "docs" / "architecture.md").read_text().split("## Modules", 1)[1].split("\n## ", 1)[0]


def test_every_module_is_in_the_architecture_table() -> None:
    rows = _modules_table()
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "__main__.py"}}
    packages = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    # A package may be named through its modules (`config/schema.py`), a module beside its siblings.
    missing = sorted(m for m in modules | packages if f"`{m}" not in rows)
    assert not missing, f"docs/architecture.md's modules table does not name: {', '.join(missing)}"


def test_every_format_family_is_described() -> None:
    rows = _modules_table()
    families = sorted(p.name for p in (PACKAGE / "formats").iterdir() if (p / "__init__.py").exists())
    missing = [f for f in families if f"`{f}`" not in rows]
    assert not missing, f"docs/architecture.md does not describe the format families: {', '.join(missing)}"


#: The most lines a module of buildsys may hold: past it, a module does two jobs (split it by job).
MAX_MODULE_LINES = 400


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = sorted(f"{name} ({n} lines)" for name, n in sizes.items() if n > MAX_MODULE_LINES)
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {', '.join(over)}"


def test_every_module_of_every_package_is_named() -> None:
    """Inside packages too: each module's name appears in docs/architecture.md (in its package's row)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = sorted(str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                     if p.name not in {"__init__.py", "__main__.py"} and p.stem not in text)
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
