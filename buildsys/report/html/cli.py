"""The command line: read a deploy.lock, write report.html (and optionally report.md)."""

from __future__ import annotations

DESCRIPTION = "The build report: one self-contained HTML page (and its Markdown twin) drawn from deploy.lock alone."


def main(argv: list[str] | None = None) -> int:
    """Run `python -m buildsys.report.html` with `argv` (default: sys.argv[1:]); returns the exit status."""
    import argparse
    from pathlib import Path

    from buildsys.report.html.data import rows
    from buildsys.report.html.markdown import render_markdown
    from buildsys.report.html.page import render_html

    parser = argparse.ArgumentParser(prog="python -m buildsys.report.html", description=DESCRIPTION)
    parser.add_argument("lock", type=Path, help="deploy.lock to report on")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file to write")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown summary here")
    parser.add_argument("--title", default="", help="page title (default: 'Build report: <lock's directory>')")
    args = parser.parse_args(argv)
    from buildsys.storage.lock import Lock

    lock = Lock.read(args.lock).as_dict()  # with the build record's observations merged in
    title = args.title or f"Build report: {args.lock.resolve().parent.name}"
    data = rows(lock)
    page, summary = render_html(data, title), render_markdown(data, title)
    args.output.write_text(page, encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(summary, encoding="utf-8")
    return 0
