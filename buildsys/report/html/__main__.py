"""Entry point of `python -m buildsys.report.html`: runs the command line in `cli`."""

from buildsys.report.html.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
