"""The full real-model zoo as a benchmark: build every zoo model, assert every cell, record, render.

    python benchmarks/zoo/run.py                 # all five models, two at a time (~25 min of CPU)
    python benchmarks/zoo/run.py minilm          # some of them

CI runs the zoo's representative model only (tests/e2e/test_zoo.py's CI_MODELS, `-m 'zoo and not bench'`);
this runs every model's test, which builds it in a scratch copy and asserts each cell of the expected table,
with MODELBUILD_ZOO_RECORD=1 so that each model's build record is written to benchmarks/zoo/results/<model>.json.
Then it renders those records into docs/mobile.md's "Real-model zoo" section (mobile_table.py). A cell that
changed fails its test and still writes its record, so the diff of the results shows what moved. Re-run it when
a change touches what the zoo measures: a converter, a route, a repair, a check.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ZOO = Path(__file__).resolve().parent
REPO = ZOO.parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="zoo models to run (default: all)")
    ap.add_argument("-n", default="2", help="pytest-xdist workers (default 2: one model per core)")
    args = ap.parse_args()
    select = ["-k", " or ".join(args.models)] if args.models else []
    tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "zoo", "-n", args.n, "--dist", "worksteal",
                            "--strict-runtimes", "-p", "no:cacheprovider", "--durations=0",
                            "tests/e2e/test_zoo.py", *select], cwd=REPO, env={**os.environ, "MODELBUILD_ZOO_RECORD": "1"})
    subprocess.run([sys.executable, str(ZOO / "mobile_table.py")], cwd=REPO, check=True)
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
