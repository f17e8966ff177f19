"""A rerun stage's old version lets go of its memory: hardlink mode's old
output, and the default mode's copy of it in the cache (`let_go`, below).

make and ninja rerun a stage into its old output: the shell truncates the
file, which frees its pages, and the stage's writes reuse that memory at
once.  In hardlink mode the old output is the cache's object (the workspace
file is a link to it), so removing it from the workspace frees nothing: the
old version stays in the page cache beside the new one, which takes memory
the page cache did not have.  On a VM whose host takes back the memory its
guest leaves free (free page reporting, as on this project's machines), new
memory costs several times what memory freed a moment before does
(docs/performance.md, "This machine's memory").

So, on such a VM (`reports_free_pages`), for hardlink mode's objects of at
least MIN_BYTES:

- `release`, called as a rerun stage's old output goes (stagework's
  `prepare_outputs`), drops the object's pages (`posix_fadvise(DONTNEED)`;
  the file stays in the cache, on disk) if all of them are clean, and the
  stage's output takes that memory.  A dirty page cannot go before it is
  written: hence `write_back`.  Whether pages are dirty is asked of
  `cachestat` (Linux 6.5+; without it nothing is done).
- `write_back`, called as a build begins with the outputs of the stages it
  will decide, starts writing out the objects that are not yet written
  (`sync_file_range`, which waits for nothing): those a build made seconds
  before.  The kernel would write them within half a minute anyway (the
  objects stay); begun now, they are on disk by the time their stages
  rerun, a build's large stages being its last, and `release` drops them.
  (One the thread had not got to when its stage started, its path replaced
  by then, has its writeback begun by that stage's `release`.)  Begun at a build's end
  instead, for the objects it made, a 1.1 GB writeback made hardlink's
  clean build 1.35x as long: its last fsyncs waited behind it.
- Once the last is begun, a second thread ("pages flush") has the device
  make them durable (an fdatasync of the last: its writeback waited for,
  then the device flushed).  Any fsync flushes the whole device, waiting
  for everything sent to it before, so the build's own last one (its
  lockfile's, or the journal's) waited for these writebacks, which on this
  project's machines take a few hundred milliseconds; begun early, the
  flush runs beside the stages (docs/performance.md, the thirty-third
  session).  A thread of its own: releases do not wait behind it.

The default mode keeps a copy of each version too, so a rerun's new copy
is memory the page cache did not have.  `let_go`, told (by the local
executor, as `prepare_outputs` removes a rerun stage's old output of at
least MIN_BYTES) of that version's copy in the cache, drops its pages if
they are all clean, and the new copy takes that memory; one not yet
written back is left as it is (its build sends it, cache/copying.py:
begun here, mid-build, the build's last fsync would wait for it).

Elsewhere nothing is done: freeing pages costs CPU (about 0.1 ms a MB),
which pays only where new memory costs more than reused memory; the kernel
reclaims clean page cache itself when it needs the memory.  (On this
project's machines, hardlink builds of 55 stages a while apart took 0.65x
the time while the host had taken its free memory back, and 1.11x while it
had not; right after one another, in the order the benchmarks run them,
0.85x, the memory five builds took 201 MB against 1,092: docs/performance.md.)

All are hints: nothing a build reads or records depends on them, and a
failure is ignored.  They run on a thread of their own ("pages"; a release
before the writebacks waiting), so the build loop waits neither for the questions
nor for the freeing; `settle` waits for what was handed over (the
executor's close), not for the flush.  The threads are started when first
needed and live as long as the process (a build server keeps them between
builds: cli/server.py).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque

from pivotbuild.cache.copying import flush_through

TYPE_CHECKING = False  # (not typing's: a build imports no typing)
if TYPE_CHECKING:
    from typing import Any

MIN_BYTES = 1 << 20  # smaller files: a few pages, not worth a system call and a handoff
THREAD = "pages"  # the thread's name
FLUSHER = "pages flush"  # the name of the thread that has the device flush what the writebacks sent it
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
_CACHESTAT = 451  # the system call's number (one for every architecture since Linux 5.1's y2038 calls)
_HINTS = hasattr(os, "posix_fadvise")  # (Linux and most Unixes; not macOS)


class _Pages:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        # (descriptor of an old version, whether its writeback begins if it is dirty): for `_Calls.release`
        self._released: deque[tuple[int, bool]] = deque()
        self._written: deque[str] = deque()  # paths of old outputs, for `_Calls.write_back`
        self._busy = False
        self._thread: threading.Thread | None = None
        self._calls: _Calls | bool | None = False  # (False: not looked for yet; None: none here)
        self._flushed = ""  # the object the flusher is to make durable with all before it ("": none)
        self._flusher: threading.Thread | None = None
        self.worth: bool | None = None  # whether new memory costs more here (`reports_free_pages`), asked once

    def hand(self, fd: int, *, write: bool = True) -> None:
        with self._lock:
            self._released.append((fd, write))
            self._wake()

    def write(self, paths: list[str]) -> None:
        with self._lock:
            self._written.extend(paths)
            self._wake()

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=THREAD, daemon=True)
            self._thread.start()
        self._lock.notify_all()

    def settle(self) -> None:
        if self._thread is None:
            return
        with self._lock:
            while self._released or self._written or self._busy:
                self._lock.wait()

    def _run(self) -> None:
        released, written = self._released, self._written
        begun = ""  # the last object whose writeback this thread began, not yet flushed
        while True:
            with self._lock:
                self._busy = False
                self._lock.notify_all()
                while not released and not written:
                    self._lock.wait()
                # A release first: its stage has started, and writes now.  (The
                # writebacks asked for as the build began wait: one whose
                # stage started first, its path replaced by then, was begun
                # by that release, `_Calls.release`.)
                fd, write = released.popleft() if released else (-1, False)
                path = written.popleft() if fd < 0 else ""
                last = fd < 0 and not written  # (the last writeback asked for: then the flush)
                self._busy = True
            try:
                calls = self._calls
                if calls is False:
                    calls = self._calls = _Calls.find()
                if calls is not None:
                    assert isinstance(calls, _Calls)
                    if fd >= 0:
                        calls.release(fd, write=write)
                    elif calls.write_back(path):
                        begun = path
            except Exception:  # (a hint: a file gone meanwhile, a file system without it;
                pass  # and this thread must not end, `settle` waits for it)
            finally:
                if fd >= 0:
                    os.close(fd)
            if last and begun:
                self._flush(begun)
                begun = ""

    def _flush(self, path: str) -> None:
        """Have the flusher make the writebacks begun durable, `path` the last:
        see `write_back`.  (A thread of its own: a flush can take a fifth of
        a second, which releases must not wait behind.)"""
        with self._lock:
            self._flushed = path
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flushing, name=FLUSHER, daemon=True)
                self._flusher.start()
            self._lock.notify_all()

    def _flushing(self) -> None:
        while True:
            with self._lock:
                while not self._flushed:
                    self._lock.wait()
                path, self._flushed = self._flushed, ""
            flush_through(path)


_BALLOON = 5  # the virtio device id of a memory balloon
_REPORTING = 5  # VIRTIO_BALLOON_F_REPORTING: its bit in the device's `features`


def reports_free_pages(devices: str = "/sys/bus/virtio/devices") -> bool:
    """Whether this machine is a VM whose balloon reports free pages to its
    host (which then takes them back, so that memory never used, or left
    free a while, costs a fault in the host at its first touch)."""
    return free_page_reporting(devices) is True


def free_page_reporting(devices: str = "/sys/bus/virtio/devices") -> bool | None:
    """Whether a virtio balloon here reports free pages to its host (None:
    no balloon found; benchmarks/memtemp.py says which).  sysfs gives a
    virtio device's features as 0s and 1s, bit 0 first."""
    try:
        names = os.listdir(devices)
    except OSError:
        return None
    found = None
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
        found = False
    return found


class _Calls:
    """The system calls ctypes reaches (it lets go of the GIL while each
    runs): `cachestat` (Linux 6.5+) and `sync_file_range`."""

    def __init__(self, syscall: Any, sync_file_range: Any, make_range: Any, make_stat: Any, byref: Any) -> None:
        self._syscall, self._sync, self._byref = syscall, sync_file_range, byref
        self._whole = make_range(0, 0)  # (a length of 0: to the end of the file)
        self._stat = make_stat

    @classmethod
    def find(cls) -> _Calls | None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            syscall, sync = libc.syscall, libc.sync_file_range
        except (ImportError, OSError, AttributeError):
            return None

        class Range(ctypes.Structure):
            _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

        class Stat(ctypes.Structure):
            _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "writeback", "evicted", "recent")]

        syscall.restype = ctypes.c_long
        syscall.argtypes = (ctypes.c_long, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint)
        sync.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        calls = cls(syscall, sync, Range, Stat, ctypes.byref)
        probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if calls._dirty(probe) is None and ctypes.get_errno() == errno.ENOSYS:
                return None  # (a kernel before 6.5: whether pages are dirty cannot be told)
        finally:
            os.close(probe)
        return calls

    def _dirty(self, fd: int) -> bool | None:
        """Whether the file open as `fd` has pages not yet written back (None: not told)."""
        found = self._stat()
        if self._syscall(_CACHESTAT, fd, self._byref(self._whole), self._byref(found), 0) != 0:
            return None
        return bool(found.dirty or found.writeback)

    def release(self, fd: int, *, write: bool = True) -> None:
        """Drop the pages of the file open as `fd`, if every one is clean;
        else, with `write`, begin its writeback, if the build's
        (`write_back`) did not get to it before its stage started (its path
        was gone by then)."""
        dirty = self._dirty(fd)
        if dirty is False:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        elif dirty and write:
            self._sync(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def write_back(self, path: str) -> bool:
        """Start writing `path` out, if it is hardlink mode's object of at
        least MIN_BYTES (see `write_back`); whether it was."""
        st = os.lstat(path)
        if not _object(st):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._sync(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)
        return True


def _object(st: os.stat_result) -> bool:
    """Whether this lstat is of hardlink mode's object of at least MIN_BYTES:
    a regular file with one link besides the cache's (a file linked more
    often is another output's too, which may still be read)."""
    return st.st_nlink == 2 and st.st_size >= MIN_BYTES and stat.S_ISREG(st.st_mode)


def wanted() -> bool:
    """Whether this machine's new memory costs more than reused memory (a
    balloon that reports free pages: see the module), asked once."""
    worth = _PAGES.worth
    if worth is None:
        worth = _PAGES.worth = _HINTS and reports_free_pages()
    return worth


_PAGES = _Pages()


def release(path: str, st: os.stat_result) -> None:
    """`path` (`st`: its lstat), about to be removed for its stage's rerun:
    if it is hardlink mode's object of at least MIN_BYTES, its pages are
    dropped once it is removed, if they are all clean (on the thread; the
    file is opened here, before the removal)."""
    if _object(st) and wanted():
        _hand(path, write=True)


def let_go(path: str) -> None:
    """The default mode's copy of a version a rerun stage's output replaces
    (the cache's object at `path`, at least MIN_BYTES), where `wanted`: its
    pages dropped if they are all clean (on the thread), so that the new
    version's copy, which the cache keeps beside it, takes that memory
    rather than memory the host took back.  A copy not yet written back is
    left as it is (the build that made it sends it: cache/copying.py)."""
    if wanted():
        _hand(path, write=False)


def _hand(path: str, *, write: bool) -> None:
    """The file at `path`, opened here (before its name may go), for the
    thread's `_Calls.release`; a file gone already is let be."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    _PAGES.hand(fd, write=write)


def write_back(paths: list[str]) -> None:
    """As a hardlink mode build begins, where `wanted`: the outputs of the
    stages it will decide, whose objects (at least MIN_BYTES) are written
    back now if they are not yet (on the thread), so that by the time their
    stages rerun their pages are clean and `release` can drop them."""
    if paths:
        _PAGES.write(paths)


def settle() -> None:
    """Wait until everything handed over has been seen to."""
    _PAGES.settle()
