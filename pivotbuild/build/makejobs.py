"""A client of GNU make's jobserver: pivotbuild run from a Makefile recipe
(`+pivotbuild`, or `$(MAKE)`-like) takes its job tokens from make's pool
instead of running its own `-j` beside make's (CLI.md, "The job server").

Make announces its pool in MAKEFLAGS: `-jN` and `--jobserver-auth=R,W`
(make 4.2 and 4.3: a pipe whose descriptors the recipe inherits) or
`--jobserver-auth=fifo:PATH` (make 4.4: a named pipe).  Each byte in the pipe
is a token; every client also holds one implicit token it never reads.  A
client reads a byte to start a job beyond its implicit one, and writes the
same byte back when that job ends.

The pipe is shared with make and its other children, and its open file
description with those that inherited it: setting O_NONBLOCK on it would
change it for make too.  So the pipe is opened again, through
`/proc/self/fd/R` (Linux: a new description of the same pipe, non-blocking
for us alone), or by its path for a fifo; a pipe that cannot be reopened so
is not used (one warning, and pivotbuild runs `-jN` on its own, as when the
descriptors are closed: a recipe make did not mark `+`).  Every token read
is written back when its stage ends, and all of them when the build ends,
however it ends (`close`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time

from pivotbuild.structs import struct


@struct(frozen=True, slots=True)
class MakeFlags:
    """What MAKEFLAGS says of make's pool: its size (`-jN`), where its
    tokens are (`R,W` descriptors or a fifo path), and whether it is `-n`."""

    jobs: int | None = None
    fds: tuple[int, int] | None = None
    fifo: str | None = None
    dry_run: bool = False
    auth: str = ""  # the --jobserver-auth value, as given (for messages)


def parse_makeflags(flags: str) -> MakeFlags:
    """The pool MAKEFLAGS describes (the last --jobserver-auth wins, as make 4.3 takes it)."""
    jobs = fds = fifo = None
    auth = ""
    words = flags.split()
    dry_run = bool(words) and not words[0].startswith("-") and "n" in words[0]  # make's single-letter flags
    for word in words:
        if word.startswith("-j") and word[2:].isdigit():
            jobs = int(word[2:])
        elif word.startswith(("--jobserver-auth=", "--jobserver-fds=")):
            auth = word.split("=", 1)[1]
            if auth.startswith("fifo:"):
                fifo, fds = auth[5:], None
            else:
                r, _, w = auth.partition(",")
                fds = (int(r), int(w)) if r.isdigit() and w.isdigit() else None
                fifo = None
        elif word == "--":
            break  # command-line variables follow
    return MakeFlags(jobs, fds, fifo, dry_run, auth)


class MakeJobServer:
    """Make's pool as a `JobServer` (build/admission.py): `capacity` is make's
    `-jN`; `try_acquire` takes the implicit token, then reads the rest
    without blocking, giving back what it read if it cannot get them all.

    Except when nothing of ours runs: then a stage asking for several tokens
    (`jobs:`) starts on the implicit one and whatever it could read, and owes
    the rest (`_short`), since waiting for them all could wait for ever (make's
    other jobs, or another pivotbuild under the same make, may hold the
    tokens while waiting for us).  Tokens are fungible: a release pays the
    debt first, then gives back tokens read, then the implicit one.

    A token is in `_held` from the moment it is read until it is written back,
    so an interrupt at any point loses none (`close` gives back what is held)."""

    external = True  # (admission: tokens may come back without a stage of ours ending)

    def __init__(self, read_fd: int, write_fd: int, capacity: int) -> None:
        self._read = read_fd
        self._write = write_fd
        self.capacity = max(capacity, 1)
        self._implicit_free = True
        self._held: list[bytes] = []  # the tokens read, to write back
        self._short = 0  # tokens the running stages started without
        self._dry_at = -1.0  # when a read last found the pool empty

    def try_acquire(self, n: int) -> bool:
        idle = self._implicit_free and not self._held and not self._short
        need = n - 1 if self._implicit_free else n
        start = len(self._held)
        while len(self._held) - start < need:
            try:
                token = os.read(self._read, 1)
            except BlockingIOError:
                self._dry_at = time.monotonic()
                break
            except InterruptedError:
                continue
            if not token:
                break  # (make has gone)
            self._held.append(token)
        got = len(self._held) - start
        if got < need and not idle:
            self._give_back(got)
            return False
        self._implicit_free = False
        self._short += need - got
        return True

    def release(self, n: int) -> None:
        paid = min(n, self._short)
        self._short -= paid
        back = min(n - paid, len(self._held))
        self._give_back(back)
        if n - paid - back > 0:
            self._implicit_free = True
        self._dry_at = -1.0

    def available(self) -> int:
        """0 just after a read found the pool empty (the loop looks again at its
        next wait, not once per stage waiting), else 1: unknown until read."""
        return 0 if time.monotonic() - self._dry_at < _DRY_S else 1

    def close(self) -> None:
        """Every token read goes back to make (the build is over, however it ended)."""
        self._give_back(len(self._held))
        self._implicit_free = True
        self._short = 0
        for fd in {self._read, self._write}:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _give_back(self, count: int) -> None:
        """Write the last `count` tokens held back to make, each dropped from
        `_held` only once written."""
        for _ in range(count):
            token = self._held[-1]
            while True:
                try:
                    os.write(self._write, token)
                    break
                except InterruptedError:
                    continue
                except OSError:
                    self._held.clear()  # make has gone: nobody is left to give them to
                    return
            self._held.pop()


# How long a read that found make's pool empty stands for the pool (s): about
# the build loop's wait while a stage waits for a token (run.py).
_DRY_S = 0.015


def connect(flags: MakeFlags) -> MakeJobServer | str:
    """A client of the pool `flags` describes, or why there is none to use
    (a sentence for a warning)."""
    capacity = flags.jobs or 1
    try:
        if flags.fifo is not None:
            if not stat.S_ISFIFO(os.stat(flags.fifo).st_mode):
                return f"{flags.fifo} is not a fifo"
            read_fd = os.open(flags.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            write_fd = os.open(flags.fifo, os.O_WRONLY | os.O_CLOEXEC)
            return MakeJobServer(read_fd, write_fd, capacity)
        assert flags.fds is not None
        r, w = flags.fds
        for fd in (r, w):
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return f"descriptor {fd} is not a pipe"
        read_fd = os.open(f"/proc/self/fd/{r}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        write_fd = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_CLOEXEC)
        return MakeJobServer(read_fd, write_fd, capacity)
    except OSError as exc:
        return exc.strerror or str(exc)
