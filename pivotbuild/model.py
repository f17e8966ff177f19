"""The compiled pipeline: immutable `Stage` records, the unit every later step works on.

Paths in these records are POSIX-style and relative to the project root
(absolute only for deps outside it).  A stage's identity is its pipeline
directory plus its name, so stages of several pipelines can share one graph.
"""

from __future__ import annotations

import posixpath
from collections import namedtuple
from collections.abc import Sequence
from enum import Enum

from pivotbuild.errors import Location
from pivotbuild.state.stamps import Source
from pivotbuild.structs import field, struct

# What shlex.quote leaves unquoted (its `[^\w@%+=:,./-]`, ASCII).
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-")
_SAFE_OR_SPACE = _SAFE | {" "}  # (safe paths, joined by spaces)

DEFAULT_SHELL = ("/bin/sh", "-e")


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class _StageId(NamedTuple):
        pipeline: str
        name: str

else:  # (typing's NamedTuple makes the same: a build does not import typing, 2 to 3 ms)
    _StageId = namedtuple("StageId", ("pipeline", "name"))


class StageId(_StageId):
    """(pipeline directory relative to the root, "" for the root; stage name).

    A named tuple rather than a dataclass: ids key every map of the scheduler,
    and a tuple hashes and compares in C (a 1,000-stage build hashes ids
    about 270,000 times)."""

    __slots__ = ()

    def label(self, current: str = "") -> str:
        """The name as typed on the command line from pipeline `current`: `train`, or `sub:train`."""
        return self.name if self.pipeline == current else f"{self.pipeline or '.'}:{self.name}"

    def __str__(self) -> str:
        return self.label()


# A dep's or out's `pos` is the (line, column) of the word that named it in its
# stage's Pivotfile (`Stage.at` makes it a Location), for locating graph errors.
# It is not part of what the path means (equal paths compare equal), and a
# plain tuple: a compiled plan restores thousands without building an object each.
Pos = tuple[int, int]


@struct(frozen=True, slots=True)
class Dep:
    """A path a stage reads (`deps:`): a file, a directory (its whole tree), or a glob."""

    path: str
    is_glob: bool = False
    dir_hint: bool = False  # written with a trailing slash
    pos: Pos | None = field(default=None, compare=False)


@struct(frozen=True, slots=True)
class Out:
    """A path a stage writes (`outs:`), with its options."""

    path: str
    is_dir: bool = False  # written with a trailing slash
    cache: bool = True
    persist: bool = False
    incremental: bool = False
    pos: Pos | None = field(default=None, compare=False)


@struct(frozen=True, slots=True)
class Param:
    """A params-file value a stage reads (`params:`)."""

    file: str  # relative to the project root
    key: str
    value_json: str  # canonical JSON: sorted keys, no spaces


class AutoVar(Enum):
    """The automatic variables of `run:` scripts."""

    OUTS = "@"
    FIRST_DEP = "<"
    ALL_DEPS = "^"

    # Hashed by identity, in C, as `events.Status` is (Enum's own hashes the
    # name in Python: a compiled plan numbers each script's variables by them).
    __hash__ = object.__hash__


_OUTS, _FIRST_DEP = AutoVar.OUTS, AutoVar.FIRST_DEP  # (looked up once: render_command runs per stage)

Command = tuple[str | AutoVar, ...]


@struct(frozen=True, slots=True)
class Stage:
    """One stage of a pipeline, as compiled: what it reads, writes and runs."""

    id: StageId
    base: str  # the name before `@` (the matrix base), or the name itself
    loc: Location  # the stage's name in `stage NAME:`
    command: Command | None  # the run: script with `$@ $< $^` still to fill in
    py: str | None = None  # module:function
    py_loc: Location | None = field(default=None, compare=False)  # where `py:` names it (as `pos`)
    matrix: tuple[tuple[str, str], ...] = ()
    desc: str = ""
    deps: tuple[Dep, ...] = ()
    outs: tuple[Out, ...] = ()
    params: tuple[Param, ...] = ()
    shell: tuple[str, ...] = DEFAULT_SHELL
    mutex: tuple[str, ...] = ()
    jobs: int = 1
    mem: int = 0  # bytes
    timeout: float | None = None  # seconds
    retry: int = 0
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""  # relative to the root; "" is the root itself
    always: bool = False

    @property
    def name(self) -> str:
        return self.id.name

    @property
    def has_globs(self) -> bool:
        return any(d.is_glob for d in self.deps)

    def render_command(self, expanded_deps: Sequence[str] | None = None) -> str:
        """The script with `$@ $< $^` replaced by shell-quoted paths relative to the
        stage's working directory.  `expanded_deps` replaces the declared deps once
        globs have been expanded (build time); without it globs appear as written."""
        if self.command is None:
            return ""
        deps = expanded_deps if expanded_deps is not None else [d.path for d in self.deps]
        pieces: list[str] = []
        for part in self.command:
            if part.__class__ is str:
                pieces.append(part)
            elif part is _OUTS:
                pieces.append(self._quoted([o.path for o in self.outs]))
            elif part is _FIRST_DEP:
                pieces.append(self._quoted(deps[:1]))
            else:
                pieces.append(self._quoted(deps))
        return "".join(pieces)

    def _quoted(self, paths: Sequence[str]) -> str:
        if not self.workdir:  # (paths as they are: the common case, without a call per path)
            joined = " ".join(paths)
            if joined.count(" ") == len(paths) - 1 and "" not in paths and _SAFE_OR_SPACE.issuperset(joined):
                return joined  # (every path non-empty and safe: one check of them all)
            import shlex  # (only for a path that needs quoting: most builds have none)

            return " ".join([p if p and _SAFE.issuperset(p) else shlex.quote(p) for p in paths])
        import shlex

        return " ".join(shlex.quote(self.relative(p)) for p in paths)

    def at(self, pos: Pos | None) -> Location:
        """Where `pos` (a dep's or out's) is in this stage's Pivotfile; the stage's name if not known."""
        return self.loc if pos is None else Location(self.loc.path, *pos)

    def relative(self, path: str) -> str:
        """`path` (root-relative or absolute) as seen from the stage's working directory."""
        if posixpath.isabs(path) or not self.workdir:
            return path
        return posixpath.relpath(path, self.workdir)


@struct(frozen=True, slots=True)
class TargetRef:
    """A target written in a Pivotfile (`default`), kept with its location."""

    text: str
    loc: Location


@struct(frozen=True, slots=True)
class IncludeRef:
    """An `include` in a Pivotfile, kept with its location."""

    path: str  # as written, relative to the pipeline directory
    loc: Location


@struct(frozen=True, slots=True)
class Pipeline:
    """One compiled Pivotfile."""

    dir: str  # relative to the root, "" for the root
    file: str  # the Pivotfile, relative to the root
    name: str
    stages: Sequence[Stage]  # a tuple, or (a restored plan's) a restored.StagesOf, equal to the tuple
    default: tuple[TargetRef, ...] = ()
    includes: tuple[IncludeRef, ...] = ()
    params_files: tuple[str, ...] = ()  # relative to the root, read or looked for
    inputs: tuple[Source, ...] = ()  # those params files, as they were when read
