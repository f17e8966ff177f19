"""How a file looked, by `stat`: the cheap check behind the stat cache, the
compiled plan and the up-to-date seal.

A stamp is (size, mtime_ns, inode, ctime_ns).  A stamp taken within the
filesystem's timestamp granularity of the file's last change is "racy": the
file could change again in the same clock tick without its stamp changing
(the case git calls racy-git), so a racy stamp is never trusted on its own.

Linux 6.13 and later narrow that gap on the file systems that opted in
("multigrain timestamps": ext4, xfs, btrfs, tmpfs): once a file's stamp has
been read by `stat`, its next change is stamped from the fine clock, so it
always shows (`changes_show`).  That is not enough for a plain read: a
`write` already under way when the `stat` looks has stamped the file at its
start and may still be landing while the read overtakes it, and nothing
stamps the file again.  Hardlink mode's link waits for such a write if it
is buffered or synchronous (the kernel's link takes the inode's lock, as
`write` holds it), so there a stamp taken before the link proves the hash
read after it (cache/store.py).  On ext4 and tmpfs, `lseek(SEEK_DATA)` takes
that lock too (ext4_llseek shared, shmem_file_llseek exclusive), so a read
that begins with one proves the stamp taken before it (`hash_proving`);
xfs's does not take it, and btrfs's is not verified, so those keep the
window.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from operator import attrgetter

from pivotbuild.state.hashing import hash_bytes, hash_fd, hash_file

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

Stamp = tuple[int, int, int, int]

# Timestamps with a fractional part come from a nanosecond clock that ticks at
# most every few milliseconds; whole-second stamps suggest a 1-2 s granularity.
# 50 ms covers a network file system's clock; a local one is narrower (below).
FINE_WINDOW_NS = 50_000_000
COARSE_WINDOW_NS = 2_000_000_000

# Linux file systems that stamp files with this kernel's coarse clock.
_LOCAL = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "zfs", "overlay", "ramfs", "bcachefs"})
# Those that stamp a change after a `stat` from the fine clock, on Linux from
# 6.13 on (FS_MGTIME: Documentation/filesystems/multigrain-ts.rst).
_MULTIGRAIN = frozenset({"ext4", "xfs", "btrfs", "tmpfs"})
_MULTIGRAIN_SINCE = (6, 13)
# Those of them whose `lseek(SEEK_DATA)` waits for a buffered or synchronous
# `write` under way (it takes the inode's lock, which `write` holds from
# stamping the file to its last byte): checked on Linux 6.18 by a test
# (tests/test_statcache.py) and in the kernel's source.
_SEEK_WAITS = frozenset({"ext4", "tmpfs"})
_CLOCK_REALTIME_COARSE = 5  # <linux/time.h>; the time module names it from Python 3.13
_windows: list[dict[int, int]] = []  # once read: st_dev -> window, for the local file systems mounted
_multigrain: list[frozenset[int]] = []  # once read: the st_dev of each file system mounted with them
_proving: list[frozenset[int]] = []  # once read: those of them in _SEEK_WAITS


# A stat result's stamp (in C: the seal maps it over many stat results at once).
stamp: Callable[[os.stat_result], Stamp] = attrgetter("st_size", "st_mtime_ns", "st_ino", "st_ctime_ns")

# What `stamp_now` gives for a path that cannot be statted (not a missing one):
# no file's stamp, so it never equals one that was recorded.
UNREADABLE: Stamp = (-1, -1, -1, -1)


def stamp_now(path: str | bytes) -> Stamp | None:
    """`path`'s stamp now; None if there is nothing there; UNREADABLE if it cannot be statted."""
    try:
        return stamp(os.stat(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return UNREADABLE


def racy_wait_ns(st: os.stat_result, now_ns: int) -> int:
    """How long after `now_ns` the stamp `st` stops being racy, when that is
    worth waiting for: a fine clock's window (at most FINE_WINDOW_NS); else 0
    (a coarse clock's is too long to wait, and what is past needs none)."""
    if st.st_mtime_ns % 1_000_000_000 == 0:
        return 0
    wait = max(st.st_mtime_ns, st.st_ctime_ns) + window_ns(st) - now_ns
    return wait if 0 < wait <= FINE_WINDOW_NS else 0


def window_ns(st: os.stat_result) -> int:
    """How long after its last change a file's stamp stays racy.

    On a local Linux file system a file is stamped from the kernel's coarse
    clock (`CLOCK_REALTIME_COARSE`, which ticks every 1-10 ms), so once
    `time.time_ns()` is two of its ticks past a stamp, any later change gets a
    later stamp; three ticks are used.  Elsewhere (a network file system, a
    device not found in /proc/self/mountinfo, no /proc) 50 ms as before."""
    if st.st_mtime_ns % 1_000_000_000 == 0:
        return COARSE_WINDOW_NS
    if not _windows:
        _read_mounts()
    return _windows[0].get(st.st_dev, FINE_WINDOW_NS)


def changes_show(st: os.stat_result) -> bool:
    """Whether `st`'s file system stamps a file's first change after a `stat`
    of it from the fine clock (Linux 6.13's multigrain timestamps), so that a
    change that begins after the `stat` always shows in the stamp (one under
    way when it looked need not: see the module)."""
    if st.st_mtime_ns % 1_000_000_000 == 0:
        return False  # whole seconds: not a fine clock
    if not _multigrain:
        _read_mounts()
    return st.st_dev in _multigrain[0]


def read_proves(st: os.stat_result) -> bool:
    """Whether a read of `st`'s file that begins by waiting for a `write`
    under way (`hash_proving`) proves `st`, taken before it: a change that
    began before the `stat` has landed when the read begins, and one that
    begins after it changes the stamp (`changes_show`), so the file holds
    what was read for as long as its stamp is `st`.  (Not waited for: a
    direct-I/O write, once submitted if asynchronous, and on ext4 an
    overwrite even when synchronous, as it holds the lock only shared; and a
    write through a shared mapping.  Neither was by the racy window beyond
    its few ms.)"""
    if st.st_mtime_ns % 1_000_000_000 == 0:
        return False
    if not _proving:
        _read_mounts()
    return st.st_dev in _proving[0]


def hash_proving(path: str, st: os.stat_result) -> tuple[str, bool]:
    """The hash of the file at `path`, whose stat `st` was taken before this
    call, and whether that proves `st` at once (`read_proves`): where it
    can, the read begins with an `lseek(SEEK_DATA)`, which waits for a
    `write` under way (however long it takes: one throttled by a slow disk
    holds the read up, and a Ctrl-C with it).  Raises OSError as
    `hash_file` does."""
    digest, proven, _ = read_proving(path, st)
    return digest, proven


def read_proving(path: str, st: os.stat_result, keep: int = 0) -> tuple[str, bool, bytes | None]:
    """`hash_proving`, and the bytes it hashed if that proved `st` and they
    are at most `keep` (else None): what the file held for as long as its
    stamp is `st`, for a caller that stores it to need no second read."""
    if not read_proves(st):
        return hash_file(path), False, None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            if os.lseek(fd, 0, os.SEEK_DATA):  # (a hole first: the read begins at 0 all the same)
                os.lseek(fd, 0, os.SEEK_SET)
        except OSError as exc:  # (a failed seek leaves the position at 0)
            if exc.errno != errno.ENXIO:  # (no data: an empty file, after the wait all the same)
                return hash_fd(fd, size=st.st_size)[0], False, None
        digest, data = hash_fd(fd, size=st.st_size)
        return digest, True, data if data is not None and len(data) <= keep else None
    finally:
        os.close(fd)


def forget_mounts() -> None:
    """Read the mount table again when next needed.  A process that lives on
    (the build server, `-w`, the Python API) calls this before each build: a
    device number can come back as another file system's once its own is
    unmounted, and a wrong answer here trusts what it should not."""
    _windows.clear()
    _multigrain.clear()
    _proving.clear()


def _read_mounts() -> None:
    """Fill `_windows`, `_multigrain` and `_proving` from
    /proc/self/mountinfo (empty where that cannot be read, or on another
    system than Linux)."""
    windows: dict[int, int] = {}
    multigrain: frozenset[int] = frozenset()
    proving: frozenset[int] = frozenset()
    if sys.platform == "linux":
        try:
            res_ns = int(time.clock_getres(_CLOCK_REALTIME_COARSE) * 1e9)
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except (OSError, ValueError):
            lines, res_ns = [], 0
        if 0 < res_ns <= 10_000_000:
            windows = local_devices(lines, max(3 * res_ns, 1_000_000))
        if kernel_at_least(os.uname().release, _MULTIGRAIN_SINCE):
            multigrain = frozenset(local_devices(lines, 0, _MULTIGRAIN))
            proving = frozenset(local_devices(lines, 0, _MULTIGRAIN & _SEEK_WAITS))
    if not _windows:
        _windows.append(windows)
    if not _multigrain:
        _multigrain.append(multigrain)
    if not _proving:
        _proving.append(proving)


def kernel_at_least(release: str, version: tuple[int, int]) -> bool:
    """Whether a Linux release string ("6.13.2-arch1-1") is `version` or later."""
    numbers = release.split("-", 1)[0].split(".")
    try:
        return (int(numbers[0]), int(numbers[1])) >= version
    except (IndexError, ValueError):
        return False


def local_devices(mountinfo: list[str], window: int, types: frozenset[str] = _LOCAL) -> dict[int, int]:
    """st_dev -> `window` for each file system of `types` (local ones) in
    /proc/self/mountinfo's lines."""
    found = {}
    for line in mountinfo:
        # "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw"
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 3 or rest.split(" ", 1)[0] not in types:
            continue
        major, _, minor = parts[2].partition(":")
        try:
            found[os.makedev(int(major), int(minor))] = window
        except ValueError:
            continue
    return found


def is_racy(st: os.stat_result, now_ns: int) -> bool:
    age = now_ns - max(st.st_mtime_ns, st.st_ctime_ns)
    if age >= FINE_WINDOW_NS and st.st_mtime_ns % 1_000_000_000:
        return False  # past every fine window: /proc need not be read
    return age < window_ns(st)


class Source:
    """A file something was computed from (a Pivotfile, a params file, or one
    that was looked for and is absent): how it looked when it was read.
    (A plain class: the no-op fast path does not import dataclasses.)"""

    __slots__ = ("hash", "path", "stamp", "trusted")

    def __init__(self, path: str, stamp: Stamp | None, trusted: bool, hash: str) -> None:
        self.path = path  # absolute
        self.stamp = stamp  # None: it did not exist
        self.trusted = trusted  # the stamp alone proves the file unchanged (it was not racy)
        self.hash = hash  # XXH3-128 of the bytes read; "" when absent

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Source) and (self.path, self.stamp, self.trusted, self.hash) == (
            other.path,
            other.stamp,
            other.trusted,
            other.hash,
        )

    def __hash__(self) -> int:
        return hash((self.path, self.stamp, self.trusted, self.hash))

    def __repr__(self) -> str:
        return f"Source({self.path!r}, {self.stamp!r}, {self.trusted!r}, {self.hash!r})"

    def unchanged(self) -> bool:
        """Does the file still hold what was read?  By stamp, else by hash."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.stamp is None
        except OSError:
            return False
        if self.stamp is None:
            return False
        if self.trusted and stamp(st) == self.stamp:
            return True
        try:
            return hash_file(self.path) == self.hash
        except OSError:
            return False


def read_source(path: Path) -> tuple[bytes | None, Source]:
    """The bytes of `path` (None if it does not exist) and its Source record.
    The stamp is taken before reading, so a change made while reading shows
    up as a stamp that no longer matches.  Other OSErrors propagate."""
    now = time.time_ns()
    try:
        st = os.stat(path)
        data = path.read_bytes()
    except FileNotFoundError:
        return None, Source(str(path), None, True, "")
    return data, Source(str(path), stamp(st), not is_racy(st, now), hash_bytes(data))
