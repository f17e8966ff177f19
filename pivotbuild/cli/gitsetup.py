"""What `pivotbuild init` sets up in a git repository: lockfiles diffed as
`lock show` text and merged by `lock merge`.

Two places: a `.gitattributes` line at the top of the work tree (committed,
so every clone routes `Pivotfile.lock` to the drivers) and the drivers
themselves in the repository's own git config (`.git/config`: git never
takes commands from a committed file, so each clone runs `pivotbuild init`
once).  The drivers are run by name, `pivotbuild`, so it must be on the PATH
git runs them with.  Everything is idempotent: a second run changes nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ATTRIBUTES = "Pivotfile.lock diff=pivotlock merge=pivotlock"
CONFIG = (
    ("diff.pivotlock.textconv", "pivotbuild lock show"),
    ("merge.pivotlock.name", "pivotbuild lockfile merge"),
    ("merge.pivotlock.driver", "pivotbuild lock merge %O %A %B"),
)


def _git(here: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    """Run git in `here`; None if git is not installed."""
    try:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=False)
    except OSError:
        return None


def work_tree(here: Path) -> Path | None:
    """The top of the git work tree holding `here`, if any."""
    found = _git(here, "rev-parse", "--show-toplevel")
    if found is None or found.returncode != 0 or not found.stdout.strip():
        return None
    return Path(found.stdout.strip())


def set_up(top: Path) -> list[str]:
    """Add the attributes line and the driver entries where missing; what was
    added, for the user (empty if all was there)."""
    done = []
    attributes = top / ".gitattributes"
    text = attributes.read_text() if attributes.exists() else ""
    if not any(" ".join(line.split()) == ATTRIBUTES for line in text.splitlines()):
        if text and not text.endswith("\n"):
            text += "\n"
        attributes.write_text(text + ATTRIBUTES + "\n")
        done.append(f"added '{ATTRIBUTES}' to {attributes}")
    changed = []
    for key, value in CONFIG:
        current = _git(top, "config", "--local", "--get", key)
        if current is not None and current.returncode == 0 and current.stdout.rstrip("\n") == value:
            continue
        result = _git(top, "config", "--local", key, value)
        if result is None or result.returncode != 0:
            why = result.stderr.strip() if result is not None else "git not found"
            raise OSError(f"git config {key} failed: {why}")
        changed.append(key)
    if changed:
        done.append(f"set {', '.join(changed)} in the repository's git config")
    return done
