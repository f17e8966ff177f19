"""Project roots and path normalisation."""

from __future__ import annotations

import functools
import os
import posixpath
from pathlib import Path

STATE_DIR = ".pivot"
# A copy of each pipeline's last lockfile, kept by the cache (see state/store.py):
# what the run cache restores from when a lockfile is damaged or lost.
LOCK_COPIES = f"{STATE_DIR}/cache/runs/lockfiles"
PIVOTFILE = "Pivotfile"
LOCKFILE = "Pivotfile.lock"
# In the `.pivot/` of an included pipeline that is not the project root: the
# state directory is that pipeline's, and does not make its directory a root.
PIPELINE_ONLY = "pipeline-state"


def pivotfile_path(cwd: Path, file: str | Path | None) -> Path:
    """The main Pivotfile a command names: `-f FILE` (a directory stands for
    its Pivotfile), else the Pivotfile in `cwd`.  It may not exist."""
    if file is not None:
        path = (cwd / file).resolve()
        return path / PIVOTFILE if path.is_dir() else path
    return cwd.resolve() / PIVOTFILE


def find_root(start: Path) -> Path:
    """The project root for a Pivotfile in `start`: the nearest ancestor holding
    `.pivot/` (not counting an included pipeline's own state directory), else
    the nearest holding `.git/`, else `start` itself."""
    start = start.resolve()
    chain = [start, *start.parents]
    for d in chain:
        if is_root_state(d):
            return d
    for d in chain:
        if (d / ".git").is_dir():
            return d
    return start


def is_root_state(directory: Path) -> bool:
    """True if `directory` holds a project root's `.pivot/` (one not marked as
    an included pipeline's own)."""
    return (directory / STATE_DIR).is_dir() and not (directory / STATE_DIR / PIPELINE_ONLY).exists()


def rel_dir(root: Path, directory: Path) -> str:
    """`directory` relative to `root` in POSIX form, "" for the root itself."""
    rel = directory.resolve().relative_to(root).as_posix()
    return "" if rel == "." else rel


def join(base: str, path: str) -> str:
    """Normalise `path` (written relative to root-relative `base`) to root-relative.

    Absolute paths stay absolute; a result of "." becomes "".
    """
    # As normpath(join(base or ".", path)), spelled out: compiling calls this for every dep and output.
    joined = posixpath.normpath(path if path.startswith("/") or not base else f"{base}/{path}")
    if joined.startswith("//"):
        joined = joined[1:]
    return "" if joined == "." else joined


def escapes(path: str) -> bool:
    """True if the root-relative `path` points outside the root."""
    return posixpath.isabs(path) or path == ".." or path.startswith("../")


def escapes_via_symlink(root: Path, path: str) -> bool:
    """True if an existing directory on the way to `path` is a symlink leading
    outside the root (the output would be written outside the project)."""
    real_root = _realpath(str(root))
    full = os.path.join(root, path)
    parent, name = os.path.split(full)
    # Directories resolved once per compile (outputs share a few), the last part per path.
    real = os.path.realpath(full) if os.path.islink(full) else os.path.join(_realpath(parent), name)
    return not (real == real_root or real.startswith(real_root + os.sep))


@functools.lru_cache(maxsize=4096)
def _realpath(path: str) -> str:
    return os.path.realpath(path)


def forget_resolved() -> None:
    """Drop remembered directory resolutions (before compiling again in this process)."""
    _realpath.cache_clear()


def make_relative(root: Path, path: str) -> str:
    """An absolute `path` inside `root` becomes root-relative; others are unchanged."""
    if not posixpath.isabs(path):
        return path
    try:
        rel = Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
    return "" if rel == "." else rel
