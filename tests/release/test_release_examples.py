"""The CI examples (examples/ci) are valid YAML and every modelbuild command in them parses with the real CLI."""

from __future__ import annotations

import re
import shlex

import click
import pytest
import yaml

from tests.conftest import REPO

EXAMPLES = REPO / "examples" / "ci"


def commands(text: str) -> list[list[str]]:
    """Every `modelbuild …` invocation in shell lines, with CI expressions and variables made plain words."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for match in re.finditer(r"(?:^|[\s;&|])modelbuild\s+([^;&|>\n]*)", line):
            words = re.sub(r"\$\{\{[^}]*\}\}|\$\{?\w+\}?", "X", match.group(1))
            out.append(shlex.split(words))
    return out


def parse(args: list[str]) -> None:
    """Parse like `modelbuild ARGS` would, without running the command (UsageError on a bad option)."""
    from buildsys.cli.main import cli

    ctx = cli.make_context("modelbuild", list(args), resilient_parsing=False)
    name, command, rest = cli.resolve_command(ctx, ctx.protected_args + ctx.args)
    assert command is not None, name
    while isinstance(command, click.Group):
        sub = command.make_context(name, rest, parent=ctx)
        name, command, rest = command.resolve_command(sub, sub.protected_args + sub.args)
    command.make_context(name, rest, parent=ctx)


def test_github_actions_workflow() -> None:
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    steps = workflow["jobs"]["models"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    found = commands(runs)
    assert [c[:1] for c in found] == [["plan"], ["cache"], ["build"], ["diff"], ["diff"], ["bundle"], ["bundle"]]
    assert ["plan", "--locked"] in found and any("--markdown" in c for c in found)
    assert any(c[:2] == ["bundle", "verify"] and "--require-signature" in c for c in found)
    for args in found:
        parse(args)


def test_pre_commit_hook() -> None:
    config = yaml.safe_load((EXAMPLES / "pre-commit-config.yaml").read_text())
    hook = config["repos"][0]["hooks"][0]
    assert hook["entry"] == "modelbuild plan --locked" and hook["pass_filenames"] is False
    assert re.search(hook["files"], "deploy.lock") and re.search(hook["files"], "deploy.yaml")
    parse(shlex.split(hook["entry"])[1:])


def test_a_wrong_option_would_be_caught() -> None:
    with pytest.raises(click.UsageError):
        parse(["plan", "--lockd"])
