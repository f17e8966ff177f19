"""Loading a project: find the Pivotfile and the root, parse and compile every
pipeline it includes (or, with `--all`, every Pivotfile under the root)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from pivotbuild import paths
from pivotbuild.errors import Diagnostic, Location, PivotfileError, ProjectError
from pivotbuild.model import Pipeline, Stage
from pivotbuild.state.stamps import Source, read_source
from pivotbuild.structs import field, struct


@struct(frozen=True, slots=True)
class LoadOptions:
    """Where and how to load a project: the command line's -C, -f, NAME=VALUE and --all."""

    cwd: Path
    file: Path | None = None  # -f; relative paths are relative to cwd
    overrides: Mapping[str, str] = field(default_factory=dict)
    all_pipelines: bool = False


@struct(frozen=True, slots=True)
class Project:
    """A loaded project: its root, every pipeline, the files it was compiled from."""

    root: Path
    cwd: Path
    main: Pipeline | None  # the pipeline in the current directory (None: --all from elsewhere)
    pipelines: tuple[Pipeline, ...]
    # Every file the project was compiled from (Pivotfiles, params files read
    # or looked for), as it was when read: what a compiled plan is valid for.
    sources: tuple[Source, ...] = ()
    plan_id: str = ""  # the compiled plan it came from or was saved as ("" if none)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(s for p in self.pipelines for s in p.stages)

    @property
    def current_dir(self) -> str:
        """The pipeline whose stages are named without a prefix."""
        return self.main.dir if self.main else ""

    @property
    def main_dir(self) -> Path | None:
        """The main pipeline's directory, where its state (plan, seal) lives; None with --all from elsewhere."""
        return None if self.main is None else self.root / self.main.dir

    @property
    def cwd_dir(self) -> str:
        """Where the command runs, relative to the root ("" if outside it): where targets are named from."""
        return paths.rel_dir(self.root, self.cwd) if self.cwd.is_relative_to(self.root) else ""

    def line(self, loc: Location) -> str:
        """The source line `loc` points at (its path is shown relative to `cwd`), for quoting in an error."""
        return source_line(self.cwd / loc.path, loc.line)


def load_project(options: LoadOptions) -> Project:
    """Parse and compile the project.  Raises PivotfileError (all errors of all
    files at once) or ProjectError."""
    cwd = options.cwd.resolve()
    paths.forget_resolved()  # symlinks may have changed since the last compile in this process
    main_file = main_file_of(options)
    if main_file is None and not options.all_pipelines:
        raise ProjectError(
            f"no Pivotfile in {cwd}; write one (see 'pivotbuild --help'), or point at it with -f PATH or -C DIR"
        )
    root = paths.find_root(main_file.parent if main_file else cwd)
    loader = _Loader(root, cwd, options.overrides)
    queue: list[Path] = [main_file] if main_file else []
    if options.all_pipelines:
        queue.extend(all_pivotfiles(root))
    main = None
    for path in queue:
        pipeline = loader.load(path)
        if path == main_file:
            main = pipeline
    if loader.errors:
        raise PivotfileError(loader.errors)
    pipelines = tuple(loader.pipelines.values())
    sources = (*loader.sources, *(s for p in pipelines for s in p.inputs))
    return Project(root, cwd, main, pipelines, sources)


def main_file_of(options: LoadOptions) -> Path | None:
    path = paths.pivotfile_path(options.cwd, options.file)
    if path.is_file():
        return path
    if options.file is not None:
        raise ProjectError(f"{options.file}: no such Pivotfile; check the path given to -f")
    return None


def all_pivotfiles(root: Path) -> Iterator[Path]:
    """Every Pivotfile under `root`, but not in hidden directories, nor in a
    project of its own below it (a directory holding a root's `.pivot/`)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not paths.is_root_state(here / d))
        if paths.PIVOTFILE in filenames:
            yield here / paths.PIVOTFILE


def including(root: Path, directory: Path) -> list[str]:
    """The Pivotfiles of the project at `root` (root-relative) whose `include`
    names the pipeline in `directory`: what makes it part of that project.  A
    Pivotfile that does not compile is passed over (it builds nothing until
    it is fixed)."""
    loader = _Loader(root, root, {})
    for path in all_pivotfiles(root):
        try:
            loader.load(path)
        except ProjectError:
            continue
    target = (directory / paths.PIVOTFILE).resolve()
    found = []
    for path, pipeline in loader.pipelines.items():
        if path != target and any(loader.include_path(path.parent, inc.path) == target for inc in pipeline.includes):
            found.append(pipeline.file)
    return sorted(found)


class _Loader:
    def __init__(self, root: Path, cwd: Path, overrides: Mapping[str, str]) -> None:
        self.root = root
        self.cwd = cwd
        self.overrides = overrides
        self.pipelines: dict[Path, Pipeline] = {}
        self.errors: list[Diagnostic] = []
        self.sources: list[Source] = []

    def display(self, path: Path) -> str:
        return display_path(path, self.cwd)

    def load(self, path: Path) -> Pipeline | None:
        """Compile `path` and, depth first, the pipelines it includes."""
        path = path.resolve()
        if path in self.pipelines:
            return self.pipelines[path]
        shown = self.display(path)
        try:
            raw, source = read_source(path)
            if raw is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text would
        except UnicodeDecodeError as exc:
            raise ProjectError(f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except OSError as exc:
            raise ProjectError(f"{shown}: cannot read: {exc.strerror}") from exc
        self.sources.append(source)
        from pivotbuild.pivotfile.compiler import CompileOptions, compile_text  # lark: only when compiling

        try:
            pipeline = compile_text(text, shown, CompileOptions(self.root, path.parent, self.overrides))
        except PivotfileError as exc:
            self.errors.extend(exc.diagnostics)
            return None
        self.pipelines[path] = pipeline
        for inc in pipeline.includes:
            target = self.include_path(path.parent, inc.path)
            problem = self._include_problem(target)
            if problem:
                line = source_line(path, inc.loc.line)
                self.errors.append(Diagnostic(inc.loc, f"include '{inc.path}': {problem}", line))
                continue
            self.load(target)
        return pipeline

    @staticmethod
    def include_path(base: Path, written: str) -> Path:
        target = (base / written).resolve()
        return target / paths.PIVOTFILE if target.is_dir() else target

    def _include_problem(self, target: Path) -> str:
        if not target.is_file():
            return f"{self.display(target)} does not exist; name a directory holding a Pivotfile, or the file"
        try:
            target.relative_to(self.root)
        except ValueError:
            return f"{self.display(target)} is outside the project root {self.root}"
        return ""


def display_path(path: Path, cwd: Path) -> str:
    """How errors name a Pivotfile: relative to the (resolved) `cwd`, unless that is far up."""
    rel = os.path.relpath(path, cwd)
    return path.as_posix() if rel.startswith("../../..") else Path(rel).as_posix()


def source_line(path: Path, n: int) -> str:
    """Line `n` of a text file ("" if it is not there, or cannot be read now)."""
    try:
        lines: Sequence[str] = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return ""
    return lines[n - 1].rstrip("\r") if 0 < n <= len(lines) else ""
