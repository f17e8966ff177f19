"""The build graph: artifacts and stages in one bipartite networkx graph.

Artifact nodes are root-relative path strings (a glob dep is a node of its own,
named by its pattern); stage nodes are `StageId`s.  Edges run artifact -> stage
("consumed by") and stage -> artifact ("produced").  A dep that lies inside an
output directory, a directory dep holding outputs, and a glob matching outputs
all get a produced edge from the stage that writes them, so the stage order
follows the files.

A valid graph is checked (outputs) and ordered (Kahn) on plain dicts, and the
queries a build needs (order, closures, producers, targets) run on plain lists
computed once, so neither compiling a valid graph nor restoring one from a
compiled plan (`BuildGraph.restore`) imports networkx.  networkx builds the
bipartite graph only to report a cycle, and for `BuildGraph.g`.
"""

from __future__ import annotations

import bisect
import fnmatch
import heapq
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence, Set

from pivotbuild.errors import Diagnostic, GraphError, Location, TargetError
from pivotbuild.globs import glob_regex, may_match_under
from pivotbuild.model import Out, Pos, Stage, StageId
from pivotbuild.restored import Restored
from pivotbuild.structs import struct
from pivotbuild.suggest import close_matches
from pivotbuild.targets import closure, name_table, named

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    import networkx as nx

    from pivotbuild.state.snapshot import Static

STAGE, ARTIFACT = 0, 1

SourceLines = Callable[[Location], str]
"""The text of the line a location points at ("" if it cannot be read)."""


# Not yet asked (see BuildGraph._enclosing_out): no path holds a NUL.
_UNASKED = "\0"


def _dirname(path: str) -> str:
    """`posixpath.dirname(path)`, the same string, without its calls (asked for every dep and output)."""
    head = path[: path.rfind("/") + 1]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head


def _no_lines(loc: Location) -> str:
    return ""


@struct(frozen=True, slots=True)
class MissingDep:
    """A dep that is neither a file nor any stage's output, and who needs it."""

    path: str
    needed_by: tuple[StageId, ...]
    where: tuple[Location, ...]  # where each of those stages lists it


class BuildGraph:
    """Validated graph of stages and the files between them."""

    def __init__(self, stages: Sequence[Stage], current: str = "", lines: SourceLines = _no_lines) -> None:
        """Build and validate.  Raises GraphError listing every problem with the
        outputs, located at the stages and words involved, else CycleError
        listing every cycle.

        `current` is the pipeline directory whose stages are named without
        prefix; `lines` reads the source lines the errors quote.  A valid graph
        is checked and ordered on plain dicts; networkx is imported only to
        report a cycle (or when `g` is asked for).
        """
        self._setup(stages, current, lines)
        self._g: nx.DiGraph[object] | None = None
        problems = self._scan()
        if problems:  # not the cycles too: an output in two places makes loops of its own
            raise GraphError(problems)
        preds = self._stage_preds()
        order = self._topological(preds)
        if len(order) < len(self.stages):
            from pivotbuild.cycles import cycle_error  # networkx: only for a graph that has a cycle

            raise cycle_error(self)
        index = self._index.__getitem__
        self._link(order, {s: sorted(preds[s], key=index) for s in order})

    @classmethod
    def restore(
        cls,
        stages: Sequence[Stage] | Restored,
        current: str,
        order: Sequence[int],
        preds: Sequence[Sequence[int]],
        lines: SourceLines = _no_lines,
    ) -> BuildGraph:
        """A graph already validated once, from its stages (or what a compiled
        plan keeps of them, each made a Stage when first asked for: see
        `Restored`), a topological `order` and each stage's direct upstream
        stages (indices into the stages): what a compiled plan stores.  No
        networkx, no validation."""
        graph = cls.__new__(cls)
        graph._g = None
        if isinstance(stages, Restored):
            ids = stages.ids
            graph._setup_ids(ids, current, lines, stages.stages.index)
            graph.stages = stages.stages
            graph._python, graph._always = stages.python, stages.always
            outs: Iterable[tuple[StageId, Iterable[tuple[str, bool]]]] = zip(ids, stages.outs, strict=True)
        else:
            graph._setup(stages, current, lines)
            ids = [s.id for s in stages]
            outs = ((s.id, ((o.path, o.is_dir) for o in s.outs)) for s in stages)
        producer, dir_outs = graph._producer, graph._dir_outs
        for sid, its in outs:
            for path, is_dir in its:
                producer[path] = sid
                if is_dir:
                    dir_outs.add(path)
        graph._outs_sorted = sorted(producer)
        of = ids.__getitem__  # (the lists by map: no Python frame per stage)
        graph._link(list(map(of, order)), dict(zip(ids, [list(map(of, p)) for p in preds], strict=True)))
        return graph

    def _setup(self, stages: Sequence[Stage], current: str, lines: SourceLines) -> None:
        self._setup_ids([s.id for s in stages], current, lines)
        self.stages: dict[StageId, Stage] = {s.id: s for s in stages}
        self._python = {s.id for s in stages if s.py is not None}
        self._always = {s.id for s in stages if s.always}

    def _setup_ids(
        self, ids: list[StageId], current: str, lines: SourceLines, index: dict[StageId, int] | None = None
    ) -> None:
        self.current = current
        self._lines = lines
        self._index = index if index is not None else {sid: i for i, sid in enumerate(ids)}
        self._producer: dict[str, StageId] = {}
        self._dir_outs: set[str] = set()  # outputs declared as directories (trailing `/`)
        self._outs_sorted: list[str] = []
        self._enclosing: dict[str, str | None] = {}  # a directory -> the output enclosing it (see _enclosing_out)
        self._sources: dict[StageId, tuple[tuple[str, Pos | None], ...]] = {}  # each stage's deps no stage writes
        # What each stage's snapshot takes from the stage alone, kept by
        # snapshot.take for the next build (a server's graph serves many).
        self.snapshots: dict[StageId, Static] = {}

    def _link(self, order: list[StageId], preds: dict[StageId, list[StageId]]) -> None:
        """The plain structures every query runs on."""
        self._order = order
        self._preds = preds
        self._succs: dict[StageId, list[StageId]] = {s: [] for s in order}
        for s in order:  # topological, so each successor list comes out in build order
            for u in preds[s]:
                self._succs[u].append(s)
        index = self._index.__getitem__
        for succ in self._succs.values():
            if len(succ) > 1:
                succ.sort(key=index)

    @property
    def g(self) -> nx.DiGraph[object]:
        """The bipartite networkx graph (built on first use: a build needs only the plain lists)."""
        if self._g is None:
            self._g = self._bipartite()
        return self._g

    def plan_links(self) -> tuple[list[int], list[list[int]]]:
        """(order, preds) as indices into the stages: what `restore` takes."""
        return [self._index[s] for s in self._order], [[self._index[u] for u in self._preds[s]] for s in self.stages]

    # -- construction ---------------------------------------------------------------

    def _scan(self) -> list[Diagnostic]:
        """Record every stage's outputs; the problems found with them."""
        writers: dict[str, list[tuple[Stage, Out]]] = {}
        for stage in self.stages.values():
            for out in stage.outs:
                writers.setdefault(out.path, []).append((stage, out))
                if out.path in self._producer:
                    continue
                self._producer[out.path] = stage.id
                if out.is_dir:
                    self._dir_outs.add(out.path)
        problems = [self._shared_output(path, w) for path, w in writers.items() if len(w) > 1]
        self._outs_sorted = sorted(self._producer)
        for path in self._outs_sorted:
            parent = self._enclosing_out(path)
            if parent is not None:
                problems.append(self._nested_output(writers[path][0], writers[parent][0]))
        return problems

    def _stage_preds(self) -> dict[StageId, set[StageId]]:
        """Each stage's direct upstream stages (itself, if it reads what it
        writes): the stages writing any dep's path, a file inside it or (a
        glob) a match of it, whichever way each stage names the path.  Notes
        each stage's deps that no stage writes as it goes (`_sources`, what
        `missing_sources` asks; a restored graph finds them when asked)."""
        writers: dict[str, set[StageId]] = {}  # each dep's path -> the stages writing it
        written: dict[str, bool] = {}  # a (non-glob) dep's path -> whether a stage writes it
        globbed: set[str] = set()  # the paths some stage names as a glob
        stages = self.stages
        for stage in stages.values():
            for dep in stage.deps:
                path = dep.path
                if dep.is_glob:
                    if path in globbed:
                        continue
                    globbed.add(path)
                    found = self._producers_of(path, True)
                elif path in written:
                    continue
                else:
                    found = self._producers_of(path, False)
                    written[path] = bool(found)
                known = writers.get(path)
                if known is None:
                    writers[path] = found  # (a set of its own: _producers_of makes one each time)
                else:
                    known |= found
        preds: dict[StageId, set[StageId]] = {}
        sources = self._sources
        for sid, stage in stages.items():
            upstream: set[StageId] = set()
            unwritten: list[tuple[str, Pos | None]] = []
            for dep in stage.deps:
                upstream |= writers[dep.path]
                if not dep.is_glob and not written[dep.path]:
                    unwritten.append((dep.path, dep.pos))
            preds[sid] = upstream
            sources[sid] = tuple(unwritten)
        return preds

    def _topological(self, preds: dict[StageId, set[StageId]]) -> list[StageId]:
        """Kahn's order, the stage declared first whenever several are ready (as
        networkx's lexicographical_topological_sort keyed by declaration order);
        short of every stage when there is a cycle."""
        index = self._index
        ids = list(self.stages)
        waiting = [len(preds[s]) for s in ids]
        succs: list[list[int]] = [[] for _ in ids]
        for s in ids:
            for u in preds[s]:
                succs[index[u]].append(index[s])
        ready = [i for i, n in enumerate(waiting) if n == 0]  # ascending: already a heap
        order: list[StageId] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(ids[i])
            for j in succs[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
        return order

    def _bipartite(self) -> nx.DiGraph[object]:
        """The artifacts and stages as one networkx graph."""
        import networkx as nx

        g: nx.DiGraph[object] = nx.DiGraph()
        for stage in self.stages.values():
            g.add_node(stage.id, bipartite=STAGE)
            for out in stage.outs:
                if self._producer[out.path] == stage.id:  # a valid graph: its only writer
                    g.add_node(out.path, bipartite=ARTIFACT)
                    g.add_edge(stage.id, out.path, kind="out")
        for stage in self.stages.values():
            for dep in stage.deps:
                g.add_node(dep.path, bipartite=ARTIFACT, glob=dep.is_glob)
                g.add_edge(dep.path, stage.id, kind="dep")
                for producer in self._producers_of(dep.path, dep.is_glob):
                    if not g.has_edge(producer, dep.path):
                        g.add_edge(producer, dep.path, kind="part")
        return g

    def _shared_output(self, path: str, writers: list[tuple[Stage, Out]]) -> Diagnostic:
        """Located at the second stage writing `path`, with a note at each other one."""
        names = [self._label(stage.id) for stage, _ in writers]
        listed = " and ".join(names) if len(names) == 2 else ", ".join(names)
        stage, out = writers[1]
        where = stage.at(out.pos)
        notes = [
            self.located(s.at(o.pos), f"{self._label(s.id)} writes '{path}' here", severity="note")
            for s, o in (writers[0], *writers[2:])
            if s.at(o.pos) != where
        ]
        if len({(s.id.pipeline, s.base) for s, _ in writers}) == 1:  # variants of one matrix stage
            values = [dict(s.matrix) for s, _ in writers]
            differ = [axis for axis, _ in stage.matrix if len({v[axis] for v in values}) > 1]
            hint = f"put {' and '.join(f'${{{axis}}}' for axis in differ)} in the path"
        else:
            hint = "give each stage its own outputs"
        return self.located(where, f"two stages write '{path}': {listed}; {hint}", notes)

    def _nested_output(self, inner: tuple[Stage, Out], outer: tuple[Stage, Out]) -> Diagnostic:
        """Located at the output inside the directory, with a note at the directory."""
        (stage, out), (dir_stage, dir_out) = inner, outer
        a, b = self._label(dir_stage.id), self._label(stage.id)
        directory = f"'{dir_out.path}/'"
        if stage.id == dir_stage.id:
            message = f"output '{out.path}' of {b} is inside its output directory {directory}; list only the directory"
        else:
            message = (
                f"output '{out.path}' of {b} is inside output directory {directory} of {a}, "
                f"which {a} writes whole; write it elsewhere, or let {a} write it"
            )
        note = self.located(dir_stage.at(dir_out.pos), f"{a} writes the directory {directory} here", severity="note")
        return self.located(stage.at(out.pos), message, [note])

    def _enclosing_out(self, path: str) -> str | None:
        """The output that is a proper ancestor directory of `path`, if any.
        (Asked for every dep and output, thousands of times in a large
        project's few directories: the answer is kept per directory, once the
        outputs are all known.)"""
        directory = _dirname(path)
        found = self._enclosing.get(directory, _UNASKED)
        if found == _UNASKED:
            found = None
            parent = directory
            while parent and parent != "/":
                if parent in self._producer:
                    found = parent
                    break
                parent = _dirname(parent)
            self._enclosing[directory] = found
        return found

    def _outs_under(self, directory: str) -> list[str]:
        prefix = directory.rstrip("/") + "/"
        i = bisect.bisect_left(self._outs_sorted, prefix)
        found = []
        while i < len(self._outs_sorted) and self._outs_sorted[i].startswith(prefix):
            found.append(self._outs_sorted[i])
            i += 1
        return found

    def _producers_of(self, path: str, is_glob: bool) -> set[StageId]:
        """Stages writing `path`, a file inside it, or (for a glob) a match of it."""
        if is_glob:
            pattern = glob_regex(path)
            return {
                p
                for out, p in self._producer.items()
                if pattern.fullmatch(out) or (out in self._dir_outs and may_match_under(path, out))
            }
        producer = self._producer
        found = {producer[o] for o in self._outs_under(path)}
        exact = producer.get(path)
        if exact is not None:
            found.add(exact)
        enclosing = self._enclosing_out(path)
        if enclosing is not None:
            found.add(producer[enclosing])
        return found

    def _label(self, sid: StageId) -> str:
        return sid.label(self.current)

    # -- queries ----------------------------------------------------------------------

    def label(self, sid: StageId) -> str:
        # (StageId.label's answer, in one call: the loop asks it of each stage three times)
        return sid.name if sid.pipeline == self.current else sid.label(self.current)

    def runs_python(self, sid: StageId) -> bool:
        """Whether stage `sid` is a `py:` stage (asked without making its Stage)."""
        return sid in self._python

    def always_runs(self, sid: StageId) -> bool:
        """Whether stage `sid` is `always: true` (asked without making its Stage)."""
        return sid in self._always

    @property
    def always_ids(self) -> Set[StageId]:
        """The stages that are `always: true`."""
        return self._always

    @property
    def python_ids(self) -> Set[StageId]:
        """The `py:` stages."""
        return self._python

    @property
    def index_map(self) -> Mapping[StageId, int]:
        """Each stage's position in declaration order (`index_of`, as a mapping: not to be changed)."""
        return self._index

    @property
    def ids(self) -> list[StageId]:
        """Every stage's id, in declaration order (as a compiled plan numbers them)."""
        return list(self._index)

    def index_of(self, sid: StageId) -> int:
        """The stage's position in declaration order (as a compiled plan numbers it)."""
        return self._index[sid]

    def producer(self, path: str) -> StageId | None:
        """The stage that writes `path` (or the output directory holding it)."""
        exact = self._producer.get(path)
        if exact is not None:
            return exact
        enclosing = self._enclosing_out(path)
        return self._producer[enclosing] if enclosing is not None else None

    def writers(self, path: str, is_glob: bool = False) -> set[StageId]:
        """The stages writing the dep `path`: it, a file inside it, the
        directory holding it, or (a glob) a match of it."""
        return self._producers_of(path, is_glob)

    def consumers(self, path: str) -> list[StageId]:
        """Stages that list `path` among their deps."""
        return [sid for sid, stage in self.stages.items() if any(d.path == path for d in stage.deps)]

    def upstream_stages(self, sid: StageId) -> list[StageId]:
        """Stages whose outputs `sid` reads directly."""
        return list(self._preds[sid])

    def downstream_stages(self, sid: StageId) -> list[StageId]:
        """Stages that read an output of `sid` directly."""
        return list(self._succs[sid])

    def upstream(self, targets: Iterable[StageId]) -> list[StageId]:
        """`targets` and everything they depend on, in build order."""
        chosen = set(targets)
        if len(chosen) == len(self._order):  # every stage: no edge to follow
            return list(self._order)
        return self.order(closure(chosen, self._preds.__getitem__))

    def downstream(self, targets: Iterable[StageId]) -> list[StageId]:
        """`targets` and everything that depends on them, in build order."""
        return self.order(closure(targets, self._succs.__getitem__))

    def order(self, subset: Iterable[StageId] | None = None) -> list[StageId]:
        """A topological order (ties broken by declaration order), optionally of a subset."""
        if subset is None:
            return list(self._order)
        keep = set(subset)
        return [s for s in self._order if s in keep]

    def stage_edges(self) -> list[tuple[StageId, StageId]]:
        """(upstream, downstream) pairs, in build order."""
        return [(u, s) for s in self._order for u in self._preds[s]]

    def missing_sources(
        self, exists: Callable[[str], bool], among: Iterable[StageId] | None = None
    ) -> list[MissingDep]:
        """Deps (of the stages `among`, default all) that no stage produces and
        that `exists` says are absent (globs excluded)."""
        # (in declaration order; the stages of `among` alone, each made only then: see LazyStages)
        ids = list(self._index) if among is None else sorted(set(among), key=self._index.__getitem__)
        sources = self._sources  # (a long-lived engine asks before every build: what no stage writes, once)
        present: dict[str, bool] = {}
        needed: dict[str, dict[StageId, Location]] = {}
        for sid in ids:
            stage = self.stages[sid]
            deps = sources.get(sid)
            if deps is None:
                deps = sources[sid] = tuple(
                    (d.path, d.pos) for d in stage.deps if not d.is_glob and not self._producers_of(d.path, False)
                )
            for path, pos in deps:
                there = present.get(path)
                if there is None:
                    there = present[path] = exists(path)
                if not there:
                    needed.setdefault(path, {}).setdefault(sid, stage.at(pos))
        missing = [MissingDep(path, tuple(users), tuple(users.values())) for path, users in needed.items()]
        return sorted(missing, key=lambda m: m.path)

    def missing_inputs(
        self, exists: Callable[[str], bool], among: Iterable[StageId] | None = None, severity: str = "error"
    ) -> list[Diagnostic]:
        """`missing_sources` as located problems: each at the first dep naming
        the path, with a note at each other place that lists it."""
        found = []
        for missing in self.missing_sources(exists, among):
            users = ", ".join(self._label(s) for s in missing.needed_by)
            others: dict[Location, list[str]] = {}  # matrix variants list it at one place
            for sid, loc in zip(missing.needed_by, missing.where, strict=True):
                if loc != missing.where[0]:
                    others.setdefault(loc, []).append(self._label(sid))
            notes = [
                self.located(loc, f"{', '.join(who)} need{'s' * (len(who) == 1)} it too", severity="note")
                for loc, who in others.items()
            ]
            message = f"'{missing.path}' does not exist and no stage writes it (needed by {users})"
            found.append(self.located(missing.where[0], message, notes, severity))
        return found

    def located(
        self, loc: Location, message: str, notes: Sequence[Diagnostic] = (), severity: str = "error"
    ) -> Diagnostic:
        """An error (or note) at `loc`, quoting its source line."""
        return Diagnostic(loc, message, self._lines(loc), severity, tuple(notes))

    def _ordered(self, ids: Iterable[object]) -> list[StageId]:
        return sorted((i for i in ids if isinstance(i, StageId)), key=self._index.__getitem__)

    # -- targets --------------------------------------------------------------------------

    def select(self, targets: Sequence[str], cwd: str = "") -> list[StageId]:
        """Stages named by command-line targets, in the order first named.

        A target is a stage name or matrix variant, a matrix base (all variants),
        `dir:name` for another pipeline, a shell-style pattern over names, or an
        output path (relative to `cwd`, root-relative).  Raises TargetError.
        Names resolve as the compiled plan's index resolves them (targets.py).
        """
        names, bases = self._name_index()
        chosen: dict[StageId, None] = {}
        for target in targets:
            found = self._select_one(target, cwd, names, bases)
            if not found:
                raise TargetError(self._unknown_target(target, names, bases))
            for sid in found:
                chosen.setdefault(sid)
        return list(chosen)

    def _name_index(self) -> tuple[dict[str, StageId], dict[str, list[StageId]]]:
        rows = ((sid, sid.pipeline, sid.name, stage.base, bool(stage.matrix)) for sid, stage in self.stages.items())
        return name_table(rows, self.current)

    def _select_one(
        self, target: str, cwd: str, names: dict[str, StageId], bases: dict[str, list[StageId]]
    ) -> list[StageId]:
        found = named(target, names, bases)
        if found is not None:
            return found
        if any(c in target for c in "*?["):
            return self._ordered({sid for name, sid in names.items() if fnmatch.fnmatchcase(name, target)})
        path = posixpath.normpath(posixpath.join(cwd or ".", target))
        path = "" if path == "." else path
        producer = self.producer(path)
        if producer is not None:
            return [producer]
        return self._ordered({self._producer[o] for o in self._outs_under(path)}) if path else []

    def _unknown_target(self, target: str, names: dict[str, StageId], bases: dict[str, list[StageId]]) -> str:
        if any(c in target for c in "*?["):
            return f"pattern '{target}' matches no stage; 'pivotbuild list' shows the stages"
        # Suggest each stage once, by the name it is usually typed as.
        plain = [n for n, sid in names.items() if sid.pipeline != self.current or ":" not in n]
        plain_bases = [b for b in bases if ":" not in b or not b.startswith(f"{self.current or '.'}:")]
        near = close_matches(target, [*plain, *plain_bases, *self._producer])
        hint = (
            f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else "; 'pivotbuild list' shows the stages"
        )
        return f"unknown target '{target}': no stage or output has that name{hint}"
