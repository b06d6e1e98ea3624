"""The `modelbuild` command line: plan, build, verify, bench, bundle (the rest is in cli_inspect).

User mistakes (ModelbuildError) print one line and exit non-zero; only modelbuild's own bugs show
a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from buildsys.cli.release import signing_options
from buildsys.errors import BuildFailed, ModelbuildError
from buildsys.planning.project import DEFAULT_CONFIG, open_project
from buildsys.status import Verdict


class Cli(click.Group):
    """Turns ModelbuildError into one line on stderr and its exit code, and any other exception (a bug
    in modelbuild) into a saved traceback, a line that says it is a bug, and exit code 3."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModelbuildError as exc:
            if not isinstance(exc, BuildFailed):
                click.secho(f"error: {exc}", fg="red", err=True)
            else:
                click.secho(str(exc), fg="red", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt, SystemExit):
            raise
        except BrokenPipeError:  # the reader went away (`modelbuild doctor | head`): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except Exception as exc:
            ctx.exit(_internal_error(exc))


def _internal_error(exc: BaseException) -> int:
    """Save the traceback of a modelbuild bug to a file and say so in one line; the exit code."""
    import tempfile
    import traceback

    from buildsys.errors import INTERNAL_EXIT

    text = "".join(traceback.format_exception(exc))
    fd, saved = tempfile.mkstemp(prefix="modelbuild-internal-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    click.secho(f"internal error: {type(exc).__name__}: {first}", fg="red", err=True)
    click.echo(f"This is a bug in modelbuild, not in your files. Please report it with the traceback saved in "
               f"{saved} (exit code {INTERNAL_EXIT}).", err=True)
    if os.environ.get("MODELBUILD_DEBUG"):
        click.echo(text, err=True)
    return INTERNAL_EXIT


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--file", "config", default=DEFAULT_CONFIG, show_default=True, metavar="PATH",
              help="The deploy file.")
@click.version_option(package_name="modelbuild")
@click.pass_context
def cli(ctx: click.Context, config: str) -> None:
    """modelbuild: make for model exports. Builds verified deployment artifacts from deploy.yaml."""
    ctx.obj = config
    if os.environ.get("NO_COLOR"):  # https://no-color.org: click styles too, not only rich's output
        ctx.color = False


targets_arg = click.argument("targets", nargs=-1)


@cli.command()
@targets_arg
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--check", is_flag=True, help="Exit 1 when anything would run (for CI).")
@click.option("--force", is_flag=True, help="Show the plan as if every node were forced.")
@click.option("--locked", is_flag=True, help="Exit 1 when deploy.lock is stale: a node's key differs from the lock's "
              "(outputs missing from artifacts/ or the cache do not count; for pre-commit hooks and fresh CI checkouts).")
@click.option("--ops", is_flag=True, help="First analyse the models' ops (torch.export in a subprocess, cached by the "
              "model's content) and read each converter's op registry, so the plan lists every target's coverage "
              "and orders its routes by it (`build` does this for targets with work).")
@click.pass_obj
def plan(config: str, targets: tuple[str, ...], as_json: bool, check: bool, force: bool, locked: bool,
         ops: bool) -> None:
    """Show every node, fresh or stale, and why. Reads only; takes no lock."""
    from buildsys.cli import noop
    from buildsys.planning.plan import PlanRequest
    from buildsys.planning.plan import plan as make
    from buildsys.report import console as report
    from buildsys.status import Analysis

    recorder = noop.Recorder("plan", config, targets, eligible=not (as_json or force or ops))
    project = open_project(config)
    request = PlanRequest(targets or None, force=force, analysis=Analysis.ALL if ops else Analysis.NONE)
    with recorder.watch(project.planner):
        the_plan = make(project.planner, request)
    project.planner.stat.save()
    if as_json:
        click.echo(report.dumps(report.plan_json(the_plan)))
    else:
        with recorder.capture():
            report.print_plan(the_plan)
        if not the_plan.work:
            recorder.save(project)  # the next identical no-op is answered without importing this CLI
    if check and the_plan.work:
        sys.exit(1)
    if locked:
        from buildsys.cli.release import exit_if_lock_stale

        exit_if_lock_stale(the_plan, project.planner.lock)


def _build(config: str, targets: tuple[str, ...], *, jobs: int, keep_going: bool, force: bool, dry_run: bool,
           timeout: float | None, force_kinds: tuple[str, ...] = (), bench: bool = False, serving: bool = False,
           strict: bool = False, recorder: Any = None, executor_kind: str = "local",
           scheduler: str | None = None, as_json: bool = False, verbosity: int = 0) -> Any:
    """Build through the Python API and show it: progress as it happens, then the summary and failures.
    Returns the api.BuildReport; a failed build raises BuildFailed after its summary is printed."""
    from buildsys import api
    from buildsys.report import console as report
    from buildsys.running.progress import Lazy, progress_for

    project = api.Project(config, serving=serving, strict=strict)
    if dry_run:  # the plan the build would carry out first, routes ordered as the build orders them
        the_plan = project.dry_run(list(targets) or None, force=force, _force_kinds=force_kinds, _bench=bench)
        if as_json:
            click.echo(report.dumps(report.plan_json(the_plan)))
        else:
            report.print_plan(the_plan)
        return None
    view = Lazy(lambda: progress_for(report.console(), as_json=as_json, verbosity=verbosity))
    try:
        result = project.build(
            list(targets) or None, jobs=jobs, keep_going=keep_going, force=force, timeout=timeout,
            executor=executor_kind, scheduler=scheduler, on_event=view, check=False,
            on_wait=lambda: click.secho("another modelbuild build holds this project; waiting…", fg="yellow",
                                        err=as_json),
            _force_kinds=force_kinds, _bench=bench, _watch=recorder.watch if recorder else None)
    finally:
        view.close()
    if as_json:
        click.echo(_one_line(result.as_json()))
    elif not result.work:
        message = f"Nothing to do: all {len(result.plan.nodes)} node(s) are fresh."
        click.echo(message)
        if recorder:
            recorder.save(project._opened, message + "\n")  # answers the next identical no-op (buildsys.cli.noop)
    else:
        out = report.console()
        report.print_summary(result.summary, out)
        if not result.ok:
            report.print_failures(_as_build_result(result), out, result.plan)
    if not result.ok:
        raise api.build_failed(result)
    return result


def _one_line(value: Any) -> str:
    import json

    return json.dumps(value, default=str, sort_keys=True)


def _as_build_result(report: Any) -> Any:
    from buildsys.records import BuildResult

    return BuildResult(report.nodes)


def _usable_cpus() -> int:
    from buildsys.running.pool import usable_cpus

    return usable_cpus()


def _worker_memory(value: str | None, env: str = "") -> None:
    """Validate --worker-memory (or --step-memory) and hand it to the local worker pool (which reads it from
    the environment `env`)."""
    if value is None:
        return
    from buildsys.running.limits import parse_memory
    from buildsys.running.pool import MEMORY_ENV

    try:
        if parse_memory(value, 1 << 30) <= 0:
            raise ValueError(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size: write e.g. 6G, 800M or 40%") from None
    os.environ[env or MEMORY_ENV] = value


build_options = [
    click.option("-j", "--jobs", default=lambda: _usable_cpus(), show_default="the usable CPUs",
                 type=click.IntRange(min=1), help="Nodes to run in parallel (-j 1: one at a time)."),
    click.option("--worker-memory", metavar="SIZE", envvar="MODELBUILD_WORKER_MEMORY", expose_value=False,
                 callback=lambda ctx, param, value: _worker_memory(value),
                 help="Memory the warm worker processes may hold together, e.g. 6G or 40% (of the RAM available); "
                      "idle toolchains past it are unloaded. Default: 50% [$MODELBUILD_WORKER_MEMORY]."),
    click.option("--step-memory", metavar="SIZE", envvar="MODELBUILD_STEP_MEMORY", expose_value=False,
                 callback=lambda ctx, param, value: _worker_memory(value, "MODELBUILD_STEP_MEMORY"),
                 help="Memory one step's worker (with its children) may use, e.g. 8G or 40% (of the host's memory); "
                      "past it the step is stopped with its stack and the next route is tried (a target's "
                      "limits.memory still wins). Default: 50% [$MODELBUILD_STEP_MEMORY]."),
    click.option("-k", "--keep-going", is_flag=True, help="Build everything not downstream of a failure."),
    click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True),
                 help="Seconds a single step may take, for every step (a target's limits.time still wins). "
                      "Default: 5 min plus 10 min per GB of the model's weights; past it the step is stopped "
                      "with its stack and the next route is tried."),
]


# How a build shows itself: a live panel on a terminal, a line per event in logs, JSON lines for tools.
output_options = [
    click.option("--json", "as_json", is_flag=True, help="Stream JSON lines: one per node event (started, built, "
                 "cached, failed, …, with reasons and metrics), then a summary object."),
    click.option("-v", "--verbose", is_flag=True, help="Also say why each node runs and where its log is."),
    click.option("-q", "--quiet", is_flag=True, help="Print only failures and the summary."),
]


def _verbosity(verbose: bool, quiet: bool) -> int:
    if verbose and quiet:
        raise click.UsageError("-v and -q contradict each other; pass one")
    return 1 if verbose else -1 if quiet else 0


def _with(options: list) -> Any:
    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


#: What every command that builds takes (build, verify, bench): the targets, how to build, how to show it.
_building = _with([targets_arg, *build_options, *output_options])


@cli.command()
@_building
@click.option("--force", is_flag=True, help="Rebuild every needed node, ignoring lock and cache.")
@click.option("-n", "--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--serving", is_flag=True, help="Also check every target in its real serving software (Triton, "
              "TorchServe) on loopback, as acceptance 'serving: true' does.")
@click.option("--strict", is_flag=True, help="Fail (and do not deliver) a check that could not run here (Core ML "
              "off macOS, a serving check without its server) instead of reporting 'not run', as acceptance "
              "'require_numeric: true' does.")
@click.option("--executor", "executor_kind", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Where steps run: local worker processes, or a dask.distributed cluster (needs a remote cache).")
@click.option("--scheduler", metavar="ADDRESS", help="The Dask scheduler for --executor dask, e.g. tcp://host:8786 "
              "(default: $MODELBUILD_SCHEDULER).")
@click.pass_obj
def build(config: str, targets: tuple[str, ...], jobs: int, keep_going: bool, timeout: float | None, as_json: bool,
          verbose: bool, quiet: bool, force: bool, dry_run: bool, serving: bool, strict: bool, executor_kind: str,
          scheduler: str | None) -> None:
    """Build the targets (default: all) and everything they need; only stale nodes run."""
    from buildsys.cli.noop import Recorder

    verbosity = _verbosity(verbose, quiet)
    recorder = Recorder("build", config, targets,
                        eligible=not (force or dry_run or serving or strict or as_json or verbosity))
    _build(config, targets, jobs=jobs, keep_going=keep_going, force=force, dry_run=dry_run, timeout=timeout,
           serving=serving, strict=strict, recorder=recorder, executor_kind=executor_kind, scheduler=scheduler,
           as_json=as_json, verbosity=verbosity)


@cli.command()
@_building
@click.pass_obj
def verify(config: str, targets: tuple[str, ...], jobs: int, keep_going: bool, timeout: float | None, as_json: bool,
           verbose: bool, quiet: bool) -> None:
    """Re-run the checks of the targets (building whatever is stale first)."""
    _build(config, targets, jobs=jobs, keep_going=keep_going, force=False, dry_run=False, timeout=timeout,
           force_kinds=("check",), as_json=as_json, verbosity=_verbosity(verbose, quiet))


@cli.command()
@_building
@click.pass_obj
def bench(config: str, targets: tuple[str, ...], jobs: int, keep_going: bool, timeout: float | None, as_json: bool,
          verbose: bool, quiet: bool) -> None:
    """Time each target's artifact in its runtime next to PyTorch eager: p50/p95, throughput, memory.

    Builds what is stale first. Benchmarks run one at a time (nothing else runs beside them); the
    results go into deploy.lock and bundle manifests, and budgets (acceptance p50_ms/p95_ms) are
    checked against them.
    """
    from buildsys.report import console as report
    from buildsys.storage.lock import Lock

    _build(config, targets, jobs=jobs, keep_going=keep_going, force=False, dry_run=False, timeout=timeout,
           force_kinds=("bench",), bench=True, as_json=as_json, verbosity=_verbosity(verbose, quiet))
    if as_json:
        return
    project = open_project(config)
    lock = Lock.read(project.planner.lock.path)
    report.print_bench(lock.nodes, list(targets) or list(project.config.project.targets), report.console())


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="NAME | verify FILE")
@_with(build_options)
@_with(signing_options)
@click.pass_obj
def bundle(config: str, args: tuple[str, ...], jobs: int, keep_going: bool, timeout: float | None, **signing: Any) -> None:
    """Build and pack a release bundle (`bundle NAME`), or check one (`bundle verify FILE`).

    A bundle holds the verified artifacts of its targets, the reference data their checks used,
    manifest.json (hashes, signatures, step chains, toolchains, acceptance, observed metrics), a model
    card per target, an SBOM and a provenance statement, signed when a key is configured, in an
    archive that is byte-identical for the same inputs (docs/releases.md).
    """
    from buildsys.cli import release as cli_release

    if args[0] == "verify":
        if len(args) != 2:
            raise click.UsageError("usage: modelbuild bundle verify FILE")
        return _verify_bundle(Path(args[1]), jobs, timeout, cli_release.trust_source(config, signing))
    if len(args) != 1:
        raise click.UsageError("usage: modelbuild bundle NAME")
    from buildsys import api
    from buildsys.release import bundle as bundles

    project = api.Project(config)
    spec = bundles.resolve(project._opened.config, args[0])
    key = cli_release.signing_key_for(project._opened.config, args[0], signing)  # every key problem before any build
    _build(config, tuple(spec.targets), jobs=jobs, keep_going=keep_going, force=False, dry_run=False, timeout=timeout)
    packed = project.pack(args[0], key=key, sign=key is not None, build=False)
    path = packed.path
    click.echo(f"bundle {args[0]}: {project._opened.planner.display(path)} ({path.stat().st_size / 1e3:.1f} KB, "
               f"{len(spec.targets)} target(s))")
    cli_release.show_packed(packed)


def _verify_bundle(path: Path, jobs: int, timeout: float | None, trust: Any = None) -> None:
    """Check hashes, then re-run every numeric check this host can run, in worker processes."""
    from buildsys import api

    def show(check: api.BundleCheck) -> None:
        if check.status is Verdict.PASSED:
            click.secho(f"  passed   {check.target} ({check.format}, {check.samples} samples)", fg="green")
        else:
            click.secho(f"  {check.status:<8} {check.target}: {check.detail}",
                        fg="red" if check.status is Verdict.FAILED else "yellow")

    from buildsys.cli.release import show_trust

    api.verify_bundle(path, jobs=jobs, timeout=timeout or 1800.0, on_check=show, on_manifest=lambda manifest: click.echo(
        f"{path.name}: {len(manifest.artifacts)} artifact(s), every sha256 matches the manifest"), trust=trust,
        on_trust=show_trust)


def _add_commands() -> None:
    from buildsys.cli.cache import COMMANDS as CACHE_COMMANDS
    from buildsys.cli.inspect import COMMANDS
    from buildsys.cli.release import COMMANDS as RELEASE_COMMANDS

    for command in COMMANDS + CACHE_COMMANDS + RELEASE_COMMANDS:
        cli.add_command(command)


_add_commands()


def main() -> None:
    cli(prog_name="modelbuild")


if __name__ == "__main__":
    main()
