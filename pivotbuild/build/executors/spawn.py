"""Starting a stage's process: with `os.posix_spawn` where that starts the
process `subprocess.Popen` would (but for one detail, below), else with Popen.

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

Popen closes every descriptor above 2 in the child (`close_fds`); a spawned
child would inherit those that are inheritable (say, a make jobserver's pipe
pivotbuild itself inherited).  Python opens none inheritable, so those are
the ones pivotbuild started with: `Starter` lists them once, when the build
starts, and closes them in each child.  (A descriptor some other code makes
inheritable during the build would reach the stages started after it.)

As Popen (`restore_signals`), SIGPIPE and SIGXFSZ, which Python ignores,
are reset to their defaults in the child; `setsid` gives it a session (and
process group) of its own, as `start_new_session`.  One difference remains:
glibc's posix_spawn leaves its two internal signals (32 and 33) ignored in
the child, and an exec keeps them so; glibc programs take them back when
they start (CPython's own subprocess starts children this way where it can).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

_DEFAULTS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))


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
    `returncode` once reaped (negative: killed by that signal), `poll`, `wait`."""

    __slots__ = ("as_shell", "pid", "returncode")

    def __init__(self, pid: int, *, as_shell: bool = False) -> None:
        self.pid = pid
        self.returncode: int | None = None
        # Started in the shell's stead: killed by signal N, it ends with the
        # shell's status for that, 128 + N (the build's own kills aside: the
        # runner knows those).
        self.as_shell = as_shell

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
        return 128 - code if code < 0 and self.as_shell else code

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


class Starter:
    """Starts the processes of one build (see the module's docstring for when
    it can spawn them); with `spawn=False`, always through Popen."""

    def __init__(self, *, spawn: bool = True) -> None:
        self.spawns = spawn and _glibc_at_least(2, 29) and hasattr(os, "posix_spawn")
        self.closes: list[tuple[int, int]] = []
        self._names: dict[str, bool] = {}  # a variable's name -> whether the shell passes it on as it is
        self._pwds: dict[str | None, str] = {}  # a stage's PWD -> the PWD the shell would pass on
        if self.spawns:
            inherited = _inheritable_above_2()
            if inherited is None:
                self.spawns = False
            else:
                self.closes = [(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited]

    def start(
        self,
        argv: tuple[str, ...],
        cwd: Path | None,
        env: Mapping[str, str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
    ) -> Child | subprocess.Popen[bytes]:
        """`argv` started in `cwd` (None: ours) with `env`, its standard
        streams these descriptors, in a session of its own.  Raises OSError
        if it cannot start (as Popen: the program missing, not executable...)."""
        if self.spawns and "/" in argv[0] and min(stdin, stdout, stderr) > 2 and (cwd is None or _is_ours(cwd)):
            direct = self._direct(argv, env)
            if direct is not None:
                program, args, redirect, env_as_shell = direct
                out = (os.POSIX_SPAWN_DUP2, stdout, 1) if redirect is None else (os.POSIX_SPAWN_OPEN, 1, *redirect)
                actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stderr, 2), *self.closes, out]
                try:
                    pid = os.posix_spawn(
                        program,
                        args,
                        env_as_shell,
                        file_actions=actions,
                        setsid=True,
                        setsigdef=_DEFAULTS,
                        setsigmask=(),  # (the shell unblocks every signal)
                    )
                except OSError:
                    pass  # the shell then starts it, and says what is wrong as it always has
                else:
                    return Child(pid, as_shell=True)
            actions = [
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_DUP2, stdout, 1),
                (os.POSIX_SPAWN_DUP2, stderr, 2),
                *self.closes,
            ]
            return Child(os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True, setsigdef=_DEFAULTS))
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
        )

    def _direct(
        self, argv: tuple[str, ...], env: Mapping[str, str]
    ) -> tuple[str, list[str], tuple[str, int, int] | None, Mapping[str, str]] | None:
        """A stage script so simple that `/bin/sh -e -c` would only split it
        into words and start one program, maybe with its output sent to a
        file: (the program's path, its arguments, (file, open flags, mode) or
        None, the environment the shell would give it).  None for anything
        else, which the shell runs.

        As make does for a command without shell syntax: it saves starting
        the shell, half the CPU a short stage costs (2.45 against 1.21 ms
        measured here for `md5sum A B > OUT`).  Only the default shell, only
        words of plain characters (no quote, `$`, glob, `~`, `#`, `;`, `&`,
        `|`, `<`, parenthesis, brace or backslash), no assignment, no builtin
        or reserved word first, a program found on the stage's PATH as the
        shell would find it, and at most one `>` or `>>` standing alone
        before the last word, to a file outside /dev and /proc (where it
        could name one of our own descriptors); an environment the shell
        would pass on as it is but for `PWD` (`_with_pwd`).  A program killed
        by a signal ends as the shell's would (`Child`: 128 + the signal)."""
        if len(argv) != 4 or argv[:3] != ("/bin/sh", "-e", "-c") or not _PLAIN.issuperset(argv[3]):
            return None
        words = argv[3].split()
        redirect = None
        if ">" in argv[3]:
            if len(words) < 3 or words[-2] not in (">", ">>") or ">" in words[-1] or any(">" in w for w in words[:-2]):
                return None
            if not _plain_target(words[-1]):
                return None
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if words[-2] == ">>" else os.O_TRUNC)
            redirect = (words[-1], flags, 0o666)
            words = words[:-2]
        if not words or "=" in words[0] or words[0] in _SHELL_WORDS or words[0].startswith("-"):
            return None
        if not all(map(self._passed_on, env)):
            return None
        program = _which(words[0], env.get("PATH"))
        return None if program is None else (program, words, redirect, self._with_pwd(env))

    def _passed_on(self, name: str) -> bool:
        """Whether the shell passes variable `name` on as it is: a shell name
        (dash drops others), and not one it sets itself (`PWD` aside)."""
        known = self._names.get(name)
        if known is None:
            known = self._names[name] = (
                name.isascii()
                and name.replace("_", "a").isalnum()
                and not name[0].isdigit()
                and name not in ("IFS", "OPTIND", "PPID", "PS1", "PS2", "PS4")
            )
        return known

    def _with_pwd(self, env: Mapping[str, str]) -> Mapping[str, str]:
        """`env` as the shell passes it on: `PWD` kept if it names our directory
        (maybe through a symlink), else set to our directory's real path, as
        dash sets it when it starts."""
        pwd = env.get("PWD")
        if pwd not in self._pwds:
            right = False
            if pwd and pwd.startswith("/"):
                try:
                    st, dot = os.stat(pwd), os.stat(".")
                    right = (st.st_dev, st.st_ino) == (dot.st_dev, dot.st_ino)
                except OSError:
                    pass
            self._pwds[pwd] = pwd if right and pwd else os.getcwd()
        fixed = self._pwds[pwd]
        return env if fixed == pwd else {**env, "PWD": fixed}


def _plain_target(path: str) -> bool:
    """Whether `path` is a file a redirect may open in our stead: missing or
    a regular file (not a link, which could lead to /proc/self/fd: our own
    descriptors are still open where the child opens it), in a directory
    outside /dev and /proc."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    where = os.path.realpath(os.path.dirname(path) or ".")
    return not (where + "/").startswith(("/dev/", "/proc/"))


def _which(name: str, path: str | None) -> str | None:
    """Where the shell finds program `name` on `path` (looked up each time: a
    stage may install one); None where only the shell should say (not found,
    no PATH, an empty or relative entry)."""
    if "/" in name:
        return name
    for directory in path.split(":") if path else ():
        if not directory.startswith("/"):
            return None  # the current directory, or relative to it: left to the shell
        candidate = f"{directory}/{name}"
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


# Characters a word may hold for `Starter._direct`; and what a stage's script
# may hold at all then (the words, blanks between them, `>`).
_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./,:=+@%-")
_PLAIN = _WORD | frozenset(" \t>")
# dash's builtins and reserved words: the shell's own, not a program on PATH.
_SHELL_WORDS = frozenset(
    ". : [ alias bg break cd chdir command continue echo eval exec exit export false fc fg getopts hash jobs kill"  # noqa: SIM905
    " local printf pwd read readonly return set shift test times trap true type ulimit umask unalias unset"
    " wait ! case do done elif else esac fi for if in then until while { } [[ ]] function select time".split()
)


def _is_ours(cwd: Path) -> bool:
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
