"""The `modelbuild` commands that read or tidy a project: report, graph, explain, clean, gc, schema, doctor."""

from __future__ import annotations


import click

from buildsys.planning.project import open_project

targets_arg = click.argument("targets", nargs=-1)


@click.command()
@click.option("-o", "--output", default="artifacts/report", show_default=True, metavar="DIR",
              help="Directory for report.html and report.md (relative to the deploy file).")
@click.pass_obj
def report(config: str, output: str) -> None:
    """Write a self-contained HTML (and Markdown) report of the last build from deploy.lock."""
    from buildsys.storage.lock import Lock
    from buildsys.report.html import render
    from buildsys.storage.store import atomic_write

    project = open_project(config)
    lock = Lock.read(project.planner.lock.path)
    if not lock.targets:
        from buildsys.errors import PlanError

        raise PlanError("nothing has been built yet, so there is nothing to report", hint="run: modelbuild build")
    html, markdown = render({"nodes": lock.nodes, "targets": lock.targets, "routes": lock.routes}, project.config.path.name)
    out = project.config.root / output
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.html", html)
    atomic_write(out / "report.md", markdown)
    click.echo(f"wrote {project.planner.display(out / 'report.html')} and report.md ({len(lock.targets)} target(s))")


@click.command()
@targets_arg
@click.option("--format", "fmt", type=click.Choice(["text", "mermaid", "dot"]), default="text", show_default=True)
@click.pass_obj
def graph(config: str, targets: tuple[str, ...], fmt: str) -> None:
    """Print the build DAG (the routes the next build takes)."""
    from buildsys.planning.plan import PlanRequest, plan

    dag = plan(open_project(config).planner, PlanRequest(targets or None)).dag
    order = dag.order()
    if fmt == "mermaid":
        click.echo("graph LR")
        ids = {n.name: f"n{i}" for i, n in enumerate(order)}
        for n in order:
            click.echo(f'  {ids[n.name]}["{n.name}"]')
        for n in order:
            for d in n.deps:
                click.echo(f"  {ids[d]} --> {ids[n.name]}")
    elif fmt == "dot":
        click.echo("digraph modelbuild {\n  rankdir=LR;")
        for n in order:
            shape = "box" if n.kind == "artifact" else "ellipse"
            click.echo(f'  "{n.name}" [shape={shape}];')
        for n in order:
            for d in n.deps:
                click.echo(f'  "{d}" -> "{n.name}";')
        click.echo("}")
    else:
        for n in order:
            deps = f"  ← {', '.join(n.deps)}" if n.deps else f"  ← source ({n.source_format})"
            targets_of = f"  [{', '.join(n.targets)}]" if n.targets else ""
            click.echo(f"{n.name}  ({n.step}){deps}{targets_of}")


@click.command()
@click.argument("node")
@click.pass_obj
def explain(config: str, node: str) -> None:
    """Show a node's key components, its lock entry and why it is fresh or stale."""
    from buildsys.report import console as report
    from buildsys.errors import PlanError, did_you_mean
    from buildsys.formats import get_step
    from buildsys.planning.plan import PlanRequest, plan
    from buildsys.status import caveats_of

    project = open_project(config)
    the_plan = plan(project.planner, PlanRequest())
    if node not in the_plan.nodes:
        raise PlanError(f"unknown node '{node}'", hint=did_you_mean(node, the_plan.nodes) or "see: modelbuild graph")
    p = the_plan.nodes[node]
    entry = project.planner.lock.nodes.get(node, {})
    out = {"node": node, "state": "fresh" if p.fresh else "stale", "reasons": p.reasons, "key": p.key,
           "components": p.components, "lock": entry}
    notes = get_step(p.node.step).describe_facts(entry.get("facts") or {}) if entry.get("key") == p.key else []
    from buildsys.formats.quantized_weights import describe as describe_share

    share = describe_share((entry.get("facts") or {}).get("quantized_weights")) if entry.get("key") == p.key else None
    notes += [share] if share else []  # what share of the weights the artifact holds in its precision
    notes += [str(c) for c in caveats_of(entry)]
    if notes:  # what the artifact is, in words (fused ops, a lesser path taken)
        out["notes"] = notes
    dag = the_plan.dag
    target = p.node.target or next((t for t, n in dag.target_nodes.items() if n == node), "")
    if target in dag.routes:  # a target's check or deliverable: the route taken and the ones dropped
        out.update(route=dag.routes[target].words(), candidate_routes=[r.words() for r in dag.candidates.get(target, [])],
                   dropped_routes=[{k: r[k] for k in ("route", "node", "reason")} for r in the_plan.dropped.get(target, [])])
        chosen = (project.planner.lock.routes.get(target) or {}).get("chosen")
        if chosen:  # the comparison a `prefer:` made, route by route
            out["chosen"] = chosen
    if dag.rewrites(node):  # the op rewrites the artifact (or the one a check judges) was made with
        out["rewrites"] = dag.rewrites(node)
    from buildsys.localise.record import last_miss, table_lines

    misses = []  # the check missed under this key, or a dropped route's check under its own
    for key, route in [(p.key, None), *[(r.get("key"), r["route"]) for r in the_plan.dropped.get(target, [])
                                        if r.get("node") == node]]:
        miss = last_miss(project.planner.store.dir, node, key)
        if miss:  # where the artifact left PyTorch, layer by layer
            misses.append({**({"route": route} if route else {}), "failures": miss["failures"],
                           "localisation": miss["localisation"], "table": table_lines(miss["localisation"])})
    warned = (entry.get("metrics") or {}).get("localisation") if entry.get("key") == p.key else None
    if warned:  # a miss the target only warns about (on_fail: warn) is in the lock's record
        misses.append({"failures": entry["metrics"].get("failures", []), "localisation": warned,
                       "table": table_lines(warned)})
    if misses:
        out["misses"] = misses
    click.echo(report.dumps(out))


@click.command()
@click.option("--cache", is_flag=True, help="Also delete the cache directory (.modelbuild).")
@click.pass_obj
def clean(config: str, cache: bool) -> None:
    """Delete materialized artifacts (and with --cache, the whole cache)."""
    import shutil

    project = open_project(config)
    artifacts = project.planner.artifacts
    removed = 0
    if artifacts.exists():
        for child in artifacts.iterdir():
            if child.name != ".gitkeep":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
                removed += 1
    from buildsys.planning.record import LockWriter

    LockWriter(project.planner.lock).cleared()
    click.echo(f"removed {removed} item(s) from {artifacts}")
    if cache and project.cache_dir.exists():
        shutil.rmtree(project.cache_dir)
        click.echo(f"removed {project.cache_dir}")


@click.command()
@click.pass_obj
def gc(config: str) -> None:
    """Delete cached blobs and actions that deploy.lock does not reference."""
    project = open_project(config)
    lock = project.planner.lock
    entries, blobs, freed = project.planner.store.gc(lock.referenced_keys(), lock.referenced_blobs())
    click.echo(f"removed {entries} action(s) and {blobs} blob(s), freed {freed / 1e6:.1f} MB")


@click.command()
@click.option("--steps", is_flag=True, help="Print the options of every step instead.")
@click.option("--markdown", is_flag=True, help="Print the deploy.yaml reference as Markdown.")
def schema(steps: bool, markdown: bool) -> None:
    """Print the JSON Schema of deploy.yaml (or of every step's options)."""
    from buildsys.report import console as report
    from buildsys.config.schema import DeployConfig

    if markdown:
        from buildsys.config.reference import render

        click.echo(render(), nl=False)
    elif steps:
        from buildsys.formats import steps as all_steps

        click.echo(report.dumps({name: {"consumes": list(s.consumes), "produces": s.produces, "description": s.description or (s.__doc__ or "").strip().splitlines()[0],
                                        "options": s.Options.model_json_schema()} for name, s in sorted(all_steps().items())}))
    else:
        click.echo(report.dumps(DeployConfig.model_json_schema()))


@click.command()
@click.option("--install-os-packages", is_flag=True, help="First apt-get install the Debian packages whose programs "
              "the runtimes need and this host lacks (Chromium, Java, npm); fails (exit 1) when that cannot be done.")
@click.option("--imports", is_flag=True, help="Also time what each toolchain's worker pays to import its packages "
              "(one fresh process per toolchain; about a minute).")
def doctor(install_os_packages: bool, imports: bool) -> None:
    """Show which toolchains and runtimes are usable on this host (and install the OS packages they lack)."""
    from buildsys.storage.keys import package_version
    from buildsys.formats import runtimes, steps

    if install_os_packages:
        _install_os_packages()
    # Every package a step or runtime declares (what enters keys), so a new format needs no edit here.
    packages = sorted({p for s in steps().values() for p in s.packages} | {p for r in runtimes().values() for p in r.packages})
    width = max(map(len, packages))
    for pkg in packages:
        click.echo(f"  {pkg:<{width}} {package_version(pkg)}")
    click.echo("runtimes:")
    width = max(map(len, runtimes()))
    for name, cls in sorted(runtimes().items()):
        why = cls().unavailable()
        click.echo(f"  {name:<{width}} {'ok' if why is None else 'unavailable: ' + why}")
    if imports:
        from buildsys.running.imports import toolchain_imports

        click.echo("import seconds per toolchain (a fresh worker; a package's share includes what it imports first):")
        for toolchain, timing in toolchain_imports().items():
            parts = ", ".join(f"{pkg} {sec:.1f}" for pkg, sec in timing.packages.items() if sec >= 0.05)
            parts = "; ".join(p for p in (parts or "every package under 0.05 s", timing.error) if p)
            click.echo(f"  {toolchain:<10} {timing.total:6.1f} s  {parts}")


def _install_os_packages() -> None:
    """apt-get install the Debian packages (Runtime.os_packages) whose programs are not on PATH, for the
    runtimes this host can have; a failure is an error (exit 1), never a check that quietly skips."""
    import os
    import shutil
    import subprocess

    from buildsys.errors import ModelbuildError
    from buildsys.formats import runtimes

    wanted = {package: program for cls in runtimes().values() if not cls().out_of_reach()
              for program, package in cls.os_packages.items() if shutil.which(program) is None}
    if not wanted:
        click.echo("OS packages: every program the runtimes need is on PATH")
        return
    command = ["apt-get", "install", "-y", "-qq", *sorted(wanted)]
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ModelbuildError(f"missing programs: {', '.join(sorted(wanted.values()))}",
                              hint="install them as root: apt-get update && " + " ".join(command))
    click.echo(f"OS packages: installing {', '.join(sorted(wanted))} (for {', '.join(sorted(wanted.values()))})")
    for step in (["apt-get", "update", "-qq"], command):
        done = subprocess.run(step, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise ModelbuildError(f"{' '.join(step)} failed (exit {done.returncode}): {tail}")
    still = sorted(program for program in wanted.values() if shutil.which(program) is None)
    if still:
        raise ModelbuildError(f"installed {', '.join(sorted(wanted))}, but {', '.join(still)} is still not on PATH")


COMMANDS = [report, graph, explain, clean, gc, schema, doctor]
