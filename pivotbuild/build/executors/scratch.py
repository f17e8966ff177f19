"""The scratch directories of stages on a Dask worker (dasktask.py).

Each task works in a directory of its own under the worker's temporary
directory, named for the worker's process: `pivot-stage-PID-PLACE-RANDOM`,
PLACE naming the machine and its process-id namespace (a temporary
directory may be shared by machines, or by containers each numbering its
own processes).  It is removed when the task ends, whatever the stage left
in it (a read-only directory too, as a stage protecting its outputs makes).
A worker that is killed (SIGKILL, the OOM killer) can remove nothing: the
first task of the next worker process in the same place sweeps the
directories of that place's processes that no longer run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pivotbuild.build.sharedpool import alive
from pivotbuild.state.hashing import hash_bytes

PREFIX = "pivot-stage-"

_swept: set[str] = set()  # the temporary directories this process has swept


def make() -> Path:
    """A new scratch directory (the first of this process sweeps the dead's first)."""
    where = tempfile.gettempdir()
    if where not in _swept:
        _swept.add(where)
        sweep(Path(where))
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{_place()}-"))


def remove(path: Path) -> None:
    """Remove `path` and everything in it, read-only directories included
    (best effort: what cannot be removed is left to the next sweep)."""
    shutil.rmtree(path, onerror=_writable_and_again)


def _place() -> str:
    """This machine and process-id namespace, as a short name: only a
    process of the same place can tell whether a pid still runs."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return hash_bytes(f"{os.uname().nodename}:{namespace}".encode())[:8]


def sweep(directory: Path) -> None:
    """Remove the scratch directories in `directory` of our user's worker
    processes, in this place, that no longer run."""
    uid = os.getuid()
    here = _place()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        pid, _, rest = entry.name[len(PREFIX) :].partition("-")
        if not rest.startswith(here + "-"):
            continue  # (another machine's or container's, or of an older pivotbuild)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if pid.isdigit() and stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not alive(int(pid)):
            remove(Path(entry.path))


def _writable_and_again(func: Callable[..., Any], path: str, _exc: Any) -> None:
    """rmtree could not remove `path`: make its directory (and it, if a
    directory) writable and searchable, and try once more."""
    with contextlib.suppress(OSError):
        parent = os.path.dirname(path)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        if func is not os.unlink and os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
            shutil.rmtree(path, onerror=_give_up)
        else:
            func(path)


def _give_up(_func: Callable[..., Any], _path: str, _exc: Any) -> None:
    """What still cannot be removed stays, for the next sweep."""
