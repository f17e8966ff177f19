"""One build at a time per project: an advisory lock on `<root>/.pivot/build.lock`.

The kernel drops the lock when its holder dies, however it dies, so a killed
build never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from pivotbuild.errors import PivotError

LOCK_NAME = "build.lock"


class Busy(PivotError):
    exit_code = 1


class ProjectLock:
    """`with ProjectLock(state_dir, wait=True, on_wait=print):` holds the lock.

    With `create=False` the lock is only taken where its file exists (else
    FileNotFoundError): for what a build server does for a build once its
    client has the answer, which must not make the project's `.pivot/` (and
    the directories above it) again if the project was removed meanwhile,
    as a script or a test removes its project right after its last build."""

    def __init__(self, state_dir: Path, wait: bool, on_wait: Callable[[str], None], *, create: bool = True) -> None:
        self.path = state_dir / LOCK_NAME
        self.wait = wait
        self.on_wait = on_wait
        self.create = create
        self.fd: int | None = None

    def __enter__(self) -> ProjectLock:
        if self.create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT if self.create else os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            if not self.wait:
                os.close(fd)
                raise Busy(
                    f"another pivotbuild{holder} is building this project; wait for it, or run without --no-wait"
                ) from None
            self.on_wait(f"waiting for another pivotbuild{holder} to finish building this project...")
            started = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.on_wait(f"the other build finished after {time.monotonic() - started:.1f}s; going on")
        mine = f"{os.getpid()}\n".encode()
        if os.pread(fd, 32, 0) != mine:  # (a build server's builds leave it as it is)
            os.ftruncate(fd, 0)
            os.pwrite(fd, mine, 0)
        self.fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()  # only shown, and rewritten by each build
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None
