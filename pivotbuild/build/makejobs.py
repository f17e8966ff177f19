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
import functools
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
    so an interrupt at any point loses none (`close` gives back what is held).
    A token a stage of ours ends with is not written back at once but kept
    (`_spare`) for the stage the build loop starts next: in a busy build
    each start would otherwise read back the byte the last end wrote.  The
    loop calls `settle` before it waits, which writes back what no start
    took, so make's other jobs and our stages' children wait no longer for
    a token than the loop takes to look at its ready stages.

    After a read found the pool empty it is `dry`: the build loop then waits
    for `fd` to become readable (a token came back) and calls `woken`.

    Each stage borrows from the same pool (`for_stage`): its `make`, `ninja` or
    `cargo` reads tokens beyond the one the stage holds.  `reopen` names the
    pool for that (a fifo's path, or `/proc/self/fd/R` for make's pipe), and
    `fifo` is announced to fifo clients when there is one."""

    external = True  # (admission: tokens may come back without a stage of ours ending)

    def __init__(
        self, read_fd: int, write_fd: int, capacity: int, *, reopen: tuple[str, str], fifo: str | None = None
    ) -> None:
        self.fd = read_fd  # ours: non-blocking, and never handed to a stage
        self._write = write_fd
        self.capacity = max(capacity, 1)
        self.reopen = reopen
        self.fifo = fifo
        self._implicit_free = True
        self._held: list[bytes] = []  # the tokens read, to write back
        self._spare = 0  # of those, how many no stage of ours holds (kept for the next start: `settle`)
        self._short = 0  # tokens the running stages started without
        self._dry_at: float | None = None  # when a read last found the pool empty
        self._gone = False  # every writer has closed the pool: make is gone
        self._ahead: list[tuple[int, int]] = []  # descriptors opened for the next stage (`restock`)

    def try_acquire(self, n: int) -> bool:
        idle = self._implicit_free and len(self._held) == self._spare and not self._short
        need = n - 1 if self._implicit_free else n
        spare = min(need, self._spare)
        self._spare -= spare
        need -= spare
        start = len(self._held)
        while len(self._held) - start < need and not self._gone:
            try:
                token = os.read(self.fd, 1)
            except BlockingIOError:
                self._dry_at = time.monotonic()
                break
            except InterruptedError:
                continue
            if not token:
                self._gone = True  # (nobody is left to give tokens back: only the implicit one remains)
                break
            self._held.append(token)
        got = len(self._held) - start
        if got < need and not idle:
            self._give_back(got)
            self._spare += spare
            return False
        self._implicit_free = False
        self._short += need - got
        return True

    def release(self, n: int) -> None:
        paid = min(n, self._short)
        self._short -= paid
        back = min(n - paid, len(self._held) - self._spare)
        self._spare += back  # (written back by `settle`, unless the next start takes them)
        if n - paid - back > 0:
            self._implicit_free = True
        self._dry_at = None

    def settle(self) -> None:
        if self._spare:
            spare, self._spare = self._spare, 0
            self._give_back(spare)

    @property
    def idle(self) -> bool:
        """No stage of ours holds a token."""
        return self._implicit_free and not self._held and not self._short

    @property
    def dry(self) -> bool:
        """The last read found the pool empty and no token has come back since
        (as far as we know: `woken` says one may have).  A safety net lets it
        lapse after `_DRY_S`, should nobody watch `fd`."""
        return self._dry_at is not None and time.monotonic() - self._dry_at < _DRY_S and not self._gone

    def woken(self) -> None:
        """`fd` became readable: a token may be had again."""
        self._dry_at = None

    def available(self) -> int:
        """0 while the pool is `dry`, else 1: how many is unknown until read."""
        return 0 if self.dry else 1

    def for_stage(self, outer: str) -> tuple[str, tuple[int, int]] | None:
        """The pool for one stage to borrow from: its MAKEFLAGS (`outer`, the
        stage's own, with our pool in place of any it names) and the two
        descriptors it is to inherit, opened for it alone (the caller closes
        them once the stage has started).  Raises OSError if the pool cannot
        be opened again.

        Fresh descriptions, not ours: ninja sets O_NONBLOCK on the read end it
        is given, which would make a `make` in another stage (or make itself)
        fail with "read jobs pipe: Resource temporarily unavailable".  Opened
        ahead where they could be (`restock`), each for one stage alone."""
        r, w = self._ahead.pop() if self._ahead else self._opened_for_stage()
        return stage_makeflags(outer, self.capacity, r, w, self.fifo), (r, w)

    def restock(self) -> None:
        """Open the descriptors of the next stage's `for_stage` now, if none
        are: the build loop calls this before it waits for its stages, so
        that a start does not wait for two opens (a fifo's path looked up
        twice: 40 to 80 us a stage here).  Nothing if they cannot be opened:
        `for_stage` tries again and says why."""
        if not self._ahead and self.reopen[0]:
            with contextlib.suppress(OSError):
                self._ahead.append(self._opened_for_stage())

    def _opened_for_stage(self) -> tuple[int, int]:
        r = os.open(self.reopen[0], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # (a fifo's open never waits so)
        try:
            os.set_blocking(r, True)  # as make hands its pipe to its children
            w = os.open(self.reopen[1], os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            os.close(r)
            raise
        return r, w

    def close(self) -> None:
        """Every token read goes back to make (the build is over, however it ended)."""
        self._give_back(len(self._held))
        self._implicit_free = True
        self._short = self._spare = 0
        ahead, self._ahead = self._ahead, []
        for fd in {self.fd, self._write, *(fd for pair in ahead for fd in pair)}:
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


# How long a read that found the pool empty stands for it if the loop does
# not watch the pool (s): about the loop's longest wait while a stage waits
# for a token (run.py).
_DRY_S = 0.2


@functools.lru_cache(maxsize=64)  # (a build asks it the same for each stage it starts)
def stage_makeflags(outer: str, jobs: int, r: int, w: int, fifo: str | None) -> str:
    """MAKEFLAGS for a stage: `outer` (what it would get otherwise) without
    any `-j` or pool it names, and ours added, in the one form both make 4.3
    and fifo clients read: ` -jN --jobserver-auth=fifo:PATH --jobserver-fds=R,W`.
    Make 4.3 and 4.4 take the last of the two (the descriptors, which the
    stage inherits); ninja 1.13 and cargo also read them (PyPI's ninja says it
    would prefer a fifo; without `fifo`, `--jobserver-auth=R,W` alone)."""
    words = outer.split()
    head: list[str] = []
    if words and not words[0].startswith("-"):
        head.append(words.pop(0))  # make's single-letter flags (`ks`): they stay first
    rest: list[str] = []
    skip = False
    for i, word in enumerate(words):
        if word == "--":
            rest = words[i:]  # command-line variables
            break
        if skip:
            skip = False
            if word.isdigit():
                continue  # (`-j 8`, as a stage's own `env: MAKEFLAGS` may write it)
        if word in ("-j", "--jobs"):
            skip = True
        elif not (word.startswith(("--jobserver-auth=", "--jobserver-fds=", "--jobs=")) or _is_jobs(word)):
            head.append(word)
    pool = [f"--jobserver-auth=fifo:{fifo}", f"--jobserver-fds={r},{w}"] if fifo else [f"--jobserver-auth={r},{w}"]
    text = " ".join([*head, f"-j{jobs}", *pool, *rest])
    return text if head and not head[0].startswith("-") else " " + text


def _is_jobs(word: str) -> bool:
    """`-j` or `-jN` (a word of MAKEFLAGS)."""
    return (word.startswith("-j") and word[2:].isdigit()) or word == "-j"


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
            return MakeJobServer(read_fd, write_fd, capacity, reopen=(flags.fifo, flags.fifo), fifo=flags.fifo)
        assert flags.fds is not None
        r, w = flags.fds
        for fd in (r, w):
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return f"descriptor {fd} is not a pipe"
        reopen = (f"/proc/self/fd/{r}", f"/proc/self/fd/{w}")
        read_fd = os.open(reopen[0], os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        write_fd = os.open(reopen[1], os.O_WRONLY | os.O_CLOEXEC)
        return MakeJobServer(read_fd, write_fd, capacity, reopen=reopen)
    except OSError as exc:
        return exc.strerror or str(exc)
