"""The `modelbuild` commands for releases: diff, card, init; and the signing options, key and trust resolution
and output that `bundle` (in cli.py) uses. Only click is imported at start-up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    from buildsys.config.load import LoadedConfig
    from buildsys.release.pack import Packed
    from buildsys.release.signing import SigningKey, Trust
    from buildsys.release.verify import TrustCheck

targets_arg = click.argument("targets", nargs=-1)

signing_options = [
    click.option("--key", metavar="PATH", help="Sign the bundle with this private key (PEM; ECDSA P-256, P-384 or "
                 "P-521). Default: $MODELBUILD_SIGNING_KEY, then the bundle's signing.key in the deploy file."),
    click.option("--certificate", metavar="PATH", help="Sign with this certificate of --key (and --certificate-chain) "
                 "instead of the bare key."),
    click.option("--certificate-chain", "certificate_chain", multiple=True, metavar="PATH", help="Signing: the "
                 "intermediate certificates shipped after --certificate. verify: the root certificates to trust."),
    click.option("--no-sign", "no_sign", is_flag=True, help="Pack the bundle unsigned even when a key is configured."),
    click.option("--public-key", "public_key", metavar="PATH", help="verify: the public key a key-signed bundle must "
                 "verify against (default: $MODELBUILD_SIGNING_PUBLIC_KEY, then signing.public_key)."),
    click.option("--require-signature", "require_signature", is_flag=True, help="verify: fail a bundle that is not "
                 "signed or whose signature cannot be checked (a given key or root implies it)."),
]


def signing_key_for(cfg: "LoadedConfig", bundle: str, flags: dict[str, Any]) -> "SigningKey | None":
    """The key `bundle NAME` signs with, checked before anything is built."""
    from buildsys.errors import ConfigError
    from buildsys.release import signing

    if flags.get("public_key") or flags.get("require_signature"):
        raise click.UsageError("--public-key and --require-signature belong to `bundle verify FILE`")
    spec = cfg.project.bundles[bundle].signing
    if flags.get("no_sign"):
        if spec is not None and spec.required:
            raise ConfigError(f"bundle '{bundle}' must be signed (signing.required), so --no-sign cannot pack it",
                              where=cfg.where("bundles", bundle, "signing", "required"))
        return None
    return signing.signing_key(cfg, bundle, key=flags.get("key"), certificate=flags.get("certificate"),
                               chain=tuple(flags.get("certificate_chain") or ()))


def trust_source(config: str, flags: dict[str, Any]) -> Callable[[str], "Trust"]:
    """What `bundle verify` trusts, once the bundle's name is known: flags, the environment, then the
    deploy file's `signing:` section for that bundle (when the deploy file exists)."""
    import os

    from buildsys.release import signing

    if flags.get("key") or flags.get("certificate") or flags.get("no_sign"):
        raise click.UsageError("--key, --certificate and --no-sign belong to `bundle NAME`; verify with --public-key "
                               "or --certificate-chain")

    def resolve(bundle: str) -> "Trust":
        cfg = None
        anchored = flags.get("public_key") or flags.get("certificate_chain") or os.environ.get(signing.ENV_PUBLIC_KEY) \
            or os.environ.get(signing.ENV_CHAIN)
        if not anchored and Path(config).is_file():
            from buildsys.config.load import load

            cfg = load(Path(config))
        return signing.trust(public_key=flags.get("public_key"), chain=tuple(flags.get("certificate_chain") or ()),
                             require=bool(flags.get("require_signature")), cfg=cfg, bundle=bundle)

    return resolve


def show_packed(packed: "Packed") -> None:
    from buildsys.release.bundle import PROVENANCE, SIGNATURE
    from buildsys.release.sbom import SBOM

    inside = f"{PROVENANCE}, {SBOM} and a model card per target inside"
    if packed.signed_by:
        click.echo(f"  signed by {packed.signed_by} ({SIGNATURE}); {inside}")
    else:
        click.echo(f"  unsigned (give a key: --key, MODELBUILD_SIGNING_KEY or signing.key); {inside}")
    if packed.dirty_source:
        click.secho("  the checkout has uncommitted changes to tracked files: the provenance records the commit as "
                    "dirty", fg="yellow")


def show_trust(check: "TrustCheck") -> None:
    if check.what == "manifest" and check.status == "passed":
        return  # the manifest line says it
    color = {"passed": "green", "failed": "red"}.get(check.status, "yellow")
    click.secho(f"  {check.status:<8} {check.what}: {check.detail}", fg=color)


def exit_if_lock_stale(plan: Any, lock: Any) -> None:
    from buildsys.release.locked import stale_in_lock

    stale = stale_in_lock(plan, lock)
    name = lock.path.name
    if not stale:
        click.echo(f"{name} is up to date: every node's key is the one it records.")
        return
    click.secho(f"{name} is stale: {len(stale)} node(s) would be rebuilt and recorded anew:", fg="red", err=True)
    for node, reasons in stale:
        click.echo(f"  {node}: {'; '.join(reasons)}", err=True)
    click.echo(f"run `modelbuild build` and commit {name}", err=True)
    sys.exit(1)


@click.command()
@click.argument("before", required=False, metavar="[BEFORE]")
@click.argument("after", required=False, metavar="[AFTER]")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--markdown", is_flag=True, help="Print Markdown for a pull-request comment.")
@click.option("--all", "every", is_flag=True, help="Also list the targets that did not change.")
@click.option("--check", is_flag=True, help="Exit 1 when a target regressed beyond a threshold (for CI).")
@click.option("--threshold", multiple=True, metavar="NAME=VALUE", help="A regression limit: size=5 and latency=10 "
              "(percent growth), accuracy=0.5 and agreement=0.5 (percentage points lost), max_abs=100 (percent growth; "
              "off by default); 'off' disables one. A check that passed and no longer does always regresses.")
@click.pass_obj
def diff(config: str, before: str | None, after: str | None, as_json: bool, markdown: bool, every: bool, check: bool,
         threshold: tuple[str, ...]) -> None:
    """Compare two builds per target: size, accuracy, agreement, max error, latency, route, options, toolchain.

    BEFORE and AFTER are each a deploy.lock (read with its build record), a build record, a bundle or a
    git revision of the lock (HEAD, main, HEAD~1:path/to/deploy.lock). Default: HEAD against the working
    tree; one argument: it against the working tree.
    """
    from buildsys.report import console as report
    from buildsys.release import diff as diffs
    from buildsys.release import diff_report

    if as_json and markdown:
        raise click.UsageError("--json and --markdown contradict each other; pass one")
    limits = diffs.parse_thresholds(threshold)
    path = Path(config)
    result = diffs.compare(diffs.load_side(before, path, diffs.HEAD), diffs.load_side(after, path, diffs.WORKING),
                           limits)
    if as_json:
        click.echo(report.dumps(result.as_json()))
    elif markdown:
        click.echo(diff_report.markdown(result, every), nl=False)
    else:
        click.echo(diff_report.text(result, every), nl=False)
    if check and result.regressed:
        sys.exit(1)


@click.command()
@targets_arg
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the cards instead of writing them.")
@click.option("--json", "as_json", is_flag=True, help="With --stdout: print model_card.json instead of the Markdown.")
@click.pass_obj
def card(config: str, targets: tuple[str, ...], to_stdout: bool, as_json: bool) -> None:
    """Write the model card of each delivered target (default: all) into artifacts/<target>/.

    MODEL_CARD.md and model_card.json are generated from deploy.lock, its build record and the deploy
    file (builds refresh them too); bundles carry the same cards.
    """
    from buildsys.errors import PlanError, did_you_mean
    from buildsys.planning.project import open_project
    from buildsys.release import cards
    from buildsys.release.facts import from_lock

    project = open_project(config)
    planner = project.planner
    delivered = sorted(planner.lock.targets)
    for target in targets:
        if target not in project.config.project.targets:
            raise PlanError(f"unknown target '{target}'", hint=did_you_mean(target, project.config.project.targets)
                            or f"targets: {', '.join(project.config.project.targets)}")
        if target not in delivered:
            raise PlanError(f"target '{target}' has no verified artifact yet", hint=f"run: modelbuild build {target}")
    chosen = list(targets) or delivered
    if not chosen:
        raise PlanError("nothing has been built yet, so there is no model card to write", hint="run: modelbuild build")
    if to_stdout:
        facts = from_lock(planner.lock, planner.store)
        for target in chosen:
            md, js = cards.card_bytes(facts[target], project.config)
            click.echo((js if as_json else md).decode(), nl=False)
        return
    written = cards.refresh(planner, chosen)
    for target in chosen:
        click.echo(f"{planner.display(planner.artifacts / target / cards.CARD_MD)} and {cards.CARD_JSON}"
                   + ("" if any(p.parent.name == target for p in written) else " (unchanged)"))


@click.command()
@click.option("--factory", metavar="MODULE:FUNCTION", help="A function (importable from the deploy file's "
              "directory) that returns the torch.nn.Module.")
@click.option("--weights", metavar="FILE", help="The factory module's state_dict.")
@click.option("--checkpoint", metavar="FILE", help="A training checkpoint for the factory's module; weights nested "
              "in it (model_state_dict, model, …) are saved beside it as a plain state_dict.")
@click.option("--torchscript", metavar="FILE", help="A TorchScript model (torch.jit.save).")
@click.option("--exported", metavar="FILE.pt2", help="A torch.export program: its inputs and outputs are read from it.")
@click.option("--onnx", metavar="FILE", help="An ONNX model: its inputs and outputs are read from it.")
@click.option("--name", help="The model's name in deploy.yaml (default: from the source).")
@click.option("--example", metavar="FILE", help="An .npz (arrays named after the inputs, optional 'labels') or .npy: "
              "the inputs are read from it, and checks verify on it.")
@click.option("--calibration", metavar="FILE", help="Representative inputs (.npz/.npy) for int8 presets.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE[:LAYOUT]]",
              help="An input, e.g. image:batch,3,224,224:float32:NCHW (repeat for several; strings are dynamic axes).")
@click.option("--output", "outputs", multiple=True, metavar="NAME[:scores|values]", help="An output (repeat for several).")
@click.option("--preset", "presets", multiple=True, metavar="NAME", help="A target to make: a platform (server, "
              "android, ios, intel), a recipe (server-int8, android-executorch, …) or a format (torchscript, pt2, "
              "onnx). Repeatable; default server. `modelbuild init --list-presets` lists them.")
@click.option("--list-presets", is_flag=True, help="List the presets and exit.")
@click.option("--force", is_flag=True, help="Replace an existing deploy file.")
@click.pass_obj
def init(config: str, list_presets: bool, force: bool, **given: Any) -> None:
    """Write a deploy.yaml for a model: its signature inferred from the model or an example file where
    possible, asked for on a terminal or taken from --input/--output where not, with the chosen presets
    as targets and a release bundle. The file is checked (loaded and planned) before it is written."""
    from buildsys.release import scaffold

    if list_presets:
        for name, description in scaffold.presets().items():
            click.echo(f"{name:<26} {description}")
        return
    fields: dict[str, Any] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in given.items()}
    request = scaffold.Request(**fields)
    ask = (lambda question, default: str(click.prompt(question, default=default or None))) if sys.stdin.isatty() else None
    done = scaffold.scaffold(Path(config), request, force=force, ask=ask)
    for note in done.notes:
        click.echo(f"  {note}")
    shown = [str(p.relative_to(Path.cwd().resolve())) if p.resolve().is_relative_to(Path.cwd().resolve()) else str(p)
             for p in (q.resolve() for q in done.written)]
    click.echo(f"wrote {', '.join(shown)}: target(s) {', '.join(done.targets)}")
    flag = "" if Path(config).name == "deploy.yaml" and Path(config).parent == Path(".") else f" -f {config}"
    click.echo(f"next: modelbuild{flag} plan, then modelbuild{flag} build")


COMMANDS: list[click.Command] = [diff, card, init]
