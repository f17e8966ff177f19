"""A stage script the shell would only split into words and start one
program with: started without the shell, as GNU make starts a command with
no shell syntax (`PlainCommands.direct`; spawn.Starter starts it).  The
rules are dash's, the default shell's: what it treats as plain, where it
finds a program, what environment it passes on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

# A plain script as `PlainCommands.plain` reads it: the words that start its
# program, and the file its output goes to (path, open flags, mode) or None.
Plain = tuple[list[str], tuple[str, int, int] | None]
# (the program's path, its arguments, the file its output goes to (path, open
# flags, mode) or None, the environment the shell would give it)
Direct = tuple[str, list[str], tuple[str, int, int] | None, Mapping[str, str]]

_TRUNCATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND


class PlainCommands:
    """The plain-command rules for one build, with what they look up once
    (which variable names the shell passes on, the PWD it would give)."""

    def __init__(self) -> None:
        self._names: dict[str, bool] = {}  # a variable's name -> whether the shell passes it on as it is
        self._passing: set[str] = set()  # the names of those it does (checked at once: C, not a call per name)
        self._pwds: dict[str | None, str] = {}  # a stage's PWD -> the PWD the shell would pass on
        self._dirs: dict[tuple[int, int], bool] = {}  # a directory (device, inode) -> outside /dev and /proc
        self._searched: dict[str, bool] = {}  # a PATH -> whether the child may search it (`_searchable`)
        self._read: tuple[tuple[str, ...], Plain | None] | None = None  # (see `plain`'s `keep`)

    def plain(self, argv: tuple[str, ...], *, keep: bool = False, kept: bool = False) -> Plain | None:
        """A stage script so simple that `/bin/sh -e -c` would only split it
        into words and start one program, maybe with its output sent to a
        file: (the program's words, (file, open flags, mode) or None).  None
        for anything else, which the shell runs.

        Only the default shell, only words of plain characters (no quote,
        `$`, glob, `~`, `#`, `;`, `&`, `|`, `<`, parenthesis, brace or
        backslash), no assignment, no builtin or reserved word first, and at
        most one `>` or `>>` standing alone before the last word, to a file
        a redirect may open in our stead (`_plain_target`: not a link, in a
        directory outside /dev and /proc, where it could name one of our own
        descriptors).  Relative paths are ours: only for a stage that runs
        in our directory.

        Where it names a file, nothing the script runs can write to the
        stage's stdout, whether we start the program (`direct`) or the shell
        does (which then writes nothing there of its own): the stage needs no
        pipe for it.  (Not so for a builtin, whose effect may outlast its
        redirect: `. ./lib.sh > log` setting a trap.)

        With `keep`, the answer is kept for the next call with `kept` and
        the same argv (the same tuple): a stage's start reads its script
        twice, for the output its `>` empties and to start it, a moment
        apart (its target checked once).  A call with `kept` drops what was
        kept, whether it takes it or not."""
        if kept:
            read, self._read = self._read, None
            if read is not None and read[0] is argv:
                return read[1]
        found = self._plain(argv)
        if keep:
            self._read = (argv, found)
        return found

    def _plain(self, argv: tuple[str, ...]) -> Plain | None:
        words = _plain_words(argv)
        if words is None:
            return None
        redirect = None
        if ">" in argv[3]:
            sent = _sent_to(words)
            if sent is None:
                return None
            words = words[:-2]
            if not _a_program(words) or not _plain_target(sent[0], self._dirs):
                return None
            redirect = (sent[0], _APPEND if sent[1] else _TRUNCATE, 0o666)
        elif not _a_program(words):
            return None
        return words, redirect

    def direct(self, argv: tuple[str, ...], env: Mapping[str, str], plain: Plain | None = None) -> Direct | None:
        """A plain stage script (`plain`: what `PlainCommands.plain` found for
        `argv`, else looked for now) as the program to start in the shell's
        stead: (the program's path, its arguments, (file, open flags, mode)
        or None, the environment the shell would give it).  None where only
        the shell can run it as the shell would.

        As make does for a command without shell syntax: it saves starting
        the shell, half the CPU a short stage costs (2.45 against 1.21 ms
        measured here for `md5sum A B > OUT`).  Beyond `plain`'s rules: a
        program found on the stage's PATH as the shell would find it, and an
        environment the shell would pass on as it is but for `PWD`
        (`_with_pwd`).  A program killed by a signal ends as the shell's
        would (spawn.Child: 128 + the signal)."""
        if plain is None:
            plain = self.plain(argv)
            if plain is None:
                return None
        words, redirect = plain
        if not self._passing.issuperset(env) and not all(map(self._passed_on, env)):
            return None
        path = env.get("PATH")
        program = words[0] if "/" not in words[0] and self._searchable(path) else _which(words[0], path)
        return None if program is None else (program, words, redirect, self._with_pwd(env))

    def _searchable(self, path: str | None) -> bool:
        """Whether the stage's program may be looked up on `path` by the child
        (`posix_spawnp`: glibc's search, in C, while we wait for the exec
        anyway) rather than by `_which` here: `path` is this process's own
        PATH (the one glibc searches) and every entry in it is absolute (an
        empty or relative one is the shell's to interpret).  A program not
        found, not executable or not a binary then fails the spawn, and the
        shell runs the script, as where `_which` finds nothing."""
        if path is None:
            return False
        known = self._searched.get(path)
        if known is None:
            entries = path.split(":")
            known = self._searched[path] = all(e.startswith("/") for e in entries)
        return known and path == os.environ.get("PATH")

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
            if known:
                self._passing.add(name)
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


def _plain_words(argv: tuple[str, ...]) -> list[str] | None:
    """The words of a stage script of plain characters only (see
    `PlainCommands.direct`), as `/bin/sh -e -c` would split them; None for
    any other script or shell."""
    if len(argv) != 4 or argv[:3] != ("/bin/sh", "-e", "-c") or not _PLAIN.issuperset(argv[3]):
        return None
    return argv[3].split()


def _a_program(words: list[str]) -> bool:
    """Whether a plain script's `words` (its redirect aside) start a program:
    no assignment, builtin or reserved word first (the shell's own)."""
    return bool(words) and "=" not in words[0] and words[0] not in _SHELL_WORDS and not words[0].startswith("-")


def _sent_to(words: list[str]) -> tuple[str, bool] | None:
    """Where a plain script's `words` send its standard output: (the file,
    whether appended) for one `>` or `>>` standing alone before the last
    word, and no other `>`; None for anything else."""
    if len(words) < 3 or (sign := words[-2]) not in (">", ">>") or "".join(words).count(">") != len(sign):
        return None  # (no `>` in any other word)
    return words[-1], sign == ">>"


def _plain_target(path: str, dirs: dict[tuple[int, int], bool]) -> bool:
    """Whether `path` is a file a redirect may open in our stead: missing or
    a regular file (not a link, which could lead to /proc/self/fd: our own
    descriptors are still open where the child opens it), in a directory
    outside /dev and /proc.  `dirs` remembers the answer for a directory by
    its device and inode (a directory has one path: one `stat`, not a
    `realpath` walk of every component, for each stage)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    cut = path[: path.rfind("/") + 1]  # (os.path.dirname's answer, without its calls: one per stage)
    directory = cut.rstrip("/") or cut or "."
    try:
        st = os.stat(directory)
    except OSError:
        return _outside_dev_and_proc(directory)
    key = (st.st_dev, st.st_ino)
    outside = dirs.get(key)
    if outside is None:
        outside = dirs[key] = _outside_dev_and_proc(directory)
    return outside


def _outside_dev_and_proc(directory: str) -> bool:
    where = os.path.realpath(directory)
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
        # (access first: most entries lack the program, and it says so
        # without the exception a failed stat raises in Python)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return None


# Characters a word may hold for `PlainCommands.direct`; and what a stage's script
# may hold at all then (the words, blanks between them, `>`).
_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./,:=+@%-")
_PLAIN = _WORD | frozenset(" \t>")
# dash's builtins and reserved words: the shell's own, not a program on PATH.
_SHELL_WORDS = frozenset(
    ". : [ alias bg break cd chdir command continue echo eval exec exit export false fc fg getopts hash jobs kill"  # noqa: SIM905
    " local printf pwd read readonly return set shift test times trap true type ulimit umask unalias unset"
    " wait ! case do done elif else esac fi for if in then until while { } [[ ]] function select time".split()
)
