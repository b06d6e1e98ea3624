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

from buildsys.errors import BuildFailed, ModelbuildError
from buildsys.project import DEFAULT_CONFIG, open_project, source_sizes


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


targets_arg = click.argument("targets", nargs=-1)


@cli.command()
@targets_arg
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--check", is_flag=True, help="Exit 1 when anything would run (for CI).")
@click.option("--force", is_flag=True, help="Show the plan as if every node were forced.")
@click.pass_obj
def plan(config: str, targets: tuple[str, ...], as_json: bool, check: bool, force: bool) -> None:
    """Show every node, fresh or stale, and why. Reads only; takes no lock."""
    from buildsys import report
    from buildsys.plan import make_plan

    project = open_project(config)
    the_plan = make_plan(project.planner, list(targets) or None, force=force)
    project.planner.stat.save()
    if as_json:
        click.echo(report.dumps(report.plan_json(the_plan)))
    else:
        report.print_plan(the_plan)
    if check and the_plan.work:
        sys.exit(1)


def _build(config: str, targets: tuple[str, ...], *, jobs: int, keep_going: bool, force: bool, dry_run: bool,
           timeout: float, force_kinds: tuple[str, ...] = (), bench: bool = False, serving: bool = False,
           strict: bool = False) -> None:
    from filelock import FileLock, Timeout

    from buildsys import report
    from buildsys.lock import Lock
    from buildsys.plan import make_plan

    project = open_project(config, serving=serving, strict=strict)
    if dry_run:
        report.print_plan(make_plan(project.planner, list(targets) or None, force=force, force_kinds=force_kinds,
                                    bench=bench))
        return
    project.cache_dir.mkdir(parents=True, exist_ok=True)
    guard = FileLock(str(project.cache_dir / "build.lock"))
    try:
        guard.acquire(timeout=0)
    except Timeout:
        click.secho("another modelbuild build holds this project; waiting…", fg="yellow")
        guard.acquire()
    try:
        planner = project.planner
        planner.lock = Lock.read(planner.lock.path)  # re-read under the lock: another build may have finished
        the_plan = make_plan(planner, list(targets) or None, force=force, force_kinds=force_kinds, bench=bench)
        if not the_plan.work:
            planner.stat.save()
            click.echo(f"Nothing to do: all {len(the_plan.nodes)} node(s) are fresh.")
            return
        out = report.console()  # rich and the executor only once there is work to do
        from buildsys.execute import Builder, LocalExecutor

        executor = LocalExecutor(planner.store.dir / "logs", jobs)
        try:
            builder = Builder(planner, the_plan, executor, jobs=jobs, keep_going=keep_going, force=force,
                              force_kinds=force_kinds, timeout=timeout,
                              on_event=lambda kind, payload: report.print_event(out, kind, payload))
            result = builder.run()
        finally:
            executor.close()
        report.print_summary(report.target_rows(the_plan, planner.lock.nodes, planner.lock.targets,
                                                source_sizes(project)), out)
        if not result.ok:
            report.print_failures(result, out, the_plan)
            failed = len(result.failed)
            skipped = sum(1 for r in result.results.values() if r.outcome == "skipped")
            raise BuildFailed(f"build failed: {failed} node(s) failed, {skipped} skipped")
    finally:
        guard.release()




build_options = [
    click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(min=1),
                 help="Nodes to run in parallel."),
    click.option("-k", "--keep-going", is_flag=True, help="Build everything not downstream of a failure."),
    click.option("--timeout", default=1800.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                 help="Seconds a single step may take."),
]


def _with(options: list) -> Any:
    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


@cli.command()
@targets_arg
@_with(build_options)
@click.option("--force", is_flag=True, help="Rebuild every needed node, ignoring lock and cache.")
@click.option("-n", "--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--serving", is_flag=True, help="Also check every target in its real serving software (Triton, "
              "TorchServe) on loopback, as acceptance 'serving: true' does.")
@click.option("--strict", is_flag=True, help="Fail (and do not deliver) a check that could not run here (Core ML "
              "off macOS, a serving check without its server) instead of reporting 'not run', as acceptance "
              "'require_numeric: true' does.")
@click.pass_obj
def build(config: str, targets: tuple[str, ...], jobs: int, keep_going: bool, timeout: float, force: bool,
          dry_run: bool, serving: bool, strict: bool) -> None:
    """Build the targets (default: all) and everything they need; only stale nodes run."""
    _build(config, targets, jobs=jobs, keep_going=keep_going, force=force, dry_run=dry_run, timeout=timeout,
           serving=serving, strict=strict)


@cli.command()
@targets_arg
@_with(build_options)
@click.pass_obj
def verify(config: str, targets: tuple[str, ...], jobs: int, keep_going: bool, timeout: float) -> None:
    """Re-run the checks of the targets (building whatever is stale first)."""
    _build(config, targets, jobs=jobs, keep_going=keep_going, force=False, dry_run=False, timeout=timeout,
           force_kinds=("check",))


@cli.command()
@targets_arg
@_with(build_options)
@click.pass_obj
def bench(config: str, targets: tuple[str, ...], jobs: int, keep_going: bool, timeout: float) -> None:
    """Time each target's artifact in its runtime next to PyTorch eager: p50/p95, throughput, memory.

    Builds what is stale first. Benchmarks run one at a time (nothing else runs beside them); the
    results go into deploy.lock and bundle manifests, and budgets (acceptance p50_ms/p95_ms) are
    checked against them.
    """
    from buildsys import report
    from buildsys.lock import Lock

    _build(config, targets, jobs=jobs, keep_going=keep_going, force=False, dry_run=False, timeout=timeout,
           force_kinds=("bench",), bench=True)
    project = open_project(config)
    lock = Lock.read(project.planner.lock.path)
    report.print_bench(lock.nodes, list(targets) or list(project.config.project.targets), report.console())


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="NAME | verify FILE")
@_with(build_options)
@click.pass_obj
def bundle(config: str, args: tuple[str, ...], jobs: int, keep_going: bool, timeout: float) -> None:
    """Build and pack a release bundle (`bundle NAME`), or check one (`bundle verify FILE`).

    A bundle holds the verified artifacts of its targets, the reference data their checks used and
    manifest.json (hashes, signatures, step chains, toolchains, acceptance, observed metrics), in an
    archive that is byte-identical for the same inputs.
    """
    if args[0] == "verify":
        if len(args) != 2:
            raise click.UsageError("usage: modelbuild bundle verify FILE")
        return _verify_bundle(Path(args[1]), jobs, timeout)
    if len(args) != 1:
        raise click.UsageError("usage: modelbuild bundle NAME")
    from buildsys import bundle as bundles
    from buildsys.lock import Lock
    from buildsys.plan import make_plan

    project = open_project(config)
    spec = bundles.resolve(project.config, args[0])
    _build(config, tuple(spec.targets), jobs=jobs, keep_going=keep_going, force=False, dry_run=False, timeout=timeout)
    planner = project.planner
    lock = Lock.read(planner.lock.path)
    dag = make_plan(planner, spec.targets).dag
    path = bundles.make(project.config, lock, dag, args[0], planner.artifacts / "bundles", planner.store)
    click.echo(f"bundle {args[0]}: {planner.display(path)} ({path.stat().st_size / 1e3:.1f} KB, {len(spec.targets)} target(s))")


def _verify_bundle(path: Path, jobs: int, timeout: float) -> None:
    """Check hashes, then re-run every numeric check this host can run, in worker processes."""
    import shutil
    import tempfile

    from buildsys import bundle as bundles
    from buildsys.execute import Action, LocalExecutor
    from buildsys.formats import get_step

    work = Path(tempfile.mkdtemp(prefix="modelbuild-bundle-"))
    executor = LocalExecutor(work / "logs", jobs)
    failures = []
    try:
        manifest = bundles.unpack_and_check(path, work / "bundle")
        click.echo(f"{path.name}: {len(manifest.artifacts)} artifact(s), every sha256 matches the manifest")
        for art in manifest.artifacts:
            out = work / "checks" / art.target
            out.mkdir(parents=True)
            (work / "logs").mkdir(exist_ok=True)
            request = {"step": "check", "options": art.acceptance, "model_name": art.model, "model": art.model_config_,
                       "root": str(work / "bundle"), "input": str(work / "bundle" / art.main), "out_dir": str(out),
                       "log": str(work / "logs" / f"{art.target}.log"), "precision": art.precision,
                       "extra": {"format": art.format, "reference": str(work / "bundle" / art.reference)}}
            reply = executor.run(Action(art.target, get_step(art.chain[-1].step).toolchain, request, timeout))
            metrics = reply.get("metrics", {})
            if not reply.get("ok"):
                failures.append(f"{art.target}: {reply.get('error')}")
                click.secho(f"  failed   {art.target}: {reply.get('error')}", fg="red")
            elif metrics.get("passed") is False:
                failures.append(f"{art.target}: " + "; ".join(metrics.get("failures", ["acceptance not met"])))
                click.secho(f"  failed   {art.target}: {failures[-1]}", fg="red")
            elif metrics.get("not_run"):
                click.secho(f"  not run  {art.target}: {metrics['not_run']}", fg="yellow")
            else:
                click.secho(f"  passed   {art.target} ({art.format}, {metrics.get('samples')} samples)", fg="green")
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        raise bundles.BundleError(f"bundle {path.name} failed verification: {failures[0]}")


def _add_commands() -> None:
    from buildsys.cli_inspect import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_add_commands()


def main() -> None:
    cli(prog_name="modelbuild")


if __name__ == "__main__":
    main()
