"""Project roots and path normalisation.

(pathlib only where a Path is returned: importing it costs a no-op some
10 ms, `re` and `urllib` with it, and the no-op fast path works in strings.)
"""

from __future__ import annotations

import os
import posixpath
import stat

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from pathlib import Path

STATE_DIR = ".pivot"
# A copy of each pipeline's last lockfile, kept by the cache (see state/store.py):
# what the run cache restores from when a lockfile is damaged or lost.
LOCK_COPIES = f"{STATE_DIR}/cache/runs/lockfiles"
# The agent server's Unix socket (`pivotbuild -w --serve`, docs/rpc.md), under the root.
AGENT_SOCKET = f"{STATE_DIR}/agent.sock"
PIVOTFILE = "Pivotfile"
LOCKFILE = "Pivotfile.lock"
# In the `.pivot/` of an included pipeline that is not the project root: the
# state directory is that pipeline's, and does not make its directory a root.
PIPELINE_ONLY = "pipeline-state"


def pivotfile_path(cwd: Path, file: str | Path | None) -> Path:
    """The main Pivotfile a command names: `-f FILE` (a directory stands for
    its Pivotfile), else the Pivotfile in `cwd`.  It may not exist."""
    from pathlib import Path

    return Path(main_file(os.fspath(cwd), None if file is None else os.fspath(file)))


def main_file(cwd: str, file: str | None) -> str:
    """`pivotfile_path`, in strings."""
    if file is not None:
        path = os.path.realpath(os.path.join(cwd, file))
        return os.path.join(path, PIVOTFILE) if os.path.isdir(path) else path
    return os.path.join(os.path.realpath(cwd), PIVOTFILE)


def find_root(start: Path) -> Path:
    """The project root for a Pivotfile in `start`: the nearest ancestor holding
    `.pivot/` (not counting an included pipeline's own state directory), else
    the nearest holding `.git/`, else `start` itself."""
    from pathlib import Path

    return Path(root_of(os.fspath(start)))


def root_of(start: str) -> str:
    """`find_root`, in strings."""
    start = os.path.realpath(start)
    chain = [start]
    while (up := os.path.dirname(chain[-1])) != chain[-1]:
        chain.append(up)
    for d in chain:
        if is_root_state(d):
            return d
    for d in chain:
        if os.path.isdir(os.path.join(d, ".git")):
            return d
    return start


def is_root_state(directory: str | Path) -> bool:
    """True if `directory` holds a project root's `.pivot/` (one not marked as
    an included pipeline's own)."""
    state = os.path.join(directory, STATE_DIR)
    return os.path.isdir(state) and not os.path.exists(os.path.join(state, PIPELINE_ONLY))


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
    return path[:1] == "/" or path == ".." or path[:3] == "../"  # (posixpath.isabs's test, without its calls)


_prefixes: dict[object, str] = {}  # a root -> itself with one `/` after: joined to a relative path by `+`


def joined(root: str | os.PathLike[str], path: str) -> str:
    """`os.path.join(root, path)`, the same string, without its calls (a
    decision makes one per dep, the seal one per file)."""
    if path[:1] == "/":
        return path
    prefix = _prefixes.get(root)
    if prefix is None:
        text = os.fspath(root)
        prefix = _prefixes[root] = text if text.endswith("/") else text + "/"
    return prefix + path


def escapes_via_symlink(root: Path, path: str) -> bool:
    """True if an existing directory on the way to `path` is a symlink leading
    outside the root (the output would be written outside the project)."""
    text = str(root)  # (a string: `joined` looks a Path up by equality, which compares its parts)
    real_root = _realpath(text)
    full = joined(text, path)
    try:
        link = stat.S_ISLNK(os.lstat(full).st_mode)
    except OSError:  # (most outputs of a first build: none there yet)
        link = False
    if link:
        real = os.path.realpath(full)
    else:  # directories resolved once per compile (outputs share a few), the last part per path
        cut = full.rfind("/")  # (os.path.split's answer for an absolute path without a trailing `/`, without its calls)
        parent = full[:cut] or "/"
        real = f"{_realpath(parent).rstrip('/')}/{full[cut + 1 :]}"
    return not (real == real_root or real.startswith(real_root + os.sep))


_resolved: dict[str, str] = {}  # (a dict, not functools.lru_cache: the no-op imports this module)


def _realpath(path: str) -> str:
    real = _resolved.get(path)
    if real is None:
        if len(_resolved) >= 4096:
            _resolved.clear()
        real = _resolved[path] = os.path.realpath(path)
    return real


def forget_resolved() -> None:
    """Drop remembered directory resolutions (before compiling again in this process)."""
    _resolved.clear()


def make_relative(root: Path, path: str) -> str:
    """An absolute `path` inside `root` becomes root-relative; others are unchanged."""
    if not posixpath.isabs(path):
        return path
    try:
        from pathlib import Path

        rel = Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
    return "" if rel == "." else rel
