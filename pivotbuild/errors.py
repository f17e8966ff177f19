"""The user-facing errors: one root, `PivotError`, and subclasses that carry data.

A `PivotError` is something the user can act on; the command line prints it and
exits with its `exit_code`.  Anything else that escapes is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pivotbuild.structs import struct

# The exit statuses (CLI.md): the build's own three, then usage and internal errors.
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
EXIT_USAGE, EXIT_BUG = 2, 3


@struct(frozen=True, slots=True)
class Location:
    """A position in a source file: 1-based line and column."""

    path: str
    line: int
    col: int


@struct(frozen=True, slots=True)
class Diagnostic:
    """One located problem in a Pivotfile (or a params file it reads).

    `severity` is "error", "warning" or "note"; `notes` point at the other
    places involved (the first stage writing a path two stages write)."""

    loc: Location
    message: str
    source_line: str = ""
    severity: str = "error"
    notes: tuple[Diagnostic, ...] = ()

    def render(self) -> str:
        """`PATH:LINE:COL: error: MESSAGE`, then the source line and a caret; then each note, alike."""
        head = f"{self.loc.path}:{self.loc.line}:{self.loc.col}: {self.severity}: {self.message}"
        if self.source_line:
            line = self.source_line.rstrip("\r\n")
            # Keep tabs before the caret so it lines up under the same character.
            prefix = "".join(c if c == "\t" else " " for c in line[: max(self.loc.col - 1, 0)])
            head = f"{head}\n    {line}\n    {prefix}^"
        return "\n".join([head, *(n.render() for n in self.notes)])


class PivotError(Exception):
    """An error the user can act on.  `str()` is the message without any prefix."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PivotfileError(PivotError):
    """One or more located problems in Pivotfiles; rendered compiler-style."""

    advice = "fix the Pivotfile and run again"

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        # The same mistake can surface once per matrix variant: report it once.
        unique = {(d.loc, d.message): d for d in diagnostics}
        diags = sorted(unique.values(), key=lambda d: (d.loc.path, d.loc.line, d.loc.col))
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diags)
        count = len(self.diagnostics)
        noun = "error" if count == 1 else "errors"
        files = sorted({d.loc.path for d in self.diagnostics})
        super().__init__(f"{count} {noun} in {', '.join(files)}; {self.advice}")

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)


class GraphError(PivotfileError):
    """The stages do not form a valid build graph (two stages writing one path,
    an output inside another's output directory, a cycle), located at the
    stages and the words involved."""


class CycleError(GraphError):
    """Stages depend on each other in a loop (and nothing else is wrong);
    `cycle` lists the first loop's stages, the first repeated last."""

    def __init__(self, cycle: Sequence[str], diagnostics: Iterable[Diagnostic]) -> None:
        self.cycle = tuple(cycle)
        super().__init__(diagnostics)


class PyStageError(PivotfileError):
    """`py:` stages whose module or function is missing, or whose code does
    not parse, located at the `py:` field or in the Python file."""

    advice = "fix the Python code or the py: fields and run again"


class MissingInputs(PivotfileError):
    """Deps that no stage writes and that do not exist, located where they are listed."""

    advice = "create the missing files or fix the deps"


class TargetError(PivotError):
    """A target on the command line names no stage or output."""


class UsageError(PivotError):
    """Bad command-line usage that click itself cannot see."""


class ProjectError(PivotError):
    """The project cannot be loaded: no Pivotfile, an include loop, and the like."""
