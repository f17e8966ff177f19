"""Starting a stage's process: by a clone that does not wait for its exec
(`_clonespawn`, below), else with `os.posix_spawn`, where either starts the
process `subprocess.Popen` would (but for one detail, below); else with Popen.

Popen costs the build loop about 60 us of Python per stage beyond the
system calls (its arguments checked and encoded, an error pipe, a lock, an
`ExitStack`: 160 against 100 us of CPU per start, measured on the benchmark's machine),
1,000 times in a clean build of the benchmark.  `posix_spawn` (glibc: a
`vfork`-like clone, exec errors reported to the caller, as Popen's are)
takes the same arguments in C.  It is used only where the two agree:

- the command names its program by a path (Popen searches the stage's
  `PATH`, `posix_spawnp` would search ours);
- the stage runs in our own working directory (posix_spawn cannot change
  it before Python 3.13: elsewhere Popen's `chdir`);
- stdin, stdout and stderr come from descriptors above 2 (Popen handles
  the others specially);
- the C library is glibc 2.29 or later (exec errors reported, `setsid`,
  a close of a descriptor that is not open ignored).

Both `vfork` and `posix_spawn` make the caller wait until the child has
exec'd.  When the kernel places the child on the other core, behind a
running stage, the build loop's core stands idle meanwhile: 214 ms of a
core in hardlink mode's clean build of the big benchmark (`perf sched`,
docs/performance.md).  Where this package's one C extension was built at
install (`_clonespawn.c`: Linux on x86-64 or AArch64, with a C compiler;
hatch_build.py), the child is cloned the same way but the loop does not
wait: it goes on deciding and starting while the child sets itself up and
execs.  The child does what posix_spawn's file actions below do, the same
way; an exec that fails is reported when the process is reaped
(`Child.start_error`: the runner says so as it said a spawn's error), and a
plain command that cannot be started directly starts the shell instead in
the same child (as `_spawn_stage` does on posix_spawn's error).  Where a
string cannot be handed to the C library as it is (a surrogate), the stage
is spawned by posix_spawn; where the kernel (or an emulator: qemu-user)
refuses the clone itself, every stage from then on.

Popen closes every descriptor above 2 in the child (`close_fds`); a spawned
child would inherit those that are inheritable (say, a make jobserver's pipe
pivotbuild itself inherited).  Python opens none inheritable, so those are
the ones pivotbuild started with: `Starter` lists them once, when the build
starts, and closes them in each child.  (A descriptor some other code makes
inheritable during the build would reach the stages started after it.)  The
descriptors a stage is to inherit (`pass_fds`: its job pool's, see
build/makejobs.py) are made inheritable for its spawn alone.

As Popen (`restore_signals`), SIGPIPE and SIGXFSZ, which Python ignores,
are reset to their defaults in the child, and every other signal this
process does not ignore is named to be reset too (`_reset_in_child`: the
dispositions the child had anyway, at one system call each, not two); one
it ignores stays ignored.  `setsid` gives it a session (and
process group) of its own, as `start_new_session`.  One difference remains:
glibc's posix_spawn leaves its two internal signals (32 and 33) ignored in
the child, and an exec keeps them so; glibc programs take them back when
they start (CPython's own subprocess starts children this way where it can).

A script that is one plain command is started without the shell at all
(plaincommand.py says when that starts exactly what the shell would).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (see _reset_in_child)
import errno
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from pivotbuild.build.executors.plaincommand import Plain, PlainCommands
from pivotbuild.structs import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

_CLONESPAWN_API = 1  # what this module calls _clonespawn with (its API constant)
try:
    from pivotbuild.build.executors import _clonespawn
except ImportError:  # not built at install (no C compiler, another platform): posix_spawn
    _clonespawn = None  # type: ignore[assignment]
else:
    if getattr(_clonespawn, "API", None) != _CLONESPAWN_API:  # built from another version of its source
        _clonespawn = None  # type: ignore[assignment]

# A clone of memory shared without CLONE_VFORK, refused: qemu-user (which runs
# other architectures' programs, as in multi-platform container builds) says
# EINVAL; a sandbox's filter may say EPERM or ENOSYS.
_CLONE_REFUSED = (errno.EINVAL, errno.ENOSYS, errno.EPERM)

_DEFAULTS = tuple(int(getattr(signal, name)) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))


def _reset_in_child() -> tuple[int, ...]:
    """The signals a stage's child sets to their default before its exec:
    SIGPIPE and SIGXFSZ (which Python ignores, and Popen's child resets),
    and every signal this process does not ignore (those it ignores stay
    ignored, as through Popen: a `nohup` build's stages keep SIGHUP
    ignored).  The same dispositions as glibc's own pass gives them, which
    asks the kernel for each signal not named before it sets one: named,
    each costs the child one system call, not two, while the build waits
    for its exec (62 signals: 121 `rt_sigaction` calls a spawn otherwise)."""
    # (`_signal`, signal's C half: `signal`'s own calls make an enum of each
    # answer, 0.5 ms of every build for 64 signals)
    keep = (_signal.SIGKILL, _signal.SIGSTOP)
    return tuple(
        sig
        for sig in sorted(_signal.valid_signals())
        if sig not in keep and (sig in _DEFAULTS or _signal.getsignal(sig) != _signal.SIG_IGN)
    )


class _DevNull:
    """/dev/null, opened once for every stage's stdin (subprocess.DEVNULL opens
    it for each)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._lock = threading.Lock()

    def fd(self) -> int:
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(os.devnull, os.O_RDWR)
        return self._fd


devnull = _DevNull().fd


class Child:
    """A spawned process, as much of a Popen as runner.Process uses: `pid`,
    `returncode` once reaped (negative: killed by that signal), `poll`,
    `wait`; and, cloned, why its program could not start (`start_error`)."""

    __slots__ = ("as_shell", "block", "pid", "returncode")

    def __init__(self, pid: int, *, as_shell: bool = False, block: object = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        # Started in the shell's stead: killed by signal N, it ends with the
        # shell's status for that, 128 + N (the build's own kills aside: the
        # runner knows those).
        self.as_shell = as_shell
        # Cloned by _clonespawn: the memory the child starts from, kept until it is
        # reaped, where it leaves how its exec went.
        self.block = block

    def start_error(self) -> OSError | None:
        """Once reaped, for a cloned process: the error its program could not be
        started with (as posix_spawn would have raised it), else None."""
        if self.block is None or self.returncode is None:
            return None
        err, _ = _clonespawn.outcome(self.block)
        return OSError(err, os.strerror(err)) if err else None

    def killpg(self, sig: int) -> None:
        """`sig` to its process group, before it is reaped (as `os.killpg`).  A
        cloned child that has not made its session yet (the build does not
        wait for that) gets it itself: it blocks every signal until just
        before its exec, its dispositions reset, and then acts on it."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            if self.block is None:
                raise
            os.kill(self.pid, sig)

    def poll(self) -> int | None:
        """The exit code if it has exited (reaping it), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as Popen, 0
                self.returncode = 0
            else:
                if pid == self.pid:
                    self.returncode = self._code(status)
        return self.returncode

    def _code(self, status: int) -> int:
        code = os.waitstatus_to_exitcode(status)
        if code < 0 and self.as_shell and (self.block is None or not _clonespawn.outcome(self.block)[1]):
            return 128 - code  # (not where the child started the shell itself: its own status)
        return code

    def wait(self) -> int:
        """Wait for it to exit (reaping it); its exit code."""
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                self.returncode = 0
            else:
                self.returncode = self._code(status)
        return self.returncode


class Started(Protocol):
    """A started process, as runner.Process follows it (Popen, `Child`, pystages.PyChild)."""

    returncode: int | None

    @property
    def pid(self) -> int: ...
    def poll(self) -> int | None: ...
    def wait(self) -> int: ...


class Starts(Protocol):
    """What starts a stage's process: `Starter`, or a `py:` stage's worker (pystages.py)."""

    def start(
        self,
        argv: tuple[str, ...],
        cwd: Path | None,
        env: Mapping[str, str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        pass_fds: tuple[int, ...] = (),
    ) -> Started: ...


class Starter:
    """Starts the processes of one build (see the module's docstring for when
    it can spawn them); with `spawn=False`, always through Popen; with
    `clone=False`, never by `_clonespawn`."""

    def __init__(self, *, spawn: bool = True, clone: bool = True) -> None:
        self.spawns = spawn and _glibc_at_least(2, 29) and hasattr(os, "posix_spawn")
        self.closes: list[tuple[int, int]] = []
        self.plain = PlainCommands()
        self.defaults = _reset_in_child() if self.spawns else _DEFAULTS
        if self.spawns:
            inherited = _inheritable_above_2()
            if inherited is None:
                self.spawns = False
            else:
                self.closes = [(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited]
        # (the C side passes strings as UTF-8: the file system's encoding here, as a rule)
        self.clones = self.spawns and clone and _clonespawn is not None and sys.getfilesystemencoding() == "utf-8"
        # The closes as _clonespawn's actions, (1, fd, 0) each; the defaults as its bits
        self._close_acts = [n for _, fd in self.closes for n in (1, fd, 0)]
        self._default_bits = sum(1 << (sig - 1) for sig in self.defaults)

    def start(
        self,
        argv: tuple[str, ...],
        cwd: Path | None,
        env: Mapping[str, str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        pass_fds: tuple[int, ...] = (),
    ) -> Child | subprocess.Popen[bytes]:
        """`argv` started in `cwd` (None: ours) with `env`, its standard
        streams these descriptors, in a session of its own; `pass_fds` it
        inherits too (as Popen's: made inheritable in the child alone).
        Raises OSError if it cannot start (as Popen: the program missing, not
        executable...)."""
        if self.spawns and "/" in argv[0] and min(stdin, stdout, stderr) > 2 and (cwd is None or is_ours(cwd)):
            plain = self.plain.plain(argv)
            return self._spawn_stage(argv, env, plain, stdin=stdin, stdout=stdout, stderr=stderr, keep=pass_fds)
        import subprocess  # here: where every start spawns, a build does not import it

        # No preexec_fn (nor user, group or umask): CPython then starts the
        # child with vfork, not a copy of this interpreter's memory
        # (`strace -f -e trace=vfork,clone,clone3 pivotbuild` shows one vfork()
        # per stage; see docs/performance.md).
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its own process group: we can kill the whole tree
            pass_fds=pass_fds,
        )

    def _spawn_stage(
        self,
        argv: tuple[str, ...],
        env: Mapping[str, str],
        plain: Plain | None,
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        keep: tuple[int, ...],
    ) -> Child:
        """`start` by posix_spawn: the command itself where the shell would
        only start it (`plain`: the script read as plaincommand.py reads it)."""
        direct = self.plain.direct(argv, env, plain) if plain is not None else None
        if direct is not None:
            program, args, redirect, env_as_shell = direct
            fd = -1
            try:
                if redirect is None:
                    out: tuple[object, ...] = (os.POSIX_SPAWN_DUP2, stdout, 1)
                else:  # opened here, not in the child: see `_opened`
                    fd = _opened(*redirect)
                    out = (os.POSIX_SPAWN_DUP2, fd, 1) if fd >= 0 else (os.POSIX_SPAWN_OPEN, 1, *redirect)
                if self.clones:  # (the shell started in the same child if the program cannot be)
                    shell = (argv[0], argv, env, stdout)
                    cloned = self._clone(
                        program,
                        args,
                        env_as_shell,
                        stdin=stdin,
                        out=out,
                        stderr=stderr,
                        keep=keep,
                        unblock=True,
                        shell=shell,
                    )
                    if cloned is not None:
                        return cloned
                # (mask: the shell unblocks every signal)
                pid = self._spawn(program, args, env_as_shell, stdin=stdin, out=out, stderr=stderr, keep=keep, mask=())
                return Child(pid, as_shell=True)
            except OSError:
                pass  # the shell then starts it, and says what is wrong as it always has
            finally:
                if fd >= 0:
                    os.close(fd)
        out = (os.POSIX_SPAWN_DUP2, stdout, 1)
        if self.clones:
            cloned = self._clone(argv[0], argv, env, stdin=stdin, out=out, stderr=stderr, keep=keep)
            if cloned is not None:
                return cloned
        return Child(self._spawn(argv[0], list(argv), env, stdin=stdin, out=out, stderr=stderr, keep=keep))

    def _clone(
        self,
        program: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        stdin: int,
        out: tuple[object, ...],
        stderr: int,
        keep: tuple[int, ...],
        unblock: bool = False,
        shell: tuple[str, Sequence[str], Mapping[str, str], int] | None = None,
    ) -> Child | None:
        """`_spawn` by `_clonespawn`, with the same file actions in the same
        order, not waiting for the exec: `unblock` every signal, else ours
        kept; `shell` (its program, argv, environment and stdout) started in
        the child instead if `program` cannot be.  None where a string cannot
        be passed as it is, or the clone itself is refused (then `_spawn`)."""
        acts: list[object] = [0, stdin, 0, 0, stderr, 2, *self._close_acts]
        for fd in keep:
            acts += (0, fd, fd)
        path: object = None
        mode: object = 0
        if out[0] == os.POSIX_SPAWN_DUP2:
            acts += (0, out[1], 1)
        else:  # POSIX_SPAWN_OPEN, onto 1
            _, to, path, flags, mode = out
            acts += (2, flags, to)
        search = None if "/" in program else os.environ.get("PATH", "")
        instead = None if shell is None else (shell[0], shell[1], _dict(shell[2]), shell[3])
        try:
            pid, block = _clonespawn.start(
                program, search, args, _dict(env), unblock, acts, path, mode, self._default_bits, instead
            )
        except ValueError:
            return None
        except OSError as exc:
            if exc.errno not in _CLONE_REFUSED:
                raise
            self.clones = False  # (the kernel, or an emulator, refuses this clone: posix_spawn from now on)
            return None
        return Child(pid, as_shell=shell is not None, block=block)

    def _spawn(
        self,
        program: str,
        args: list[str],
        env: Mapping[str, str],
        *,
        stdin: int,
        out: tuple[object, ...],
        stderr: int,
        keep: tuple[int, ...] = (),
        mask: tuple[int, ...] | None = None,
    ) -> int:
        """posix_spawn `program` in a session of its own, its stdout set up by
        `out` (a file action) last, after what the build inherited is closed;
        `keep` it inherits as they are (a descriptor duplicated onto itself
        loses its close-on-exec flag in the child alone: glibc 2.29, POSIX 2024)."""
        kept = [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in keep]
        actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stderr, 2), *self.closes, *kept, out]
        # (a bare name is looked up on our PATH by the child: see PlainCommands._searchable)
        spawn = os.posix_spawn if "/" in program else os.posix_spawnp
        if mask is None:
            return spawn(program, args, env, file_actions=actions, setsid=True, setsigdef=self.defaults)
        return spawn(program, args, env, file_actions=actions, setsid=True, setsigdef=self.defaults, setsigmask=mask)


def _dict(env: Mapping[str, str]) -> dict[str, str]:
    return env if type(env) is dict else dict(env)


def _opened(path: str, flags: int, mode: int) -> int:
    """The file a plain command's `> FILE` names, opened (as the shell would
    open it) by the build loop, for the child to get as its stdout: -1 if
    the descriptor would be 0 to 2.

    Opened here, not by a file action in the child.  The loop waits for the
    child until its exec either way, but where creating a file is slow (ext4
    without a journal skips the inodes freed in the last minutes, reading
    each one's deletion time: benchmarks/creation.py) the vfork child paid
    for it after waiting for a core, the loop's own core idle meanwhile.
    The small lattice's clean build of fresh projects: the creation and the
    spawn together 0.68 against 0.90 ms a stage (docs/performance.md, the
    twenty-fifth session).

    A file that exists is emptied by an open of its own, closed at once,
    and then opened again without O_TRUNC for the child (`_emptied_apart`).

    The descriptor is not inheritable (as Python opens every one): only the
    child's duplicate, its stdout, is.  One at 0 to 2 (this process started
    with one of those closed) would be overwritten by the child's stdin or
    stderr before being duplicated: it is closed, and the child opens the
    file itself."""
    fd = _emptied_apart(path, flags, mode) if flags & os.O_TRUNC else os.open(path, flags, mode)
    if fd > 2:
        return fd
    os.close(fd)
    return -1


def _emptied_apart(path: str, flags: int, mode: int) -> int:
    """`os.open(path, flags, mode)` for `flags` with O_TRUNC, the file the
    same when the child starts (emptied, or created), but not emptied by
    the descriptor the child writes through.

    ext4, XFS and btrfs take a file emptied by an open and then written as
    one being replaced in place, and start writing its data to disk as
    that open's file is last closed (ext4's `auto_da_alloc`): for a stage's
    output, at the stage's exit, which then waits for the blocks to be
    allocated, and the next rebuild's emptying frees them again (with
    `discard`, here, a wait for the device).  Emptied by an open closed at
    once, with nothing yet to write, the file is written through the
    second as a new file is: its blocks allocated when the kernel writes
    it back (seconds later), and a rebuild before that empties it for
    nothing.  The small lattice's incremental build here: the loop's opens
    4.9 to 0.9 ms a build, and the build 0.90 and 0.93 of its time
    (docs/performance.md, the thirty-first session).  A missing file is
    created by one open, as before."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        return os.open(path, flags, mode)
    os.close(fd)
    return os.open(path, flags & ~os.O_TRUNC, mode)


def begin(
    starter: Starts,
    argv: tuple[str, ...],
    cwd: Path | None,
    env: Mapping[str, str],
    *,
    stdin: int,
    stderr: int,
    pass_fds: tuple[int, ...] = (),
) -> tuple[Started, int]:
    """`starter.start`, with the stage's stdout a pipe of its own: the
    process, and the pipe's read end; or, -1 and /dev/null for its stdout,
    where nothing the stage runs can write to it (with our own `Starter`: a
    plain command sending its output to a file, PlainCommands.plain, in our
    own directory, where the file is checked), so there is no pipe to watch
    close.  Raises OSError as `start` does (the pipe closed)."""
    plain: Plain | None = None
    spawner: Starter | None = None  # ours, where it may posix_spawn the stage
    if isinstance(starter, Starter) and (cwd is None or is_ours(cwd)):
        plain = starter.plain.plain(argv, kept=True)
        spawner = starter if starter.spawns and "/" in argv[0] else None
    if plain is not None and plain[1] is not None:
        out_r, out_w = -1, devnull()
    else:
        out_r, out_w = os.pipe()
    try:
        if spawner is not None and min(stdin, out_w, stderr) > 2:
            child = spawner._spawn_stage(argv, env, plain, stdin=stdin, stdout=out_w, stderr=stderr, keep=pass_fds)
            return child, out_r
        return starter.start(argv, cwd, env, stdin=stdin, stdout=out_w, stderr=stderr, pass_fds=pass_fds), out_r
    except BaseException:
        if out_r >= 0:
            os.close(out_r)
        raise
    finally:
        if out_r >= 0:
            os.close(out_w)  # the child has its copy: end of file comes when it (and its children) close it


def is_ours(cwd: Path) -> bool:
    """Is `cwd` this process's working directory (by name)?"""
    try:
        return str(cwd) == os.getcwd()
    except OSError:  # ours was removed: only Popen's chdir reaches `cwd`
        return False


def _inheritable_above_2() -> list[int] | None:
    """The inheritable descriptors above 2 (None if that cannot be told)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return None
    found = []
    for fd in fds:
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError as exc:  # (the listing's own descriptor, closed since)
                if exc.errno != errno.EBADF:
                    return None
    return found


def _glibc_at_least(major: int, minor: int) -> bool:
    """Whether this process runs on glibc `major.minor` or later."""
    try:
        name, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").split()
        found = tuple(int(x) for x in version.split(".")[:2])
    except (AttributeError, ValueError, OSError):
        return False
    return name == "glibc" and found >= (major, minor)
