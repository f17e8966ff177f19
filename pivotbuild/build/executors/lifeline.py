"""Stages die with the build that started them, however it ends.

Each stage runs in a process group of its own (runner.py), which the build
kills on timeout, failure to finish or Ctrl-C.  A pivotbuild that is itself
killed (SIGKILL, the OOM killer) can kill nothing, so a watchdog does it: one
small `sh` per build, started with the first stage, reading a pipe that only
pivotbuild holds open.  The build tells it each stage's group as the stage
starts (`+ PGID`) and ends (`- PGID`).  When the pipe reaches end of file,
which the kernel brings about however pivotbuild ends, the watchdog SIGTERMs
every group still listed, gives them two seconds (as a timeout does), and
SIGKILLs what is left.  After a normal build it finds no group and exits.

Why not Linux's `prctl(PR_SET_PDEATHSIG)`: it reaches only the stage's shell,
not the processes the shell starts; it fires when the *thread* that forked the
stage exits; setting it needs `preexec_fn` (which forbids subprocess's fast
vfork path and is unsafe with threads) or an extra exec per stage; and it is
Linux only.  The watchdog costs one `sh` per build that runs anything, works
wherever there is a POSIX shell, and kills the whole group.

What it cannot reach is in docs/architecture.md ("When pivotbuild is killed").
"""

from __future__ import annotations

import os
import subprocess
import threading

# The groups are kept as " 12 34 " so that one is removed with two expansions.
# `kill -0` finds a group gone once it is empty (a zombie its new parent has
# not reaped yet still counts: then the SIGKILL simply finds nothing to do).
_WATCHDOG = """
groups=' '
while read -r op g; do
    case $op in
        +) groups="$groups$g " ;;
        -) groups="${groups%% $g *} ${groups#* $g }" ;;
    esac
done
set -- $groups
[ $# -eq 0 ] && exit 0
for g do kill -s TERM -- "-$g" 2>/dev/null; done
i=0
while [ $i -lt 20 ]; do
    left=
    for g do kill -s 0 -- "-$g" 2>/dev/null && left="$left $g"; done
    [ -z "$left" ] && exit 0
    set -- $left
    sleep 0.1
    i=$((i + 1))
done
for g do kill -s KILL -- "-$g" 2>/dev/null; done
"""


class Lifeline:
    """The watchdog of one build's stages; `hold` and `release` may be called
    from any thread.  Best effort: if the watchdog cannot be started, or dies,
    stages run as before, without this protection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._started = False

    def hold(self, pgid: int) -> None:
        """Kill process group `pgid` if this process dies before `release(pgid)`."""
        self._send(f"+ {pgid}\n", start=True)

    def release(self, pgid: int) -> None:
        """The stage of group `pgid` has ended: its group is no longer ours to kill
        (its number may soon be another's)."""
        self._send(f"- {pgid}\n", start=False)

    def close(self) -> None:
        """Once no stage runs: let the watchdog exit (it finds no group to kill)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._proc is not None:
                self._proc.wait()
                self._proc = None

    def _send(self, line: str, start: bool) -> None:
        with self._lock:
            if start and not self._started:
                self._started = True
                self._start()
            if self._fd is None:
                return
            try:
                os.write(self._fd, line.encode())  # shorter than PIPE_BUF: written whole
            except OSError:  # the watchdog is gone: the stages only lose this protection
                os.close(self._fd)
                self._fd = None

    def _start(self) -> None:
        read_end, write_end = os.pipe()  # not inherited by stages: only we keep it open
        try:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", _WATCHDOG],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # not stopped by the Ctrl-C or kill meant for the build's own group
            )
        except OSError:
            os.close(write_end)
            return
        finally:
            os.close(read_end)
        self._fd = write_end
