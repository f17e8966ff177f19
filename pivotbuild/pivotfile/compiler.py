"""Syntax tree -> `Pipeline` of immutable `Stage` records.

Everything the language means happens here: variables (the last assignment
wins, command-line `NAME=VALUE` overrides), `${...}` interpolation, matrix
expansion, params, durations and sizes, out options, and path normalisation.
Every problem becomes a located diagnostic; all of them are raised together.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from pivotbuild import paths
from pivotbuild.errors import Location, PivotfileError
from pivotbuild.model import DEFAULT_SHELL, Command, Dep, IncludeRef, Out, Pipeline, Stage, StageId, TargetRef
from pivotbuild.pivotfile.expand import COMMAND_LINE, RESERVED_VARS, Expander, Failed, Origin, Reporter, Scope, VarDef
from pivotbuild.pivotfile.fields import BOOLS, ScalarFields
from pivotbuild.pivotfile.params import ParamError, Params, ParamsFileError
from pivotbuild.pivotfile.parser import parse_lean
from pivotbuild.pivotfile.plaincompile import PlainStages, is_plain
from pivotbuild.pivotfile.plainstage import PlainStage
from pivotbuild.pivotfile.syntax import (
    FIELDS,
    NAME_RE,
    Assignment,
    DefaultStmt,
    Field,
    IncludeStmt,
    Module,
    OutDecl,
    PipelineStmt,
    Pos,
    StageDecl,
    Statement,
    Word,
)
from pivotbuild.structs import field, struct
from pivotbuild.suggest import did_you_mean

_MATRIX_VALUE_RE = re.compile(r"[A-Za-z0-9_.+-]+")
_GLOB_CHAR_RE = re.compile(r"[*?[]")
_GLUED_OPTIONS_RE = re.compile(r"[^(]+\(([^)]*)\)")  # `out.txt(persist)`: options without the space
_OUT_OPTIONS = ("cache", "persist", "incremental")


@struct(frozen=True, slots=True)
class CompileOptions:
    """Where the Pivotfile sits and what the command line says about variables."""

    root: Path  # absolute project root
    pipeline_dir: Path  # absolute directory of the Pivotfile
    overrides: Mapping[str, str] = field(default_factory=dict)


def compile_module(module: Module, options: CompileOptions) -> Pipeline:
    """Compile a parsed Pivotfile.  Raises `PivotfileError` listing every problem found."""
    return _Compiler(module.path, module.source, module.statements, options).run()


def compile_text(text: str, path: str, options: CompileOptions) -> Pipeline:
    """Parse and compile Pivotfile text (shown as `path`): what `compile_module(parse(text, path), options)`
    gives, with most stages read without their syntax records (plainstage.py).  Raises `PivotfileError`."""
    source, statements = parse_lean(text, path)
    return _Compiler(path, source, statements, options).run()


class _Compiler(ScalarFields, PlainStages):
    def __init__(
        self, path: str, source: str, statements: Sequence[Statement | PlainStage], options: CompileOptions
    ) -> None:
        self.path = path
        self.statements = statements
        self.opts = options
        self.origin = Origin(path, source)
        self.report = Reporter(self.origin)
        self._error = self.report.error
        self._fail = self.report.fail
        self.dir_rel = paths.rel_dir(options.root, options.pipeline_dir)
        self.params = Params(options.pipeline_dir, _display_dir(path))
        self.x = Expander(self.report, self.params, self.dir_rel)
        # This pipeline's own files, by root-relative path: no output may be one.
        self.own_files = {paths.join(self.dir_rel, own): own for own in (paths.PIVOTFILE, paths.LOCKFILE)}

    # -- the whole file ----------------------------------------------------------

    def run(self) -> Pipeline:
        stmts = self.statements
        self._collect_vars([s for s in stmts if isinstance(s, Assignment)])
        name = self._pipeline_name([s for s in stmts if isinstance(s, PipelineStmt)])
        shell = self._shell()
        default = self._default([s for s in stmts if isinstance(s, DefaultStmt)])
        includes = self._includes([s for s in stmts if isinstance(s, IncludeStmt)])
        stages: list[Stage] = []
        first_line: dict[str, int] = {}  # each stage's name -> the line it is first declared on
        for decl in stmts:
            if type(decl) is PlainStage:
                stage_name, line = decl.name, decl.line
            elif isinstance(decl, StageDecl):
                stage_name, line = decl.name.text, decl.name.pos.line
            else:
                continue
            prior = first_line.setdefault(stage_name, line)
            if prior != line:
                pos = Pos(line, decl.name_col) if isinstance(decl, PlainStage) else decl.name.pos
                self._error(pos, f"stage '{stage_name}' is already defined on line {prior}")
                continue
            if not isinstance(decl, PlainStage):
                stages.extend(self._stage(decl, shell))
            elif is_plain(decl):
                stage = self._plain(decl, shell)
                if stage is not None:
                    stages.append(stage)
            else:
                stages.extend(self._stage(decl.decl(), shell))
        if self.report.errors:
            raise PivotfileError(self.report.errors)
        params_files = tuple(sorted(paths.join(self.dir_rel, f) for f in self.params.files_read))
        file_rel = paths.join(self.dir_rel, Path(self.path).name)
        inputs = tuple(self.params.sources[f] for f in sorted(self.params.sources))
        return Pipeline(self.dir_rel, file_rel, name, tuple(stages), default, includes, params_files, inputs)

    def _collect_vars(self, assigns: list[Assignment]) -> None:
        for a in assigns:
            name = a.name.text
            if not NAME_RE.fullmatch(name):
                self._error(a.name.pos, f"'{name}' is not a valid variable name (letters, digits, '_', '.', '-')")
            elif name in RESERVED_VARS or name.startswith("params."):
                self._error(
                    a.name.pos,
                    f"'{name}' is reserved: ${{stage}} and ${{params.KEY}} are built in; choose another name",
                )
            else:
                self.x.vars[name] = VarDef(a.values, self.origin, a.name.pos)
        for name, value in self.opts.overrides.items():
            arg = f"{name}={value}"
            origin = Origin(COMMAND_LINE, arg)
            if name in RESERVED_VARS or name.startswith("params."):
                self._error(Pos(1, 1), f"'{name}' is reserved and cannot be set on the command line", origin)
                continue
            col = len(name) + 2
            words: list[Word] = []
            for m in re.finditer(r"\S+", value):
                words.append(Word(m.group(), m.group(), Pos(1, col + m.start())))
            self.x.vars[name] = VarDef(tuple(words), origin, Pos(1, 1))

    def _pipeline_name(self, stmts: list[PipelineStmt]) -> str:
        for extra in stmts[1:]:
            self._error(extra.pos, f"'pipeline' is given twice (first on line {stmts[0].pos.line})")
        if not stmts:
            base = self.opts.pipeline_dir.name or "pipeline"
            return base
        name = stmts[0].name
        text = self.x.scalar(name, Scope({}, None))
        if text is not None and not NAME_RE.fullmatch(text):
            self._error(name.pos, f"'{text}' is not a valid pipeline name (letters, digits, '_', '.', '-')")
        return text or name.text

    def _shell(self) -> tuple[str, ...]:
        if "SHELL" not in self.x.vars:
            return DEFAULT_SHELL
        var = self.x.vars["SHELL"]
        words = self.x.expand_words(var.words, Scope({}, None), var.origin)
        if words is not None and not words:
            self._error(var.pos, "SHELL is empty; set it to a command such as '/bin/sh -e'", var.origin)
        return tuple(words) if words else DEFAULT_SHELL

    def _default(self, stmts: list[DefaultStmt]) -> tuple[TargetRef, ...]:
        for extra in stmts[1:]:
            self._error(extra.pos, f"'default' is given twice (first on line {stmts[0].pos.line})")
        if not stmts:
            return ()
        refs: list[TargetRef] = []
        for word in stmts[0].targets:
            for text in self.x.expand_word(word, Scope({}, None)) or ():
                refs.append(TargetRef(text, self._loc(word.pos)))
        return tuple(refs)

    def _includes(self, stmts: list[IncludeStmt]) -> tuple[IncludeRef, ...]:
        refs: list[IncludeRef] = []
        for stmt in stmts:
            for word in stmt.paths:
                for text in self.x.expand_word(word, Scope({}, None)) or ():
                    refs.append(IncludeRef(text, self._loc(word.pos)))
        return tuple(refs)

    def _loc(self, pos: Pos) -> Location:
        return Location(self.path, pos.line, pos.col)

    def _rooted(self, text: str) -> str:
        """`text`, a non-empty path written in this Pivotfile, relative to the project root (normalised)."""
        if text[0] not in "/." and text[-1] != "/" and "//" not in text and "/." not in text:
            # No component is empty, `.` or `..` (most paths): nothing to normalise.
            return f"{self.dir_rel}/{text}" if self.dir_rel else text
        return paths.make_relative(self.opts.root, paths.join(self.dir_rel, text))

    # -- stages --------------------------------------------------------------------

    def _stage(self, decl: StageDecl, shell: tuple[str, ...]) -> Iterator[Stage]:
        name = decl.name.text
        if not NAME_RE.fullmatch(name):
            self._error(decl.name.pos, f"'{name}' is not a valid stage name (letters, digits, '_', '.', '-')")
            return
        fields = self._fields(decl)
        if "run" not in fields and "py" not in fields:
            self._error(decl.name.pos, f"stage '{name}' has no 'run:' (or 'py:'): say what it runs")
        elif "run" in fields and "py" in fields:
            self._error(fields["py"].key.pos, f"stage '{name}' has both 'run:' and 'py:'; keep one")
        combos = self._matrix(fields.get("matrix"), name)
        if combos is None:
            return
        for combo in combos:
            full = f"{name}@{'-'.join(combo.values())}" if combo else name
            stage = self._variant(decl, fields, combo, full, shell)
            if stage is not None:
                yield stage

    def _fields(self, decl: StageDecl) -> dict[str, Field]:
        seen: dict[str, Field] = {}
        for f in decl.fields:
            name = f.key.text  # (f.name, once)
            if name not in FIELDS:
                hint = did_you_mean(name, FIELDS)
                self._error(f.key.pos, f"unknown field '{name}:'{hint}")
            elif name in seen:
                self._error(f.key.pos, f"field '{name}:' is given twice (first on line {seen[name].key.pos.line})")
            else:
                seen[name] = f
        return seen

    def _matrix(self, f: Field | None, name: str) -> list[dict[str, str]] | None:
        if f is None:
            return [{}]
        axes: dict[str, list[str]] = {}
        ok = True
        for item in f.items:
            axis = item.key.text
            if axis in axes:
                self._error(item.key.pos, f"matrix axis '{axis}' is given twice")
                ok = False
                continue
            if axis in RESERVED_VARS or axis.startswith("params."):
                self._error(item.key.pos, f"'{axis}' is reserved; choose another axis name")
                ok = False
                continue
            pairs = self.x.expand_each(item.values, Scope({}, None))
            if pairs is None:
                ok = False
                continue
            if not pairs:
                self._error(item.key.pos, f"matrix axis '{axis}' has no values")
                ok = False
            for w, v in pairs:
                if not _MATRIX_VALUE_RE.fullmatch(v):
                    self._error(
                        w.pos,
                        f"matrix value '{v}' cannot be part of a stage name; use letters, digits, '_', '.', '+', '-'",
                    )
                    ok = False
            axes[axis] = [v for _, v in pairs]
        if not ok:
            return None
        combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
        seen: set[str] = set()
        for combo in combos:
            variant = "-".join(combo.values())
            if variant in seen:
                self._error(f.key.pos, f"matrix makes two stages named '{name}@{variant}'; make the values distinct")
                return None
            seen.add(variant)
        return combos

    def _variant(
        self, decl: StageDecl, fields: dict[str, Field], combo: dict[str, str], full: str, shell: tuple[str, ...]
    ) -> Stage | None:
        scope = Scope(combo, full)
        failed = False
        values: dict[str, object] = {}
        for key, f in fields.items():
            handler = _HANDLERS.get(key)
            if handler is None:
                continue
            try:
                values[key] = handler(self, f, scope)
            except Failed:
                failed = True
        if failed or ("run" not in fields and "py" not in fields):
            return None
        base = decl.name.text
        params = tuple(sorted(scope.params_used.values(), key=lambda p: (p.file, p.key)))
        return Stage(
            id=StageId(self.dir_rel, full),
            base=base,
            loc=self._loc(decl.name.pos),
            command=values.get("run"),  # type: ignore[arg-type]
            py=values.get("py"),  # type: ignore[arg-type]
            py_loc=self._loc(fields["py"].words[0].pos) if "py" in fields else None,
            matrix=tuple(combo.items()),
            desc=values.get("desc", ""),  # type: ignore[arg-type]
            deps=values.get("deps", ()),  # type: ignore[arg-type]
            outs=values.get("outs", ()),  # type: ignore[arg-type]
            params=params,
            shell=shell,
            mutex=values.get("mutex", ()),  # type: ignore[arg-type]
            jobs=values.get("jobs", 1),  # type: ignore[arg-type]
            mem=values.get("mem", 0),  # type: ignore[arg-type]
            timeout=values.get("timeout"),  # type: ignore[arg-type]
            retry=values.get("retry", 0),  # type: ignore[arg-type]
            env=values.get("env", ()),  # type: ignore[arg-type]
            workdir=values.get("dir", self.dir_rel),  # type: ignore[arg-type]
            always=values.get("always", False),  # type: ignore[arg-type]
        )

    # -- fields ----------------------------------------------------------------------

    def _desc(self, f: Field, scope: Scope) -> str:
        return " ".join(self.x.words(f.words, scope))

    def _deps(self, f: Field, scope: Scope) -> tuple[Dep, ...]:
        deps: list[Dep] = []
        failed = False
        for word in f.words:
            # (a word with no `$` is its text, without asking the expander: most deps)
            for text in (word.text,) if "$" not in word.text else self.x.expand_word(word, scope) or ():
                try:
                    deps.append(self._dep(text, (word.pos.line, word.pos.col), word.quoted))
                except Failed:
                    failed = True
        if failed:
            raise Failed
        return self._deduped(deps)

    @staticmethod
    def _deduped(deps: list[Dep]) -> tuple[Dep, ...]:
        """A field's deps, each once, in the order first listed."""
        return tuple(dict.fromkeys(deps)) if len(deps) > 1 else tuple(deps)

    def _dep(self, text: str, at: tuple[int, int], quoted: bool) -> Dep:
        """The dep `text`, one of the values of the word at `at` (line, column; quoted: a literal path, never
        a glob)."""
        if not text:
            raise self._fail(Pos(*at), "empty path in 'deps:'")
        is_glob = _GLOB_CHAR_RE.search(text) is not None and not quoted
        if is_glob:
            self._check_glob(Pos(*at), text)
        path = self._rooted(text)
        if path == "":
            raise self._fail(Pos(*at), "a dep cannot be the whole project root; name the files or directories read")
        return Dep(path, is_glob, text.endswith("/"), at)  # (is_glob, dir_hint, pos)

    def _check_glob(self, pos: Pos, text: str) -> None:
        for part in text.split("/"):
            if "**" in part and part != "**":
                raise self._fail(pos, f"in '{text}', '**' must be a whole path component, as in 'src/**/*.py'")
        depth = 0
        for c in text:
            if c == "[":
                depth += 1
            elif c == "]" and depth:
                depth -= 1
        if depth:
            raise self._fail(pos, f"in '{text}', '[' is not closed by ']'")

    def _outs(self, f: Field, scope: Scope) -> tuple[Out, ...]:
        outs: dict[str, Out] = {}
        failed = False
        for decl in f.outs:
            try:
                opts = self._out_options(decl)
            except Failed:
                failed = True
                continue
            word = decl.path
            for text in (word.text,) if "$" not in word.text else self.x.expand_word(word, scope) or ():
                try:
                    out = self._out(text, (decl.path.pos.line, decl.path.pos.col), opts)
                except Failed:
                    failed = True
                    continue
                if self._listed_twice(outs, out, text, decl.path.pos):
                    failed = True
        if failed:
            raise Failed
        return tuple(outs.values())

    def _listed_twice(self, outs: dict[str, Out], out: Out, text: str, pos: Pos) -> bool:
        """Add `out` (written `text` at `pos`) to a field's `outs`; True, the
        error reported, if the field already lists its path."""
        twice = out.path in outs
        if twice:
            self._error(pos, f"output '{text}' is listed twice")
        outs[out.path] = out
        return twice

    def _out_options(self, decl: OutDecl) -> dict[str, bool]:
        opts: dict[str, bool] = {}
        if not decl.options and "(" not in decl.path.text:
            return opts  # no options, nor any glued to the path (most outputs)
        glued = _GLUED_OPTIONS_RE.fullmatch(decl.path.text)
        if glued and not decl.options and glued.group(1).split("=")[0].strip() in _OUT_OPTIONS:
            raise self._fail(decl.path.pos, f"put a space before '(' to give '{decl.path.text}' options")
        for w in decl.options:
            key, sep, value = w.text.partition("=")
            key = key.strip()
            if key not in _OUT_OPTIONS:
                raise self._fail(w.pos, f"unknown output option '{key}'{did_you_mean(key, _OUT_OPTIONS)}")
            if key in opts:
                raise self._fail(w.pos, f"output option '{key}' is given twice")
            flag = True
            if sep:
                if value.strip().lower() not in BOOLS:
                    raise self._fail(w.pos, f"'{w.text}': the value must be true or false")
                flag = BOOLS[value.strip().lower()]
            opts[key] = flag
        return opts

    def _out(self, text: str, at: tuple[int, int], opts: dict[str, bool]) -> Out:
        """The output `text`, one of the values of the word at `at` (line, column), with its options."""
        if not text:
            raise self._fail(Pos(*at), "empty path in 'outs:'")
        if _GLOB_CHAR_RE.search(text):
            raise self._fail(
                Pos(*at), f"output '{text}' is a glob; outputs must be named (list the files, or their directory)"
            )
        path = self._rooted(text)
        root = self.opts.root
        if paths.escapes(path):
            raise self._fail(
                Pos(*at), f"output '{text}' is outside the project root {root}; outputs must lie inside it"
            )
        if path == "":
            raise self._fail(Pos(*at), "an output cannot be the project root itself; name a file or subdirectory")
        if path.split("/")[0] == paths.STATE_DIR or f"/{paths.STATE_DIR}/" in f"/{path}/":
            raise self._fail(Pos(*at), f"output '{text}' is inside {paths.STATE_DIR}/, which pivotbuild owns")
        own = self.own_files.get(path)
        if own is not None:
            raise self._fail(Pos(*at), f"output '{text}' would overwrite this pipeline's {own}")
        if self.dir_rel == path or self.dir_rel.startswith(path + "/"):
            raise self._fail(Pos(*at), f"output '{text}' is a directory holding this pipeline's Pivotfile")
        if paths.escapes_via_symlink(root, path):
            raise self._fail(Pos(*at), f"output '{text}' goes through a symlink that leads outside the project root")
        return Out(
            path,
            is_dir=text.endswith("/"),
            cache=opts.get("cache", True),
            persist=opts.get("persist", False),
            incremental=opts.get("incremental", False),
            pos=at,
        )

    def _params_field(self, f: Field, scope: Scope) -> None:
        failed = False
        for word in f.words:
            for ref in self.x.expand_word(word, scope) or ():
                try:
                    self.x.lookup_param(ref, scope)
                except ParamError as exc:
                    self._error(word.pos, f"param '{ref}': {exc}" if "not found" not in str(exc) else str(exc))
                    failed = True
                except ParamsFileError as exc:
                    self.report.errors.append(exc.diagnostic)
                    failed = True
        if failed:
            raise Failed

    def _run(self, f: Field, scope: Scope) -> Command:
        assert f.script is not None
        return self.x.script(f.script, scope)


# Each field's converter (matrix is expanded before, per stage).
_HANDLERS: dict[str, Callable[[_Compiler, Field, Scope], object]] = {
    "desc": _Compiler._desc,
    "deps": _Compiler._deps,
    "outs": _Compiler._outs,
    "params": _Compiler._params_field,
    "run": _Compiler._run,
    "py": _Compiler._py,
    "mutex": _Compiler._mutex,
    "jobs": _Compiler._jobs,
    "mem": _Compiler._mem,
    "timeout": _Compiler._timeout,
    "retry": _Compiler._retry,
    "env": _Compiler._env,
    "dir": _Compiler._dir,
    "always": _Compiler._always,
}


def _display_dir(module_path: str) -> str:
    parent = str(Path(module_path).parent)
    return "" if parent == "." else parent
