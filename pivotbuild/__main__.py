from __future__ import annotations

from pivotbuild.cli import run

run()
