"""Stages die with the build that started them, however it ends.

Each stage runs in a process group of its own (runner.py), which the build
kills on timeout, failure to finish or Ctrl-C.  A pivotbuild that is itself
killed (SIGKILL, the OOM killer) can kill nothing, so a watchdog does it: one
small `sh` per build, started with the first stage, reading a pipe that only
pivotbuild holds open.  The build keeps the running stages' process groups in
a table the watchdog shares: an unnamed temporary file, one fixed-width line
per running stage, written in place as a stage starts (its group) and ends
(blanks).  When the pipe reaches end of file, which the kernel brings about
however pivotbuild ends, the watchdog reads the table, SIGTERMs every group
still listed, gives them two seconds (as a timeout does), and SIGKILLs what is
left.  After a normal build it finds no group and exits.

The watchdog sleeps in one read() for the whole build, so a stage costs it
nothing (telling it each start and end on the pipe woke it twice per stage,
and its `read` builtin reads a pipe a byte at a time), and costs the build a
store into the table's shared mapping as it starts (two: below) and one as it
ends (a `pwrite` only when the table grows a line: at most once per job
slot).

A stage's table line is written before the stage starts: a mark with a
number of its own, which the stage gets in its environment as
`PIVOT_LIFELINE` (the build's token, then that number).  Its group replaces
the mark once the start returns.  So a build killed in the instant between
the two (a spawn that has cloned the stage but not yet returned: a good part
of a busy loop's time) leaves a mark, and the watchdog finds the processes
that carry the mark's value in their environment (in /proc, on Linux) and
kills them and their groups as it kills the held ones.  It looks only when
the table holds marks, and not just once: end of file can come just before
the stage's exec (a start through Popen closes our end of the pipe in the
child before it execs; the kernel closes close-on-exec descriptors before it
sets up the new environment), so it looks again at each turn of its grace,
for 0.3 s at least, which also finds a descendant that left the stage's group
since.

Why not Linux's `prctl(PR_SET_PDEATHSIG)`: it reaches only the stage's shell,
not the processes the shell starts; it fires when the *thread* that forked the
stage exits; setting it needs `preexec_fn` (which forbids subprocess's fast
vfork path and is unsafe with threads) or an extra exec per stage; and it is
Linux only.  The watchdog costs one `sh` per build that runs anything, works
wherever there is a POSIX shell, and kills the whole group.

What it cannot reach is in docs/architecture.md ("When pivotbuild is killed").
"""

from __future__ import annotations

import mmap
import os
import threading

from pivotbuild.build.executors.spawn import Child, Starter, devnull

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

# stdin: the pipe, never written to; stdout: the table, opened read-write and
# read from its start (the build only writes it with pwrite, which leaves the
# shared offset at 0); $1: the build's token.  A line holds a group, `p` and
# the number of a stage being started (its PIVOT_LIFELINE: `$1.NUMBER`), or
# blanks.  A target is `-GROUP` and `GROUP` (the stage's own process: one
# cloned by spawn.py's _clonespawn is not in its group until it has made its
# session, which the build does not wait for), or the pid of a process that
# carries a marked stage's value (that stage, whose group has its number, or
# one of its descendants), as `found` finds them at each turn of the grace
# (why: the module's docstring); with marks, it looks for 0.3 s at least.  `kill -0`
# finds a target gone once it is empty (a zombie its new parent has not
# reaped yet still counts: then the SIGKILL simply finds nothing to do); one
# gone leaves the list.  The values of one build all have the same length, so
# one is never the start of another.
_WATCHDOG = """
while read -r _; do :; done
targets=
expected=
while read -r g; do
    case $g in
    p*) expected="$expected -e PIVOT_LIFELINE=$1.${g#p}" ;;
    ?*) targets="$targets -$g $g" ;;
    esac
done <&1
[ -z "$targets" ] && [ -z "$expected" ] && exit 0
for t in $targets; do kill -s TERM -- "$t" 2>/dev/null; done
seen=
found() {
    [ -n "$expected" ] || return 0
    for f in $(grep -l -F $expected /proc/[0-9]*/environ 2>/dev/null); do
        p=${f#/proc/}
        p=${p%/environ}
        case " $seen " in
        *" $p "*) ;;
        *)
            seen="$seen $p"
            targets="$targets -$p $p"
            kill -s TERM -- "-$p" 2>/dev/null
            kill -s TERM -- "$p" 2>/dev/null
            ;;
        esac
    done
}
i=0
while :; do
    found
    left=
    for t in $targets; do kill -s 0 -- "$t" 2>/dev/null && left="$left $t"; done
    targets=$left
    if [ -z "$targets" ] && { [ -z "$expected" ] || [ $i -ge 3 ]; }; then
        exit 0
    fi
    [ $i -ge 20 ] && break
    sleep 0.1
    i=$((i + 1))
done
found
for t in $targets; do kill -s KILL -- "$t" 2>/dev/null; done
"""
_WIDTH = 12  # one line of the table: a group number or a mark, right-aligned, or blanks
_FREE = b" " * (_WIDTH - 1) + b"\n"
_MARK = b"  p%08x\n"  # a mark's line, given its number: `p` and 8 hex digits, right-aligned
_GROUP = b"%11d\n"  # a held group's line, given the group
assert len(_MARK % 1) == len(_GROUP % 1) == _WIDTH

VARIABLE = "PIVOT_LIFELINE"  # in a stage's environment: the value its mark in the table stands for


def _table() -> int:
    """An unnamed file, gone with its last descriptor however we end: in memory
    on Linux (a file on disk would have each pwrite journal its mtime, and may
    wait behind the storers' fsyncs), else in the temporary directory."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("pivotbuild-lifeline")
    import tempfile  # here: only a build that runs a stage needs it

    table, name = tempfile.mkstemp(prefix="pivotbuild-lifeline-")
    os.unlink(name)
    return table


class Lifeline:
    """The watchdog of one build's stages; `hold` and `release` may be called
    from any thread.  Best effort: if the watchdog cannot be started, or dies,
    stages run as before, without this protection."""

    def __init__(self, starter: Starter | None = None) -> None:
        self._starter = starter or Starter(spawn=False)
        self._lock = threading.Lock()
        self._proc: Child | subprocess.Popen[bytes] | None = None
        self._fd: int | None = None  # our end of the pipe
        self._table: int | None = None
        self._map: mmap.mmap | None = None  # the table's lines so far, mapped: written in place
        self._lines: dict[int, int] = {}  # held group -> its line in the table
        self._free: list[int] = []  # lines of released groups, to reuse
        self._count = 0  # lines in the table
        self._token = ""  # this build's, in every stage's PIVOT_LIFELINE (its pid, then random)
        self._marks = 0  # stages marked so far
        self._started = False

    def ready(self) -> None:
        """Start the watchdog, if it is not running yet (`expect` and `hold` do)."""
        if self._started:  # (set once `_start` has returned: no lock to take again)
            return
        with self._lock:
            if not self._started:
                self._start()
                self._started = True

    def expect(self) -> tuple[int, str] | None:
        """Before a stage starts: (its line in the table, marked with a number of
        its own, the value of PIVOT_LIFELINE to start it with), to pass to
        `hold` once it has started, or to `forget` if it could not start.
        Should this process die in between, the watchdog kills the processes
        that carry that value.  None without a watchdog."""
        if not self._started:
            self.ready()
        with self._lock:
            if self._table is None:
                return None
            self._marks = marks = self._marks + 1
            at = self._line()
            if not self._write(at, _MARK % marks):
                return None  # (the table could not grow)
            return at, f"{self._token}.{marks:08x}"

    def hold(self, pgid: int, expected: tuple[int, str] | None = None) -> None:
        """Kill process group `pgid` if this process dies before `release(pgid)`;
        `expected`: what `expect` gave for it, whose line it takes."""
        if expected is None:
            self.ready()
        with self._lock:
            if self._table is None:
                return
            at = self._line() if expected is None else expected[0]
            self._lines[pgid] = at
            self._write(at, _GROUP % pgid)

    def forget(self, expected: tuple[int, str]) -> None:
        """The stage `expect` was asked for did not start: its line is free."""
        with self._lock:
            if self._table is not None:
                self._free.append(expected[0])
                self._write(expected[0], _FREE)

    def release(self, pgid: int) -> None:
        """The stage of group `pgid` has ended: its group is no longer ours to kill
        (its number may soon be another's)."""
        with self._lock:
            at = self._lines.pop(pgid, None)
            if at is None or self._table is None:
                return
            self._free.append(at)
            self._write(at, _FREE)

    def close(self) -> None:
        """Once no stage runs: let the watchdog exit (it finds no group to kill)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._proc is not None:
                self._proc.wait()
                self._proc = None
            self._drop_table()

    def _line(self) -> int:
        """A free line of the table (under the lock)."""
        if self._free:
            return self._free.pop()
        self._count += 1
        return self._count - 1

    def _write(self, at: int, line: bytes) -> bool:
        """Line `at` of the table set to `line` (under the lock); False if the
        table could not grow to hold it (then there is none any more)."""
        assert self._table is not None
        mapped = self._map
        start = at * _WIDTH
        if mapped is not None and start < len(mapped):
            mapped[start : start + _WIDTH] = line
            return True
        try:  # a new line: the file grows, and is mapped again
            os.pwrite(self._table, line, start)
            self._map = mmap.mmap(self._table, start + _WIDTH)
        except (OSError, ValueError):  # e.g. a full disk: the stages only lose this protection
            self._drop_table()
            return False
        if mapped is not None:
            mapped.close()
        return True

    def _drop_table(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._table is not None:
            os.close(self._table)
            self._table = None

    def _start(self) -> None:
        try:
            table = _table()
        except OSError:
            return
        read_end, write_end = os.pipe()  # not inherited by stages: only we keep it open
        try:
            # In a session of its own: not stopped by the Ctrl-C or kill meant for the build's own group.
            token = f"{os.getpid()}.{os.urandom(4).hex()}"
            self._proc = self._starter.start(
                ("/bin/sh", "-c", _WATCHDOG, "pivotbuild-lifeline", token),
                None,
                os.environ,
                stdin=read_end,
                stdout=table,
                stderr=devnull(),
            )
        except OSError:
            os.close(write_end)
            os.close(table)
            return
        finally:
            os.close(read_end)
        self._fd = write_end
        self._table = table
        self._token = token
