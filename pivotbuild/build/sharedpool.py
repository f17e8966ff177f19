"""pivotbuild's own `-j` pool, served to its stages as a GNU make jobserver
(CLI.md, "The job server").

A `make`, `ninja` (1.13+) or `cargo` inside a stage then shares pivotbuild's
budget instead of multiplying it: under `pivotbuild -j4`, one stage running
`make -f sub.mk` runs 4 sub-jobs when nothing else runs, and never more than
4 jobs run in all.  The pool is what make itself keeps as a jobserver: a
pipe holding one byte per free token beyond the implicit one.  pivotbuild
is its first client (`MakeJobServer`: a stage starts on the implicit token,
or on a token read from the pool, and writes it back when it ends), and
each stage borrows from it through the MAKEFLAGS and descriptors
`for_stage` gives it.

The pipe is a named one (a fifo, 0600, in `$TMPDIR/pivotbuild-UID`, a
directory of the user's own, removed when the build ends), so that fifo
clients (make 4.4, ninja) can open it by its path while make 4.3 reads the
descriptors the stage inherits; where no fifo can be made, an anonymous
pipe, announced as descriptors alone.  It is made when the first stage
starts: a build that runs nothing makes none.

When none of our stages runs, no token can be out: a `make` killed with its
tokens (SIGKILL, a timeout) cannot give them back, so the pool is counted
then (FIONREAD, nothing read) and topped up to its size.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys

from pivotbuild.build.admission import TokenPool
from pivotbuild.build.makejobs import MakeJobServer

TOKEN = b"+"  # (make's own token byte)
_PREFIX = "pivotbuild-jobs-"  # a fifo's name: this, the pid of the pivotbuild that made it, a random part


class SharedPool(MakeJobServer):
    """A pool of `capacity` tokens that the stages share (see the module's docstring)."""

    owned = True  # (ours: a token an ended stage leaves may wait for the next start while it is decided)

    def __init__(self, capacity: int) -> None:
        super().__init__(-1, -1, capacity, reopen=("", ""))
        self._opened = False
        self._alone: TokenPool | None = None  # our count alone, if no pipe could be had

    def try_acquire(self, n: int) -> bool:
        if not self._opened:
            self._open()
        if self._alone is not None:
            return self._alone.try_acquire(n)
        return super().try_acquire(n)

    def release(self, n: int) -> None:
        if self._alone is not None:
            self._alone.release(n)
            return
        super().release(n)
        if self.idle and self._opened:
            self._top_up()

    def settle(self) -> None:
        if self._alone is None:
            super().settle()
            if self.idle and self._opened:
                self._top_up()

    def available(self) -> int:
        if self._alone is not None:
            return self._alone.available()
        if not self._implicit_free and not self._spare and len(self._held) + self._short >= self.capacity - 1:
            return 0  # every token is out with our own stages: the pool is empty, no read need say so
        return 1 if self._dry_at is None else super().available()  # (never found dry: no clock to read)

    def for_stage(self, outer: str) -> tuple[str, tuple[int, int]] | None:
        if not self._opened:
            self._open()
        return super().for_stage(outer) if self._alone is None else None

    def close(self) -> None:
        if self._opened and self._alone is None:
            super().close()
            if self.fifo is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.fifo)
        self._opened = False

    def _open(self) -> None:
        """Make the pipe and put `capacity - 1` tokens in it; if no pipe can be
        had at all, the pool is our own count alone (and stages get none)."""
        self._opened = True
        try:
            self.fifo, read_fd, write_fd = _fifo()
        except OSError:
            try:
                read_fd, write_fd = os.pipe()
            except OSError:  # (out of descriptors: the stages get no pool, the build still counts its own)
                self._alone = TokenPool(self.capacity)
                return
            os.set_blocking(read_fd, False)
            self.fifo = None
        os.set_blocking(write_fd, False)  # (a pipe holds 64 KiB at most, 4 KiB when the user's pipes are many)
        self.fd, self._write = read_fd, write_fd
        self.reopen = (self.fifo, self.fifo) if self.fifo else (f"/proc/self/fd/{read_fd}", f"/proc/self/fd/{write_fd}")
        self._top_up()

    def _top_up(self) -> None:
        """The pool back to `capacity - 1` tokens (none of ours is out: see the
        module's docstring).  A pipe that cannot hold them all (`-j 100000`)
        makes the pool, and so `-j`, what it holds."""
        want = self.capacity - 1
        with contextlib.suppress(OSError):
            count = bytearray(4)
            fcntl.ioctl(self.fd, _fionread(), count)
            there = int.from_bytes(count, "little")
            if there < want:
                with contextlib.suppress(BlockingIOError):
                    there += os.write(self._write, TOKEN * (want - there))
                self.capacity = there + 1
            elif there > want:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.fd, there - want)


def _fifo() -> tuple[str, int, int]:
    """A new fifo in our own directory of $TMPDIR (or /tmp), opened: its path,
    a non-blocking read end and a write end (ours: the stages get
    descriptions of their own)."""
    directory = _own_directory(os.path.abspath(os.environ.get("TMPDIR") or "/tmp"))  # (stages run elsewhere)
    _sweep(directory)
    for _ in range(10):
        path = os.path.join(directory, f"{_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            continue
        try:
            read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                write_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                os.close(read_fd)
                raise
        except OSError:
            os.unlink(path)
            raise
        return path, read_fd, write_fd
    raise FileExistsError(f"no free name for a fifo in {directory}")


def _own_directory(tmp: str) -> str:
    """`tmp`'s `pivotbuild-UID`, made if missing: a directory only this user
    may enter (mode 0700, ours, not a symlink), which holds the fifos of
    this user's builds alone, so that finding the ones a killed build left
    lists a handful of names, not every file of a shared /tmp (0.5 ms for
    1,300 of them here, and more as it fills).  `tmp` itself where no such
    directory can be had, or the one there is not ours alone."""
    uid = os.getuid()
    own = os.path.join(tmp, f"pivotbuild-{uid}")
    with contextlib.suppress(OSError):  # (there already, most builds)
        os.mkdir(own, 0o700)
    try:
        st = os.lstat(own)
    except OSError:
        return tmp
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return tmp  # (a link, a file, another user's, or open to others: not for our pipes)
    return own


_swept: set[str] = set()  # the directories swept by this process


def _sweep(directory: str) -> None:
    """Remove the fifos of pivotbuilds that were killed (SIGKILL, the OOM
    killer: nothing could remove them), once per directory and process: our
    user's, named for a pid that no longer runs."""
    if directory in _swept:
        return
    _swept.add(directory)
    uid = os.getuid()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX) :].partition("-")[0]
        try:
            st = entry.stat(follow_symlinks=False)
            if not (pid.isdigit() and stat.S_ISFIFO(st.st_mode) and st.st_uid == uid) or alive(int(pid)):
                continue
            os.unlink(entry.path)
        except OSError:
            continue


def alive(pid: int) -> bool:
    """Does process `pid` run (ours or not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # (someone else's: alive)
    return True


def _fionread() -> int:
    """The ioctl that counts the bytes a pipe holds: Linux's number, without
    importing `termios` for it (every build with work asks once); elsewhere termios's."""
    if sys.platform.startswith("linux"):
        return 0x541B
    import termios

    return termios.FIONREAD
