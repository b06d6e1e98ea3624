"""Render the deploy.yaml reference (every key, every step option) as Markdown from the schema.

`modelbuild schema --markdown` prints it; docs/deploy-yaml.md is its output, and a test keeps the
two identical, so the reference cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from buildsys.config import schema


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is None:
        if isinstance(annotation, type):
            return annotation.__name__
        return str(annotation).replace("typing.", "")
    if str(origin) == "typing.Literal":
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[1])}"
    parts = [_type_name(a) for a in args if a is not type(None)]
    return " \\| ".join(parts) + (" (optional)" if type(None) in args else "")


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        return "`{}`" if value == {} else "`[]`" if value == [] else "see below"
    if field.default == "":
        return '`""`'
    return f"`{field.default}`" if field.default is not None else "unset"


def model_table(model: type[BaseModel]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
    return lines


SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top level", schema.DeployConfig), ("models.NAME", schema.Model), ("models.NAME.source", schema.Source),
    ("models.NAME.inputs[]", schema.InputSpec), ("models.NAME.outputs[]", schema.OutputSpec),
    ("models.NAME.generation", schema.TextGeneration), ("models.NAME.data", schema.DataSets), ("models.NAME.data.SET", schema.DataSource),
    ("targets.NAME", schema.Target), ("targets.NAME.acceptance", schema.Acceptance),
    ("targets.NAME.acceptance.outputs.OUTPUT", schema.Tolerance), ("targets.NAME.limits", schema.StepLimits),
    ("bundles.NAME", schema.Bundle),
    ("bundles.NAME.signing", schema.Signing),
    ("cache", schema.Cache),
]


def render() -> str:
    """The whole reference as Markdown."""
    from buildsys.formats import formats, steps

    out = ["# deploy.yaml reference", "",
           "Generated from the schema by `modelbuild schema --markdown`; a test keeps this file in sync.",
           "Every mapping is strict: an unknown key is an error that names its file and line.", ""]
    example = Path(__file__).resolve().parents[2] / "deploy.yaml.example"
    if example.is_file():  # in a checkout: the shipped example, which the tests build end to end
        out += ["## Annotated example", "", "`deploy.yaml.example`, the project this repository builds:", "",
                "```yaml", example.read_text(encoding="utf-8").rstrip(), "```", ""]
    for title, model in SECTIONS:
        out += [f"## `{title}`", "", (model.__doc__ or "").strip(), "", *model_table(model), ""]
    out += ["## Formats", "", "| format | file | runs in | description |", "|---|---|---|---|"]
    for name, fmt in sorted(formats().items()):
        out.append(f"| `{name}` | `{fmt.filename or '—'}` | {fmt.runtime or '—'} | {fmt.description} |")
    out += ["", "## Step options (`targets.NAME.options.FORMAT`)", "",
            "A target's `options` are keyed by the format a step produces; only formats on the target's route",
            "may be given.", ""]
    for name, step in sorted(steps().items(), key=lambda kv: kv[1].produces):
        if not step.consumes:
            continue
        doc = (step.__doc__ or "").strip().splitlines()[0] if step.__doc__ else ""
        out += [f"### `{step.produces}` ← {', '.join(f'`{c}`' for c in step.consumes)} (step `{name}`)", "", doc, ""]
        for label, values in step.alternatives.items():
            given = ", ".join(f"`{k}: {v}`" for k, v in values.items())
            out += [f"Fallback route `{step.produces} ({label})`: {given}, tried after every route with default "
                    "options unless the target sets that option.", ""]
        if step.repairs:
            recipes = "; ".join(f"`{label}` ({', '.join(f'`{k}: {v}`' for k, v in values.items())})"
                                for label, values in step.repairs.items())
            out += [f"Accuracy repair ([repair.md](repair.md)), tried in this order after an artifact of this step "
                    f"missed its check, as routes `{step.produces} (repair NAME)`: {recipes}.", ""]
        out += model_table(step.Options) if step.Options.model_fields else ["No options."]
        out.append("")
    return "\n".join(out).rstrip() + "\n"
