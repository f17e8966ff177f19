"""The subcommands, by name: (module under pivotbuild.cli, attribute).

Kept apart from the click code so the no-op fast path can tell a subcommand
from a build target without importing click.
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "repro": ("build", "repro"),
    "run": ("run", "run"),
    "status": ("status", "status"),
    "check": ("inspect", "check"),
    "list": ("inspect", "list_"),
    "graph": ("inspect", "graph"),
    "lock": ("lock", "lock"),
    "history": ("history", "history"),
    "rpc": ("rpc", "rpc"),
    "checkout": ("workspace", "checkout"),
    "verify": ("workspace", "verify"),
    "clean": ("workspace", "clean"),
    "gc": ("workspace", "gc"),
    "commit": ("workspace", "commit"),
    "remote": ("remote", "remote"),
    "push": ("remote", "push"),
    "fetch": ("remote", "fetch"),
    "pull": ("remote", "pull"),
    "fmt": ("fmt", "fmt"),
    "init": ("init", "init"),
    "completion": ("completion", "completion"),
}
