"""pivotbuild: a Make-like, content-hashed build tool for data and ML pipelines.

The Python API (api.py, docs/api.md) is importable from here: `pivotbuild.Project`,
`StageInfo`, `BuildResult`, `PivotError`.  It is imported on first use, as the
command line, which imports this package on every run, never needs it."""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from pivotbuild.api import BuildResult, PivotError, Project, StageInfo

_API = ("BuildResult", "PivotError", "Project", "StageInfo")


def __getattr__(name: str) -> object:
    if name in _API:
        from pivotbuild import api

        value: object = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pivotbuild' has no attribute {name!r}")


__all__ = ["BuildResult", "PivotError", "Project", "StageInfo", "__version__"]
