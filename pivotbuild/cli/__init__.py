"""The `pivotbuild` command: flags in, calls into the core, exit codes out."""

from __future__ import annotations

from pivotbuild.cli.main import main

__all__ = ["main"]
