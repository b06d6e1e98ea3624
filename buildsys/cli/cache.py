"""`modelbuild cache status|push|pull`: look at and move results between the local store and the remote.

`build` already pulls stale nodes and pushes what it builds; these commands work on the results the
lock names (the last build), for seeding a new remote from a warm machine (`push`), prefetching on a
fresh clone before going offline (`pull`), and seeing what a remote holds (`status`).
"""

from __future__ import annotations

from typing import Any

import click

from buildsys.planning.project import open_project


def _remote(project: Any, *, writing: bool = False) -> Any:
    from buildsys.storage.remote import ENV_URL, RemoteError

    remote = project.planner.remote
    if remote is None:
        raise RemoteError("no remote cache is configured",
                          hint=f"set {ENV_URL}=s3://bucket/prefix (or file:///path), or cache: {{remote: URL}} in deploy.yaml")
    if writing and remote.readonly:
        raise RemoteError(f"the remote cache {remote.url} is read-only here",
                          hint="unset MODELBUILD_REMOTE_READONLY or cache.remote_readonly to push")
    return remote


def _results(project: Any) -> dict[str, str]:
    """node → key for every shareable result the lock names (host-bound benchmarks stay local)."""
    from buildsys.storage.lock import LOCAL

    return {name: e["key"] for name, e in sorted(project.planner.lock.nodes.items()) if e.get("key") and not e.get(LOCAL)}


def _check(remote: Any) -> None:
    from buildsys.storage.remote import RemoteError

    if remote.failure is not None:
        raise RemoteError(f"remote cache {remote.url} failed: {remote.failure}",
                          hint="check its URL, credentials (AWS_* variables) and endpoint (AWS_ENDPOINT_URL)")


@click.group()
def cache() -> None:
    """The shared remote cache (MODELBUILD_REMOTE or cache.remote): status, push, pull."""


@cache.command()
@click.pass_obj
def status(config: str) -> None:
    """Say which remote is used and how many of the lock's results it and the local cache hold."""
    import os

    from buildsys.storage.remote import ENV_URL

    project = open_project(config)
    remote = _remote(project)
    source = ENV_URL if os.environ.get(ENV_URL) is not None else "deploy.yaml cache.remote"
    mode = "read-only" if remote.readonly else "read-write"
    click.echo(f"remote {remote.url} ({mode}, from {source})")
    try:
        entries, blobs, size = remote.inventory()
    except FileNotFoundError:
        entries = blobs = size = 0
    except Exception as exc:  # noqa: BLE001 - any storage error is reported the same way
        remote._give_up(exc)
    _check(remote)
    click.echo(f"  stored: {entries} result(s), {blobs} blob(s), {size / 1e6:.1f} MB")
    results = _results(project)
    local = sum(1 for key in results.values() if project.planner.store.get_action(key) is not None)
    there = sum(1 for key in results.values() if remote.lookup(key) is not None)
    _check(remote)
    click.echo(f"  this project: {len(results)} result(s) in the lock, {local} in the local cache, {there} on the remote")


@cache.command()
@click.pass_obj
def push(config: str) -> None:
    """Upload every result of the lock that the local cache holds and the remote lacks."""
    project = open_project(config)
    remote = _remote(project, writing=True)
    store = project.planner.store
    pushed = present = absent = 0
    for name, key in _results(project).items():
        entry = store.get_action(key)
        if entry is None:
            absent += 1
        elif remote.lookup(key) is not None:
            present += 1
        elif remote.push(key, entry, store):
            pushed += 1
            click.echo(f"  pushed   {name}")
        _check(remote)
    click.echo(f"pushed {pushed} result(s) to {remote.url}; {present} already there"
               + (f", {absent} not in the local cache (build them first)" if absent else ""))


@cache.command()
@click.pass_obj
def pull(config: str) -> None:
    """Download every result of the lock that the local cache lacks (verified), for offline builds."""
    project = open_project(config)
    remote = _remote(project)
    store = project.planner.store
    pulled = present = missing = 0
    for name, key in _results(project).items():
        if store.get_action(key) is not None:
            present += 1
        elif remote.pull(key, store) is not None:
            pulled += 1
            click.echo(f"  pulled   {name}")
        else:
            missing += 1
        _check(remote)
    click.echo(f"pulled {pulled} result(s) from {remote.url}; {present} already local"
               + (f", {missing} not on the remote (or corrupt there)" if missing else ""))


COMMANDS = [cache]
