"""Line coverage of buildsys/ before and after a change to the test tiers, from coverage data files.

    python benchmarks/ci_coverage.py AFTER.sqlite [BEFORE_EXTRA.sqlite ...]

AFTER is the combined data of a `MODELBUILD_CI_COVERAGE=1` run of `.ci/run` (benchmarks/ci_time.py --coverage
keeps it as benchmarks/results/work/coverage-<rev>-<n>.sqlite). Each BEFORE_EXTRA is the data of tests the change
took out of CI or replaced (measured on the commit before it, e.g. the old slow and zoo tiers). The figure before
is the union of AFTER and those: every test that still runs covers what it covered, so what the old tiers covered
that the new ones do not is exactly what the union adds. Files are matched by their path under buildsys/, so data
from clones in other directories combine. Prints both totals and the files whose coverage fell the most.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # benchmarks/coverage/
import coverage  # noqa: E402  (coverage.py, not benchmarks/coverage/ beside this script)

PACKAGE = re.compile(r".*/(buildsys/.*\.py)$")


def executed(paths: list[str]) -> dict[str, set[int]]:
    """buildsys-relative file → the lines executed in any of these data files."""
    lines: dict[str, set[int]] = {}
    for path in paths:
        data = coverage.CoverageData(basename=path)
        data.read()
        for measured in data.measured_files():
            if m := PACKAGE.match(measured):
                lines.setdefault(m[1], set()).update(data.lines(measured) or ())
    return lines


def statements(repo: Path) -> dict[str, set[int]]:
    """buildsys-relative file → its executable lines, as coverage counts them (every file, measured or not)."""
    cov = coverage.Coverage(data_file=None, config_file=str(repo / "pyproject.toml"))
    out = {}
    for py in sorted((repo / "buildsys").rglob("*.py")):
        _, stmts, _, _, _ = cov.analysis2(str(py))
        out[str(py.relative_to(repo))] = set(stmts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("after")
    ap.add_argument("before_extra", nargs="*")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    args = ap.parse_args()
    stmts = statements(Path(args.repo))
    total = sum(len(s) for s in stmts.values())
    after = executed([args.after])
    before = executed([args.after, *args.before_extra])

    def covered(lines: dict[str, set[int]]) -> int:
        return sum(len(stmts[f] & lines.get(f, set())) for f in stmts)

    lost = sorted(((len(stmts[f] & before.get(f, set())) - len(stmts[f] & after.get(f, set())), f) for f in stmts),
                  reverse=True)
    result = {"statements": total, "before": round(100 * covered(before) / total, 2),
              "after": round(100 * covered(after) / total, 2),
              "lines_lost": sum(n for n, _ in lost), "most_lost": [[f, n] for n, f in lost[:15] if n]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
