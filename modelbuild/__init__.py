"""modelbuild's Python API: load a deploy file, plan, build, verify, bench and bundle its targets.

    import modelbuild

    project = modelbuild.load("deploy.yaml")
    for node in project.plan().stale:
        print(node.name, node.reasons)
    report = project.build(["android"], jobs=2)
    print(report.targets["android"].status, report.targets["android"].artifact)

The implementation lives in `buildsys.api` (the package the command line is built on); this
package is the distribution's import name.
"""

from buildsys import __version__
from buildsys.api import Project, load, verify_bundle
from buildsys.errors import BuildFailed, ConfigError, DataError, ModelbuildError, PlanError, StepError
from buildsys.api.results import BuildReport, BundleCheck, NodeStatus, PlanResult, TargetResult
from buildsys.records import Event

__all__ = ["load", "verify_bundle", "Project", "PlanResult", "NodeStatus", "BuildReport", "TargetResult", "Event",
           "BundleCheck", "ModelbuildError", "ConfigError", "PlanError", "BuildFailed", "StepError", "DataError",
           "BundleError", "__version__"]


def __getattr__(name: str) -> object:
    if name == "BundleError":  # lives with the bundle code, which imports pydantic: only on demand
        from buildsys.release.bundle import BundleError

        return BundleError
    raise AttributeError(f"module 'modelbuild' has no attribute {name!r}")
