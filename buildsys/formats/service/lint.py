"""Dockerfile lint of a service artifact: parsed with dockerfile-parse, judged by hadolint-style rules.

hadolint (the usual linter) is a Haskell binary, on neither PyPI nor npm. dockerfile-parse (PyPI,
the parser OpenShift's build service uses) splits the file into instructions, continuation lines
and all; the rules below are the hadolint rules that apply to a generated service image (their
codes in brackets), plus what this service needs: a HEALTHCHECK on /health, the port EXPOSEd that
uvicorn listens on, and every COPY source present in the build context.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shlex
from pathlib import Path
from typing import Any

from buildsys.errors import not_installed
from buildsys.formats.service.contract import DOCKERFILE, HEALTH_PATH


def lint_unavailable() -> str | None:
    """Why the Dockerfile cannot be linted here (the parser is missing), or None."""
    if importlib.util.find_spec("dockerfile_parse") is None:
        return not_installed(["dockerfile_parse"], "service")
    return None


def lint_dockerfile(text: str, context: Path | None = None, port: int | None = None) -> list[str]:
    """Problems of a Dockerfile (empty: none). `context` is the build context COPY sources must exist in;
    `port` the port the service listens on, which EXPOSE must name."""
    from dockerfile_parse import DockerfileParser

    try:
        structure = DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8"))).structure
    except Exception as exc:  # noqa: BLE001 - the parser raises assorted errors on malformed input
        return [f"Dockerfile does not parse: {type(exc).__name__}: {exc}"]
    rows = [(s["instruction"].upper(), s["value"].strip(), s["startline"] + 1) for s in structure
            if s["instruction"].upper() != "COMMENT"]
    problems: list[str] = []
    names = [name for name, _, _ in rows]
    firsts = [name for name in names if name != "ARG"]
    if not firsts or firsts[0] != "FROM":
        problems.append("the first instruction (after ARG) must be FROM")
    for name, value, line in rows:
        problems += [f"Dockerfile:{line}: {p}" for p in _rule(name, value, context)]
    for once in ("CMD", "HEALTHCHECK", "ENTRYPOINT"):
        if names.count(once) > 1:  # [DL4003, DL3012, DL4004] only the last one takes effect
            problems.append(f"more than one {once} (only the last takes effect)")
    users = [value for name, value, _ in rows if name == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):  # [DL3002]
        problems.append("the image must switch to a non-root USER")
    if "CMD" not in names and "ENTRYPOINT" not in names:
        problems.append("no CMD or ENTRYPOINT: the container would not start the service")
    health = [value for name, value, _ in rows if name == "HEALTHCHECK"]
    if not health or HEALTH_PATH not in health[-1] or health[-1].upper().startswith("NONE"):
        problems.append(f"no HEALTHCHECK probing {HEALTH_PATH}")
    exposed = {p.split("/")[0] for name, value, _ in rows if name == "EXPOSE" for p in value.split()}
    if port is not None and str(port) not in exposed:
        problems.append(f"EXPOSE does not name the service's port {port} (it names {sorted(exposed) or 'none'})")
    return problems


def _rule(name: str, value: str, context: Path | None) -> list[str]:
    """The rules of one instruction."""
    if name == "FROM":
        image = value.split()[0] if value.split() else ""
        if "@" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            return [f"FROM '{image}' has no pinned tag (latest moves) [DL3006, DL3007]"]
    elif name == "WORKDIR" and not value.startswith("/") and not value.startswith("$"):
        return [f"WORKDIR '{value}' is relative [DL3000]"]
    elif name == "RUN":
        problems = []
        if "pip install" in value and "--no-cache-dir" not in value:
            problems.append("pip install without --no-cache-dir keeps the wheel cache in the image [DL3042]")
        if any(word in value.split() for word in ("sudo",)):
            problems.append("sudo in RUN [DL3004]")
        return problems
    elif name == "ADD" and not any(value.startswith(p) for p in ("http://", "https://")):
        return ["ADD of local files: use COPY [DL3020]"]
    elif name in ("CMD", "ENTRYPOINT"):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list):
            return [f"{name} in shell form: use the exec (JSON array) form so signals reach the server [DL3025]"]
    elif name == "COPY" and context is not None:
        words = [w for w in shlex.split(value) if not w.startswith("--")]
        missing = [w for w in words[:-1] if not (context / w).exists()]
        if missing:
            return [f"COPY names {', '.join(missing)}, which the build context does not hold"]
    return []


def lint_facts(directory: Path, port: int | None) -> dict[str, Any]:
    """{"linter", "problems"} for the service's Dockerfile, or {"not_run": why} where it cannot be linted."""
    reason = lint_unavailable()
    if reason:
        return {"not_run": reason}
    from importlib import metadata

    try:
        text = (directory / DOCKERFILE).read_text(encoding="utf-8")
    except OSError as exc:
        return {"linter": "dockerfile-parse", "problems": [f"Dockerfile cannot be read: {exc.strerror}"]}
    return {"linter": f"dockerfile-parse {metadata.version('dockerfile-parse')} + modelbuild's rules",
            "problems": lint_dockerfile(text, directory, port)}
