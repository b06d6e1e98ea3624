"""Opening a deploy file: its validated config, lock, store and planner (nothing heavy imported)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildsys.config.inputs import source_files
from buildsys.config.load import load
from buildsys.errors import ConfigError
from buildsys.planning.plan import Planner
from buildsys.storage.hashing import StatCache
from buildsys.storage.lock import Lock, lock_path_for
from buildsys.storage.store import Store

DEFAULT_CONFIG = "deploy.yaml"


@dataclass
class OpenedProject:
    """An opened deploy file with its lock, store and planner (nothing heavy imported)."""

    config: Any
    planner: Any

    @property
    def cache_dir(self) -> Path:
        return self.planner.store.dir


def open_project(config_path: str, serving: bool = False, strict: bool = False) -> OpenedProject:

    path = Path(config_path)
    if not path.exists() and config_path == DEFAULT_CONFIG:
        hint = "pass the deploy file with -f PATH"
        if Path("deploy.yaml.example").exists():
            hint = "try: modelbuild -f deploy.yaml.example build"

        raise ConfigError(f"no {DEFAULT_CONFIG} in {Path.cwd()}", hint=hint)
    cfg = load(path)
    overrides = {"serving": True} if serving else {}
    if strict:
        overrides["require_numeric"] = True
    if overrides:  # --serving / --strict hold for every target: they enter the check keys like any acceptance
        cfg.project = with_acceptance(cfg.project, overrides)
    cache = Path(os.environ.get("MODELBUILD_CACHE") or cfg.root / ".modelbuild")
    stat = StatCache(cache / "statcache.json")
    planner = Planner(cfg, Lock.read(lock_path_for(path)), Store(cache, stat), stat, cfg.root / "artifacts")
    return OpenedProject(cfg, planner)


def with_acceptance(project: Any, overrides: dict[str, Any]) -> Any:
    """The project with `overrides` set in every target's acceptance (pydantic models are frozen)."""
    targets = {name: t.model_copy(update={"acceptance": t.acceptance.model_copy(update=overrides)})
               for name, t in project.targets.items()}
    return project.model_copy(update={"targets": targets})


def source_sizes(project: OpenedProject) -> dict[str, int]:
    """Bytes of each model's fp32 source (weights or source file): the baseline for size ratios."""

    sizes = {}
    for name in project.config.project.models:
        files = source_files(project.config, name)
        sizes[name] = sum(f.stat().st_size for f in files.get("weights", files.get("source file", [])))
    return sizes
