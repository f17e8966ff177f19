"""The compiled plan: the project as compiled and validated, in one binary file,
so a build whose Pivotfiles, params files and command-line variables have not
changed neither parses a Pivotfile nor builds the graph (no lark, no networkx).

It lives in the main pipeline's `.pivot/plan`: one frame (`state.framing`:
magic `PIVPLAN\\n`, version FORMAT, checksum) of msgpack
`[key, root, sources, index, body]`.

`key` is what the compile depended on besides files: the main Pivotfile, the
command-line variables and this pivotbuild's version.  `sources` are the files
it was compiled from, each with its stamp and hash: the plan is valid while
each is unchanged by stamp, or failing that by hash (a `touch` does not
invalidate it).  `index` is the small part the no-op check needs (stage names,
edges); `body` is a msgpack blob of the full stages, decoded only when a build
has work to do, and then only in part: `[pipelines, records, main, outs,
py]`, where each stage's record is packed on its own (unpacked when the
build first asks for that stage: restored.LazyStages), and what the graph
needs of every stage is beside them (each stage's outputs as (path, is a
directory), the indices of the `py:` stages).  Its hash, the plan id, names
the compile result: an edit that compiles to the same stages keeps the id,
and with it the up-to-date seal (the id also covers the project root, so a
copied project never shares it).

A missing or stale plan, or one of another format version, is simply
rebuilt; a damaged one (`Damaged`) is rebuilt too, and the build says so
once.  It is never an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from itertools import starmap

import msgpack

from pivotbuild import __version__, paths
from pivotbuild.paths import STATE_DIR
from pivotbuild.state import framing
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.stamps import Source
from pivotbuild.targets import closure, name_table, named

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:  # the no-op check imports none of these (nor pathlib)
    from pathlib import Path
    from typing import Any

    from pivotbuild.errors import Location, ProjectError
    from pivotbuild.graph import BuildGraph
    from pivotbuild.model import AutoVar, Pipeline, Stage, StageId
    from pivotbuild.project import Project

PLAN = "plan"
MAGIC = b"PIVPLAN\n"
# 2: locations as [line, col] in their pipeline's file; deps', outs' and `py:`'s too.
# 3: in a `state.framing` frame.  4: the index's per-stage lists packed (read when used).
# 5: each stage's record in the body packed on its own, its outputs and `py:` beside.
FORMAT = 5
FRAME = framing.Format(MAGIC, FORMAT, "plan")

# A plan file that fails its checksum or does not decode; `str()` says why.
Damaged = framing.Damaged


def plan_path(main_dir: Path) -> Path:
    return main_dir / STATE_DIR / PLAN


def plan_key(main_file: str | Path, overrides: Mapping[str, str]) -> list[Any]:
    """Lists only, as msgpack reads them back."""
    return [str(main_file), [[k, v] for k, v in sorted(overrides.items())], __version__]


def plan_id(root: str, body: bytes) -> str:
    """Names the compile result and where it lives: a copy of the project
    elsewhere never shares an id (nor a seal, which holds absolute paths)."""
    return hash_bytes(root.encode("utf-8", "surrogateescape") + b"\0" + body)


class Index:
    """What the no-op check needs: each stage's (pipeline, name, base, has matrix,
    always) in declaration order, its direct upstream stages, and the main
    pipeline's `default` targets as written.  The per-stage lists stay packed
    until used: the no-op of every stage needs only their number and which
    stages are `always`.  (Plain classes here: the no-op fast path does not
    import dataclasses.)"""

    __slots__ = ("_lists", "_packed", "always", "current", "default", "n", "plan_id", "root")

    def __init__(
        self,
        plan_id: str,
        root: str,
        *,
        current: str,
        default: tuple[str, ...],
        n: int,
        always: list[int],
        packed: bytes,
    ) -> None:
        self.plan_id = plan_id
        self.root = root
        self.current = current
        self.default = default
        self.n = n  # the number of stages
        self.always = always  # the `always` stages' indices
        self._packed = packed  # msgpack [stages, preds, order]
        self._lists: tuple[list[tuple[str, str, str, bool, bool]], list[list[int]], list[int]] | None = None

    def _unpacked(self) -> tuple[list[tuple[str, str, str, bool, bool]], list[list[int]], list[int]]:
        """Raises `Damaged` if the packed lists do not decode to this index's shape."""
        if self._lists is None:
            try:
                stages, preds, order = msgpack.unpackb(self._packed)
                if len(stages) != self.n or len(preds) != self.n or not all(len(s) == 5 for s in stages):
                    raise ValueError("index")
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise Damaged(f"does not decode ({type(exc).__name__})") from exc
            self._lists = stages, preds, order
        return self._lists

    @property
    def stages(self) -> list[tuple[str, str, str, bool, bool]]:
        return self._unpacked()[0]

    @property
    def preds(self) -> list[list[int]]:
        return self._unpacked()[1]

    @property
    def order(self) -> list[int]:
        return self._unpacked()[2]

    def select(self, targets: list[str]) -> list[int] | None:
        """The stages `targets` name (all stages if none), as indices; None if a
        target is not a stage name or matrix base (a pattern or a path: only
        the graph resolves those).  The names are the graph's (targets.py)."""
        if not targets:
            return list(range(self.n))
        names, bases = name_table(((i, *s[:4]) for i, s in enumerate(self.stages)), self.current)
        chosen: list[int] = []
        for target in targets:
            found = named(target, names, bases)
            if found is None:
                return None
            chosen.extend(found)
        return chosen

    def upstream(self, chosen: list[int]) -> list[int]:
        """`chosen` and every stage they depend on, in declaration order."""
        if len(chosen) == self.n and len(set(chosen)) == self.n:
            return list(range(self.n))  # every stage (no edge to follow)
        return sorted(closure(chosen, self.preds.__getitem__))

    def any_always(self, stages: list[int]) -> bool:
        """Is any of `stages` an `always` stage?"""
        return bool(self.always) and not set(self.always).isdisjoint(stages)


class Loaded:
    __slots__ = ("body", "index", "sources")

    def __init__(self, index: Index, sources: tuple[Source, ...], body: bytes) -> None:
        self.index = index
        self.sources = sources
        self.body = body


# -- writing ------------------------------------------------------------------------


def save(project: Project, graph: BuildGraph, main_file: Path, overrides: Mapping[str, str]) -> str:
    """Write the plan of a freshly compiled, validated project; return its id.
    Best effort: a plan that cannot be written only costs the next build a
    compile (and the id is then "")."""
    if project.main is None:
        return ""
    stages = list(graph.stages.values())
    order, preds = graph.plan_links()
    main = project.main
    pipelines = [_pipeline(p) for p in project.pipelines]
    from pivotbuild.model import AutoVar

    auto = {v: i for i, v in enumerate(AutoVar)}
    pack = msgpack.Packer(use_bin_type=True).pack
    body: bytes = msgpack.packb(
        [
            pipelines,
            [pack(_stage(s, auto)) for s in stages],
            [p.dir for p in project.pipelines].index(main.dir),
            [[(o.path, o.is_dir) for o in s.outs] for s in stages],
            [i for i, s in enumerate(stages) if s.py is not None],
        ],
        use_bin_type=True,
    )
    lists = [[[s.id.pipeline, s.id.name, s.base, bool(s.matrix), s.always] for s in stages], preds, order]
    index = [
        project.current_dir,
        [t.text for t in main.default],
        len(stages),
        [i for i, s in enumerate(stages) if s.always],
        msgpack.packb(lists, use_bin_type=True),
    ]
    key = plan_key(main_file, overrides)
    sources = [[s.path, list(s.stamp) if s.stamp else None, s.trusted, s.hash] for s in project.sources]
    blob = FRAME.dump([key, str(project.root), sources, index, body])
    pid = plan_id(str(project.root), body)
    main_dir = project.root / main.dir
    path = plan_path(main_dir)
    from pivotbuild.state.files import ensure_state_dir, write_atomic

    try:
        if path.read_bytes() == blob:
            return pid
    except OSError:
        pass
    try:
        ensure_state_dir(main_dir, project.root)
        write_atomic(path, blob)
    except OSError:
        return ""
    return pid


def _loc(loc: Location | None) -> list[Any] | None:
    """[line, col]: a location is always in its pipeline's Pivotfile, whose
    path is shown relative to the directory of each run (see `restore`)."""
    return None if loc is None else [loc.line, loc.col]


def _pipeline(p: Pipeline) -> list[Any]:
    return [
        p.dir,
        p.file,
        p.name,
        len(p.stages),
        [[t.text, _loc(t.loc)] for t in p.default],
        [[i.path, _loc(i.loc)] for i in p.includes],
        list(p.params_files),
    ]


def _stage(s: Stage, auto: dict[AutoVar, int]) -> list[Any]:
    """A stage as stored; `auto` numbers the automatic variables.  (msgpack
    writes tuples as it writes lists: the record's own tuples go as they are.)"""
    command = None if s.command is None else [p if isinstance(p, str) else auto[p] for p in s.command]
    return [
        s.id.pipeline,
        s.id.name,
        s.base,
        _loc(s.loc),
        command,
        s.py,
        _loc(s.py_loc),
        s.matrix,
        s.desc,
        [(d.path, d.is_glob, d.dir_hint, d.pos) for d in s.deps],
        [(o.path, o.is_dir, o.cache, o.persist, o.incremental, o.pos) for o in s.outs],
        [(p.file, p.key, p.value_json) for p in s.params],
        s.shell,
        s.mutex,
        s.jobs,
        s.mem,
        s.timeout,
        s.retry,
        s.env,
        s.workdir,
        s.always,
    ]


# -- reading ------------------------------------------------------------------------


def read(main_file: str | Path, overrides: Mapping[str, str]) -> Loaded | None:
    """The plan for this Pivotfile and these variables, if one was written; its
    sources are not checked yet (see `fresh`).  None if absent or for another
    key; raises `Damaged` if it fails its checksum or does not decode."""
    where = os.path.join(os.path.dirname(main_file), STATE_DIR, PLAN)
    try:
        with open(where, "rb") as f:
            st = os.fstat(f.fileno())
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            kept = _read.get(where)
            if kept is not None and kept[0] == stamp and kept[1] == plan_key(main_file, overrides):
                return kept[2]  # (a build server's: the plan as its last build read it, unchanged since)
            blob = f.read()
    except OSError:
        return None
    loaded = _decoded(blob, main_file, overrides)
    if loaded is not None:
        if len(_read) >= 8:
            _read.clear()
        _read[where] = (stamp, plan_key(main_file, overrides), loaded)
    return loaded


# The plans read in this process, by file: their stamp (inode, size, mtime,
# ctime), key and what they said.  A plan is written whole under a new inode,
# never changed where it is, so one whose stamp is unchanged is as it was read.
_read: dict[str, tuple[tuple[int, int, int, int], list[Any], Loaded]] = {}


def _decoded(blob: bytes, main_file: str | Path, overrides: Mapping[str, str]) -> Loaded | None:
    try:
        fields = FRAME.load(blob)
    except framing.OtherVersion:
        return None
    try:
        key, root, sources, index, body = fields
        if key != plan_key(main_file, overrides):
            return None
        current, default, n, always, packed = index
        if not isinstance(packed, bytes) or not isinstance(n, int):
            raise ValueError("index")
        return Loaded(
            Index(
                plan_id(root, body),
                root,
                current=current,
                default=tuple(default),
                n=n,
                always=list(always),
                packed=packed,
            ),
            tuple(Source(p, tuple(st) if st else None, trusted, h) for p, st, trusted, h in sources),
            body,
        )
    except (ValueError, TypeError) as exc:
        raise Damaged(f"does not decode ({type(exc).__name__})") from exc


def fresh(loaded: Loaded, main_file: str | Path) -> bool:
    """Is the plan still what compiling would give: the same root, and every
    source unchanged?"""
    return loaded.index.root == paths.root_of(os.path.dirname(main_file)) and all(s.unchanged() for s in loaded.sources)


def restore(loaded: Loaded, cwd: Path) -> tuple[Project, BuildGraph] | None:
    """The project and its graph, from the plan's body (None if it is damaged).
    A stage is made a Stage when the build first asks for it (restored.LazyStages):
    a build that decides a few stages of many makes those."""
    from pathlib import Path

    from pivotbuild.errors import Location
    from pivotbuild.graph import BuildGraph
    from pivotbuild.model import AutoVar, IncludeRef, Pipeline, StageId, TargetRef
    from pivotbuild.project import Project, display_path
    from pivotbuild.restored import Restored, StagesOf

    unstage = _unstager(list(AutoVar))
    index = loaded.index
    here = cwd.resolve()
    try:
        pipelines_raw, records, main_at, outs, python = msgpack.unpackb(loaded.body, use_list=False)
        n = index.n
        if len(records) != n or len(outs) != n:
            return None
        ids = [StageId(s[0], s[1]) for s in index.stages]  # (the index's lists: the graph unpacks them anyway)
        shown = [display_path(Path(index.root, p[1]), here) for p in pipelines_raw]  # as this run names them
        files: list[str] = []  # each stage's Pivotfile
        spans: list[tuple[int, int]] = []
        for p, name_of_file in zip(pipelines_raw, shown, strict=True):
            files.extend([name_of_file] * p[3])
            spans.append((len(files) - p[3], len(files)))
        if len(files) != n:
            return None

        main_dir = Path(index.root, pipelines_raw[main_at][0])

        def make(i: int) -> Stage:
            try:
                record = msgpack.unpackb(records[i], use_list=False)
                if len(record) != _RECORD or (record[0], record[1]) != ids[i]:
                    raise ValueError(f"a record of {len(record)} fields for stage {record[:2]!r}")
                return unstage(record, files[i])
            except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as exc:
                raise _undecodable(main_dir, ids[i], exc) from exc

        restored = Restored(ids, outs, make, {ids[i] for i in python}, {ids[i] for i in index.always})
        pipelines: list[Pipeline] = []
        for (dir_, file, name, _n, default, includes, params_files), (start, end), where in zip(
            pipelines_raw, spans, shown, strict=True
        ):
            pipelines.append(
                Pipeline(
                    dir_,
                    file,
                    name,
                    StagesOf(restored.stages, ids[start:end]),
                    tuple(TargetRef(t, Location(where, *loc)) for t, loc in default),
                    tuple(IncludeRef(p, Location(where, *loc)) for p, loc in includes),
                    tuple(params_files),
                )
            )
        project = Project(Path(index.root), here, pipelines[main_at], tuple(pipelines), loaded.sources, index.plan_id)
        graph = BuildGraph.restore(restored, index.current, index.order, index.preds, project.line)
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException):
        return None
    return project, graph


def _undecodable(main_dir: Path, sid: StageId, exc: Exception) -> ProjectError:
    """A stage record of the plan (checked by its checksum, so written this way
    by a pivotbuild of this version) that does not make a Stage: the plan is
    removed, so that the next run compiles the Pivotfiles (this one is past
    the point where it could)."""
    from pivotbuild.errors import ProjectError

    path = plan_path(main_dir)
    with contextlib.suppress(OSError):
        path.unlink()
    return ProjectError(
        f"{path}: the compiled plan's record of stage {sid.label('')} does not decode"
        f" ({type(exc).__name__}: {exc}); the plan was removed: run pivotbuild again"
        " (it compiles the Pivotfiles afresh)"
    )


# A stored stage record's length (see _unstager and _stage).
_RECORD = 21


def _unstager(auto: list[AutoVar]) -> Callable[[Sequence[Any], str], Stage]:
    """`unstage(record, file)`: a stage as stored, made a `Stage` again.  (This
    runs for each stage a build with work makes, all 1,000 in a clean build
    of the benchmark: the record types are bound once, each list made in one comprehension,
    nothing built for what is empty, and the stage made from positional
    arguments, in its fields' order.)"""
    from pivotbuild.errors import Location
    from pivotbuild.model import Dep, Out, Param, Stage, StageId

    def unstage(r: Sequence[Any], file: str) -> Stage:
        (pipeline, name, base, loc, command, py, py_loc, matrix, desc, deps, outs, params) = r[:12]
        (shell, mutex, jobs, mem, timeout, retry, env, workdir, always) = r[12:]
        return Stage(
            StageId(pipeline, name),
            base,
            Location(file, *loc),
            None if command is None else tuple([p if p.__class__ is str else auto[p] for p in command]),
            py,
            None if py_loc is None else Location(file, *py_loc),
            matrix,  # (tuples as decoded)
            desc,
            tuple(starmap(Dep, deps)),  # positions as decoded: (line, col) tuples
            tuple(starmap(Out, outs)),
            tuple(starmap(Param, params)) if params else (),
            shell,
            mutex,
            jobs,
            mem,
            timeout,
            retry,
            env,
            workdir,
            always,
        )

    return unstage
