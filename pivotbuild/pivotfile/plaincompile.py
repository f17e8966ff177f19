"""The compiler's way with plain stages (plainstage.py's `PlainStage`): most
stages of a large Pivotfile, compiled straight from their words, without the
syntax records the general path reads (`_Compiler._stage`).  A part of the
compiler (compiler.py), which mixes it in, as fields.py; the checks are the
compiler's own (`_dep`, `_out`, the expander's `script`), so a stage compiled
here is the one the general path makes of `PlainStage.decl()`, errors
included: the suite's compile helper (tests/conftest.py) compiles every text
of the compiler's tests both ways, and tests/test_plainstage.py tricky and
mutated ones."""

from __future__ import annotations

from collections.abc import Callable

from pivotbuild.errors import Location
from pivotbuild.model import Command, Dep, Out, Stage, StageId
from pivotbuild.pivotfile.expand import Expander, Failed, Scope
from pivotbuild.pivotfile.plainstage import PlainStage
from pivotbuild.pivotfile.syntax import Pos, Script, ScriptLine


class PlainStages:
    """`_plain`, for a stage `is_plain` accepts; the compiler provides the
    expander, the checks of paths and lists, and the pipeline's place."""

    x: Expander
    path: str
    dir_rel: str
    _dep: Callable[[str, tuple[int, int], bool], Dep]
    _out: Callable[[str, tuple[int, int], dict[str, bool]], Out]
    _deduped: Callable[[list[Dep]], tuple[Dep, ...]]
    _listed_twice: Callable[[dict[str, Out], Out, str, Pos], bool]

    def _plain(self, p: PlainStage, shell: tuple[str, ...]) -> Stage | None:
        """The stage `p` (one `is_plain` accepts), compiled as `_stage` compiles
        `p.decl()`, straight from its words; None once its errors are reported.
        (Most stages of a large Pivotfile: their records are what a first build
        spends most of its compiling on.  A test compares the two ways.)"""
        failed = False
        deps: tuple[Dep, ...] = ()
        outs: tuple[Out, ...] = ()
        desc = ""
        command: Command | None = None
        scope: Scope | None = None
        for key, line, _, words in p.fields:
            if key == "deps":
                found: list[Dep] = []
                ok = True
                for text, col in words:
                    try:
                        found.append(self._dep(text, (line, col), False))
                    except Failed:
                        ok = False
                if ok:
                    deps = self._deduped(found)
                failed = failed or not ok
            elif key == "outs":
                made: dict[str, Out] = {}
                ok = True
                for text, col in words:
                    try:
                        out = self._out(text, (line, col), _NO_OPTIONS)
                    except Failed:
                        ok = False
                        continue
                    if self._listed_twice(made, out, text, Pos(line, col)):
                        ok = False
                if ok:
                    outs = tuple(made.values())
                failed = failed or not ok
            elif key == "run":
                text, col = words[0]
                command = self.x.known_script(text)
                if command is None:
                    scope = Scope({}, p.name)
                    try:
                        command = self.x.script(Script((ScriptLine(text, Pos(line, col)),), True), scope)
                    except Failed:
                        failed = True
            else:  # desc:
                desc = " ".join([text for text, _ in words])
        if failed:
            return None
        name = p.name
        params = () if scope is None else tuple(sorted(scope.params_used.values(), key=lambda q: (q.file, q.key)))
        return Stage(
            id=StageId(self.dir_rel, name),
            base=name,
            loc=Location(self.path, p.line, p.name_col),
            command=command,
            py=None,
            py_loc=None,
            matrix=(),
            desc=desc,
            deps=deps,
            outs=outs,
            params=params,
            shell=shell,
            mutex=(),
            jobs=1,
            mem=0,
            timeout=None,
            retry=0,
            env=(),
            workdir=self.dir_rel,
            always=False,
        )


_PLAIN_KEYS = frozenset(("deps", "outs", "run", "desc"))
_NO_OPTIONS: dict[str, bool] = {}  # (an output's options, read only)


def is_plain(p: PlainStage) -> bool:
    """Whether `PlainStages._plain` compiles `p`: its fields are among deps:,
    outs:, run: and desc:, each given once, run: among them, and no word
    but the command has a `$` (nothing to expand, nothing in scope)."""
    keys = [f[0] for f in p.fields]
    if "run" not in keys or not _PLAIN_KEYS.issuperset(keys) or len(set(keys)) != len(keys):
        return False
    for key, _, _, words in p.fields:
        if key != "run":
            for text, _ in words:
                if "$" in text:
                    return False
    return True
