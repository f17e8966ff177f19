"""A directory remote (a local path or a mounted share) with the cache's layout:
`objects/ab/cdef...` and `runs/<ab>/<stage>-<inputs>`.

Every file is written under a temporary name and renamed into place, so an
interrupted push never leaves a truncated object, and a re-run completes it.
The remote's own directory is never created: if it vanishes (a share
unmounted mid-push), writing fails instead of filling the mount point.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class DirectoryRemote:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def exists(self, rel: str) -> bool:
        return (self.dir / rel).is_file()

    def size(self, rel: str) -> int | None:
        try:
            st = os.stat(self.dir / rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def list_dir(self, rel: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.dir / rel).iterdir() if not p.name.startswith(".tmp-"))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def put(self, src: Path, rel: str) -> None:
        if not self.dir.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the remote directory is gone", str(self.dir))
        _copy_atomically(src, self.dir / rel)

    def write(self, rel: str, data: bytes) -> None:
        if not self.dir.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the remote directory is gone", str(self.dir))
        _write_atomically(self.dir / rel, lambda out: out.write(data))

    def get(self, rel: str, dest: Path) -> None:
        _copy_atomically(self.dir / rel, dest)

    def read(self, rel: str) -> bytes:
        return (self.dir / rel).read_bytes()

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / rel).unlink()


def _copy_atomically(src: Path, dest: Path) -> None:
    with open(src, "rb") as inp:
        _write_atomically(dest, lambda out: shutil.copyfileobj(inp, out, 1 << 20))


def _write_atomically(dest: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Create `dest` whole or not at all: `fill` writes a temporary file
    beside it, which is flushed to disk, made read-only and renamed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
