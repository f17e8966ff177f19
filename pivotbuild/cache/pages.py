"""Hardlink mode: a rerun stage's old output lets go of its memory.

make and ninja rerun a stage into its old output: the shell truncates the
file, which frees its pages, and the stage's writes reuse that memory at
once.  In hardlink mode the old output is the cache's object (the workspace
file is a link to it), so removing it from the workspace frees nothing: the
old version stays in the page cache beside the new one, which takes memory
the page cache did not have.  On a VM whose host takes back the memory its
guest leaves free (free page reporting, as on this project's machines), new
memory costs several times what memory freed a moment before does
(docs/performance.md, "This machine's memory").

So, on such a VM (`reports_free_pages`), `release`, called as a rerun
stage's old output goes (stagework's `prepare_outputs`), drops that
object's pages (`posix_fadvise(DONTNEED)`; the file stays in the cache, on
disk) when it is at least MIN_BYTES and all its pages are clean, as they
are once the kernel has written it back (half a minute after its build, at
most), and the stage's output takes that memory.  A file with dirty pages
is left alone: DONTNEED would start writing it out, and the build's own
fsyncs of its state files would wait behind that write (a 1.1 GB writeback
begun at a build's end made hardlink's clean build 1.35x as long).
Whether pages are dirty is asked of `cachestat` (Linux 6.5+); without it
nothing is dropped.  Elsewhere nothing is dropped either: freeing the pages
costs CPU (about 0.1 ms a MB) that only pays where new memory costs more
than reused memory; the kernel reclaims clean page cache by itself when
it needs the memory.  (On this project's machines, hardlink builds of 55
stages a while apart: 0.65x the time while the host had taken the free
memory back, 1.11x while it had not: docs/performance.md.)

It is a hint: nothing a build reads or records depends on it, and a
failure is ignored.  It runs on a thread of its own ("pages"), so the build
loop waits neither for the question nor for the freeing; `settle` waits
for what was handed over (the executor's close).  The thread is started at
the first file and lives as long as the process (a build server keeps it
between builds: cli/server.py).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque

MIN_BYTES = 1 << 20  # smaller files: a few pages, not worth a system call and a handoff
THREAD = "pages"  # the thread's name
_CACHESTAT = 451  # the system call's number (one for every architecture since Linux 5.1's y2038 calls)
_HINTS = hasattr(os, "posix_fadvise")  # (Linux and most Unixes; not macOS)


class _Pages:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: deque[int] = deque()
        self._busy = False
        self._thread: threading.Thread | None = None
        self.dirty: object = None  # (fd) -> bool | None, found at the first file (False: no cachestat here)
        self.worth: bool | None = None  # whether new memory costs more here (`reports_free_pages`), asked once

    def hand(self, fd: int) -> None:
        with self._lock:
            self._queue.append(fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=THREAD, daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def settle(self) -> None:
        if self._thread is None:
            return
        with self._lock:
            while self._queue or self._busy:
                self._lock.wait()

    def _run(self) -> None:
        queue = self._queue
        while True:
            with self._lock:
                self._busy = False
                self._lock.notify_all()
                while not queue:
                    self._lock.wait()
                fd = queue.popleft()
                self._busy = True
            try:
                self._release(fd)
            except OSError:
                pass  # (a hint: a file system that does not have it)
            finally:
                os.close(fd)

    def _release(self, fd: int) -> None:
        dirty = self.dirty
        if dirty is None:
            dirty = self.dirty = _find_cachestat()
        if dirty is not False and dirty(fd) is False:  # type: ignore[operator]
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


_BALLOON = 5  # the virtio device id of a memory balloon
_REPORTING = 5  # VIRTIO_BALLOON_F_REPORTING: its bit in the device's `features`


def reports_free_pages(devices: str = "/sys/bus/virtio/devices") -> bool:
    """Whether this machine is a VM whose balloon reports free pages to its
    host (which then takes them back, so that memory never used, or left
    free a while, costs a fault in the host at its first touch).  sysfs gives
    a virtio device's features as 0s and 1s, bit 0 first."""
    try:
        names = os.listdir(devices)
    except OSError:
        return False
    for name in names:
        try:
            with open(f"{devices}/{name}/device") as f:
                if int(f.read(), 16) != _BALLOON:
                    continue
            with open(f"{devices}/{name}/features") as f:
                features = f.read().strip()
        except (OSError, ValueError):
            continue
        if len(features) > _REPORTING and features[_REPORTING] == "1":
            return True
    return False


def _find_cachestat() -> object:
    """A function telling whether the file open as `fd` has pages not yet
    written back (None: it cannot tell), by `cachestat` (ctypes lets go of
    the GIL while it runs); False where there is no `cachestat`."""
    try:
        import ctypes
    except ImportError:
        return False

    class Range(ctypes.Structure):
        _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

    class Stat(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "writeback", "evicted", "recent")]

    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return False
    syscall.restype = ctypes.c_long
    whole = Range(0, 0)  # (a length of 0: to the end of the file)

    def dirty(fd: int) -> bool | None:
        found = Stat()
        if syscall(ctypes.c_long(_CACHESTAT), ctypes.c_uint(fd), ctypes.byref(whole), ctypes.byref(found), 0) != 0:
            if ctypes.get_errno() == errno.ENOSYS:  # (a kernel before 6.5: never again)
                _PAGES.dirty = False
            return None
        return bool(found.dirty or found.writeback)

    return dirty


_PAGES = _Pages()


def release(path: str, st: os.stat_result) -> None:
    """`path` (`st`: its lstat), about to be removed for its stage's rerun:
    if it is hardlink mode's object of at least MIN_BYTES (a regular file
    with one link besides the cache's: a file linked more often is another
    output's too, which may still be read), its pages are dropped once it
    is removed, if they are all clean (on the thread; the file is opened
    here, before the removal)."""
    if st.st_nlink == 2 and st.st_size >= MIN_BYTES and _HINTS and (st.st_mode & 0o170000) == 0o100000:
        if _PAGES.worth is None:
            _PAGES.worth = reports_free_pages()
        if not _PAGES.worth:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        _PAGES.hand(fd)


def settle() -> None:
    """Wait until every file handed over has been seen to."""
    _PAGES.settle()
