"""Copying bytes into and out of the cache: a reflink where the filesystem
shares extents, else one pass that copies and hashes at once (written
through the page cache or direct, whichever costs less here: `Ways`), and
new read-only files written whole."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

import xxhash

from pivotbuild.state.hashing import CHUNK, hash_file

_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_HINTS = hasattr(os, "posix_fadvise")  # (not macOS)


def write_new(path: str, data: bytes, perms: int = 0o444) -> None:
    """Create `path` (it must not exist) holding `data`: read-only unless
    `perms` says otherwise (the umask applies)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, perms)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` at `fd`'s position (a write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def clone_and_hash(src_fd: int, dest_fd: int, dest: str) -> str | None:
    """Reflink `src_fd` into `dest_fd` and hash the clone; None if the
    filesystem cannot share extents."""
    return hash_file(dest) if reflink(src_fd, dest_fd) else None


def copy_and_hash(src_fd: int, dest_fd: int, dest: str) -> str:
    """Copy `src_fd` (from its start) into `dest_fd`, a new empty file, in
    one pass, hashing what is copied.

    The copy is written whichever way costs less on this machine now (`WAYS`):
    through the page cache, or with direct I/O where the filesystem allows it.
    Whole aligned chunks go direct; a short last chunk (and everything, where
    direct I/O is refused) goes through `dest_fd`: the caller `send`s the
    copy it keeps."""
    h = xxhash.xxh3_128()
    view = _buffer()
    os.lseek(src_fd, 0, os.SEEK_SET)
    direct = _open_direct(dest) if WAYS.direct(os.fstat(src_fd).st_size) else None
    offset = 0
    spent = [0.0, 0.0]  # seconds spent writing: buffered, direct
    sent = [0, 0]  # bytes written: buffered, direct
    try:
        while n := os.readv(src_fd, [view]):
            chunk = view[:n]
            h.update(chunk)
            if direct is not None and n % _ALIGN == 0:
                try:
                    t = perf_counter()
                    _write_all(direct, chunk, offset)
                    spent[1] += perf_counter() - t
                    sent[1] += n
                    offset += n
                    continue
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                os.close(direct)
                direct = None
            elif direct is not None:
                os.close(direct)  # unaligned from here on: finish buffered
                direct = None
            t = perf_counter()
            _write_all(dest_fd, chunk, offset)
            spent[0] += perf_counter() - t
            sent[0] += n
            offset += n
        WAYS.note(False, spent[0], sent[0])
        WAYS.note(True, spent[1], sent[1])
        return h.hexdigest()
    finally:
        if direct is not None:
            os.close(direct)


def send(fd: int) -> None:
    """Begin writing out what the file open as `fd` holds in the page cache
    (`posix_fadvise(DONTNEED)`, which waits for nothing): a copy into the
    cache that is kept, as it is made or, in a process that lives on after
    its build, once the build has answered (`Held`).

    Left to the kernel, as `cp` leaves its copy, a clean build's copies
    (1.2 GB in the big benchmark) would be written out by its background
    writeback during the builds after, whose fsyncs (each a device flush
    here) would wait for it: the big shape's incremental build took 0.80 s
    against 0.59 (docs/performance.md, the thirty-fourth session).  (ext4
    began it at the close until then, by accident: `auto_da_alloc` on a
    file truncated to nothing, even one already empty.)  A copy not kept
    (the cache had the object) is not sent: removed before it is written,
    it costs the disk nothing."""
    if _HINTS:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def send_path(path: str) -> None:
    """`send` the file at `path`."""
    _on_file(path, send)


def flush_through(path: str) -> None:
    """Have the device make the file at `path` durable, and with it
    everything sent to it before: an fdatasync, which waits for the file's
    own writeback, then flushes the device."""
    _on_file(path, os.fdatasync)


def _on_file(path: str, call: Callable[[int], None]) -> None:
    """`call` the file at `path`, open for reading (a hint: a file gone
    meanwhile, or one that refuses, is let be)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        call(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Held:
    """The copies a build keeps in the cache, whose writeback (`send`) waits
    until the build has answered: then a thread of their own ("sends")
    begins it, and has the device flush it.

    Every fsync here ends with a flush of the whole device, which waits for
    everything sent to it before (`benchmarks/flushes.py`), and a build must
    fsync its records last (STATE.md, "Crash safety").  A copy sent as it is
    made kept that last fsync waiting for the copies of the build's last
    stages, its largest: in the big benchmark's incremental builds, 216 MB
    of copies, and about 0.2 s of each build.  Held, they are written while
    the user, or the build after, goes on; the object needs no fsync of its
    own (a corrupt object is found when read: STATE.md, "The cache").

    At most `LIMIT` bytes wait: beyond that the oldest are sent at once, so
    a clean build leaves no more than that for the build after it, and the
    dirty pages never grow by more.  A process that lives on after its
    build holds them (a build server, watch mode, the Python API: the
    engine's `_release`); so does `Left`, below, in a process of its own."""

    # Half a GB, or an eighth of the memory where that is less.
    LIMIT = min(512 << 20, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8)
    THREAD = "sends"  # the thread's name (cli/server.py counts it as its own)

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._held: deque[tuple[str, int]] = deque()  # (path, size), oldest first
        self._bytes = 0
        self._sending: list[str] = []  # released, for the thread
        self._thread: threading.Thread | None = None

    def add(self, path: str, size: int) -> None:
        """Hold the writeback of the kept copy at `path`, of `size` bytes."""
        over: list[str] = []
        with self._lock:
            self._held.append((path, size))
            self._bytes += size
            excess = self._excess(size)
            while excess > 0 and self._held:
                oldest, n = self._held.popleft()
                self._bytes -= n
                excess -= n
                over.append(oldest)
        for oldest in over:
            send_path(oldest)

    def _excess(self, added: int) -> int:
        """How many of the bytes held must go now, `added` having come."""
        return self._bytes - self.LIMIT

    def release(self) -> None:
        """The build has answered (in watch mode and the Python API: has
        written its records): what is held goes to the thread."""
        self.send(self._take())

    def _take(self) -> list[str]:
        """The copies held, oldest first, no longer held here."""
        with self._lock:
            paths = [path for path, _ in self._held]
            self._held.clear()
            self._bytes = 0
            return paths

    def send(self, paths: list[str]) -> None:
        """Have the thread send the copies at `paths`, then flush them."""
        if not paths:
            return
        with self._lock:
            self._sending.extend(paths)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.THREAD, daemon=True)
                self._thread.start()
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._sending:
                    self._lock.wait()
                paths, self._sending = self._sending, []
            for path in paths:
                send_path(path)
            flush_through(paths[-1])  # (the device made to write them now, while nothing waits for it)


class Left(Held):
    """The copies kept by the first build in a while: one run in a process
    of its own because no build server was listening, which starts one as
    it ends (`cli.run`).  It leaves their writeback to that server, which
    begins it as soon as it runs (cli/server.py, `_send_left`), while the
    user, or the next build, goes on.

    Such a build is most often a clean one, whose largest stages come last:
    in the big benchmark the last layer's copies are half of its 1.2 GB.
    Sent as made, they reached the disk in the build's last second, and its
    last fsync (a flush of the whole device) waited for them: the last 0.6
    s of a 3.7 s build, the cores idle.

    But not beyond the kernel's background threshold
    (`nr_dirty_background_threshold`, a tenth of the available memory by
    default): past it the kernel's flusher writes out dirty pages at once,
    whoever made them, and the build's fsyncs wait behind it.  So the
    oldest go as soon as the dirty pages reach `SHARE` of it (the build's
    outputs are dirty too).  Only where the kernel says both figures
    (/proc/vmstat); elsewhere each is sent as made, as in any other process
    of its own: one that left its copies to the kernel, with no server to
    send them, would leave them for the builds after it (`ab.py --what
    fresh` without a server: 1.325, each build's 216 MB piling up)."""

    SHARE = 0.9  # of the kernel's background threshold, the dirty pages held below
    EVERY = 16 << 20  # bytes held between two looks at the dirty pages

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self._since = 0  # bytes held since the last look

    def left(self) -> list[str]:
        """The copies held, oldest first, for the server this process starts
        (`cli.run`), which sends them as it begins: they are no longer held here."""
        return self._take()

    def _excess(self, added: int) -> int:
        self._since += added
        if self._since < self.EVERY:
            return 0
        self._since = 0
        room = dirty_room(self.SHARE)
        return self._bytes if room is None else -room


def dirty_room(share: float, vmstat: str = "/proc/vmstat") -> int | None:
    """How many bytes more may be dirty before they reach `share` of the
    kernel's background threshold (negative: over by that many); None where
    the kernel does not say."""
    dirty = threshold = -1
    try:
        with open(vmstat, "rb") as f:
            for line in f:
                if line.startswith(b"nr_dirty "):
                    dirty = int(line.split()[1])
                elif line.startswith(b"nr_dirty_background_threshold "):
                    threshold = int(line.split()[1])
                    break  # (it comes after nr_dirty)
    except (OSError, ValueError, IndexError):
        return None
    if dirty < 0 or threshold <= 0:
        return None
    return int(threshold * share - dirty) * mmap.PAGESIZE


HELD = Held()
LEFT = Left()


def leave() -> None:
    """This process's build leaves the copies it keeps for the server it
    starts as it ends (`Left`)."""
    if dirty_room(Left.SHARE) is not None:
        LEFT.on = True


def holder(resident: bool) -> Held | None:
    """What holds the copies a build keeps (None: each is sent as made)."""
    return HELD if resident else LEFT if LEFT.on else None


class Ways:
    """Which way a large copy into the cache is written: through the page
    cache or with direct I/O, whichever costs less here, as measured by the
    copies themselves (the seconds their writes take a byte, a moving
    average of each way).

    Neither way wins everywhere, and on this project's machines which one
    wins changes from one hour to the next (docs/performance.md, the
    thirty-third session).  A buffered write costs the CPU a page
    allocation and a copy per 4 KiB, and where the host of a VM takes back
    the memory its guest leaves free, new memory can cost several times
    what the copy does: 2.7 s of CPU a GB against 0.4 direct, when the
    disk took direct writes at 1.8 GB/s.  A direct write costs no memory
    but waits for the disk, and sends the data to it at once, where the
    next fsync of any state file (a device flush) waits for it to be made
    durable: with the disk taking 0.6 GB/s, 200 MB written direct took
    0.32 s and the small fsync after it 0.2 s, where written buffered they
    took 0.05 s and the fsync 0.3 ms (`benchmarks/flushes.py`: the data
    not yet sent; a copy kept is sent once it is whole, without waiting
    for it: `send`).

    So each copy is written the way that has cost less a byte lately,
    and one in `EXPLORE` of those under `EXPLORE_MAX` bytes the other way,
    to keep both measures current (a large copy the slower way would keep
    the build's end waiting for it: its largest outputs come last).
    Unmeasured, a way is tried first: direct, then buffered.  The two
    storer threads share the measures (a race between them loses one
    sample at worst).  A copy of less than `MEASURED` bytes one way is not
    counted (a short last chunk, written buffered)."""

    EXPLORE = 8
    EXPLORE_MAX = 4 << 20
    MEASURED = 1 << 20
    WEIGHT = 0.25  # of a new sample in the average

    def __init__(self) -> None:
        self.cost = [0.0, 0.0]  # seconds a byte: buffered, direct (0.0: not measured yet)
        self.copies = 0

    def direct(self, size: int) -> bool:
        """Whether the next copy, of `size` bytes, is written direct."""
        buffered, direct = self.cost
        if not direct or not buffered:
            return not direct
        cheaper = direct < buffered
        if size > self.EXPLORE_MAX:
            return cheaper
        self.copies += 1
        return cheaper != (self.copies % self.EXPLORE == 0)

    def note(self, direct: bool, seconds: float, count: int) -> None:
        """`count` bytes written (direct or not) in `seconds`."""
        if count >= self.MEASURED:
            sample = seconds / count
            old = self.cost[direct]
            self.cost[direct] = old + (sample - old) * self.WEIGHT if old else sample


WAYS = Ways()


_buffers = threading.local()


def _buffer() -> memoryview:
    """This thread's copy buffer: page-aligned, as direct I/O requires, and
    reused, so its pages are faulted in once rather than once per file."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(mmap.mmap(-1, CHUNK))
    return view


_ALIGN = 4096  # a multiple of every logical block size direct I/O asks offsets and lengths to align to


def _open_direct(path: str) -> int | None:
    """A second, direct-I/O descriptor on `path`, or None where that is not available."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
    except OSError:
        return None  # tmpfs and some FUSE filesystems refuse O_DIRECT


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


def reflink(src_fd: int, dest_fd: int) -> bool:
    """Make `dest_fd` share `src_fd`'s extents (FICLONE); False where the
    filesystem (or the pair of them) cannot."""
    try:
        fcntl.ioctl(dest_fd, _FICLONE, src_fd)
    except OSError:
        return False
    return True


def clone_or_copy(src: Path, dest_fd: int) -> bool:
    """Fill the empty file `dest_fd` with `src`'s bytes: a reflink where the
    filesystem can (returns True), else a copy."""
    with open(src, "rb") as fin:
        if reflink(fin.fileno(), dest_fd):
            return True
        size = os.fstat(fin.fileno()).st_size
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(fin.fileno(), dest_fd, size - copied)
                if n == 0:
                    break
                copied += n
        except OSError:
            fin.seek(0)
            os.lseek(dest_fd, 0, os.SEEK_SET)
            os.ftruncate(dest_fd, 0)
            copied = 0
        fin.seek(copied)
        os.lseek(dest_fd, copied, os.SEEK_SET)
        while chunk := fin.read(1 << 20):
            write_all(dest_fd, chunk)
    return False
