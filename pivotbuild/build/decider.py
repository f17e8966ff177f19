"""Is a stage up to date, and if not, the one reason why.

`Decider` is the one place that answers it, for the build, `-n`, `-q`,
`status` and `--explain`: it applies `-B`, "upstream X will run" (a plan),
the seal (state/seal.py) and, for everything else, the pure `decide` over a
fresh snapshot.  The no-op fast path (build/fastpath.py) is this decider's
first step alone, taken before anything heavier is imported: nothing is
forced there (`-B` goes the full way), nothing ran before, and a seal never
covers an `always` stage, so "the seal holds for every stage" is exactly
this decider's answer "all up to date".
The reasons form a fixed vocabulary, in the order they are checked:

    forced                      -B
    upstream X will run         (a plan only) a stage it reads will run first
    always                      always: yes
    never run                   no record in the lockfile
    param K A -> B              a listed param's value (A or B may be "(none)");
                                before the command, which `${params.K}` also changes
    command changed             the interpolated command (or the py: function)
    env changed                 env: or SHELL
    dep set of glob G changed   files added to or removed from a glob's matches
    dep X changed               a dep's content (or a dep added to deps:)
    out X missing               an output is not on disk
    out X modified              an output's content differs from the record
    outs changed                outputs or their options were added, removed or changed

and, from `status` only, for a stage that is up to date:

    pending commit              up to date with its --no-commit result, which
                                the lockfile does not have until `commit`
"""

from __future__ import annotations

from pivotbuild.state import snapshot
from pivotbuild.state.kinds import ABSENT, GLOB
from pivotbuild.state.records import FileRecord, StageRecord
from pivotbuild.state.snapshot import PY, Snapshot
from pivotbuild.structs import struct

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pivotbuild.graph import BuildGraph
    from pivotbuild.model import StageId
    from pivotbuild.state.seal import Seal
    from pivotbuild.state.store import StateStore

UP_TO_DATE = "up to date"
FORCED = "forced"
ALWAYS = "always"
UNCACHEABLE = (FORCED, ALWAYS)  # reasons to run that recorded outputs cannot answer (no restoring)
NEVER_RUN = "never run"
COMMAND_CHANGED = "command changed"
ENV_CHANGED = "env changed"
OUTS_CHANGED = "outs changed"
PENDING_COMMIT = "pending commit"


@struct(frozen=True, slots=True)
class Decision:
    """Whether a stage must run, and why (the reason `--explain` shows)."""

    run: bool
    reason: str


@struct(frozen=True, slots=True)
class Verdict:
    """A decision in a build, and what it was made on: the snapshot taken of
    the stage (None when the answer needed none), and whether the seal alone
    proved it up to date (its stamps, not its contents, were checked)."""

    run: bool
    reason: str
    snap: Snapshot | None = None
    sealed: bool = False

    @property
    def decision(self) -> Decision:
        return Decision(self.run, self.reason)


SEALED = Verdict(False, UP_TO_DATE, None, True)


class Decider:
    """Up to date or run, and why, for the stages of one build over `store`.

    `seal`: the last build's seal, checked again per stage (stamps only);
    `forced`: -B, every stage runs; `plan`: nothing runs (-n, -q, status),
    so a stage whose upstream "ran" in the plan is not hashed: it "will run".
    """

    def __init__(
        self,
        graph: BuildGraph,
        store: StateStore,
        *,
        seal: Seal | None = None,
        forced: bool = False,
        plan: bool = False,
        trusted: frozenset[int] = frozenset(),
        elsewhere: Mapping[str, FileRecord] | None = None,
    ) -> None:
        self.graph = graph
        self.elsewhere = elsewhere  # outputs this build left on the remote, by path (build/elsewhere.py)
        self.store = store
        self.seal = seal
        self.forced = forced
        self.plan = plan
        # Stages (plan indices) the fast path found sealed moments before the
        # build: while nothing has run yet, a second look at the same stamps
        # could only tell the same (see `distrust`).
        self.trusted = trusted

    def stage(self, sid: StageId, ran: StageId | None = None) -> Verdict:
        """The verdict on `sid`, given `ran`: the first of its upstream stages
        (in the graph's order) that ran or was restored in this build (or, in
        a plan, will run), if any.  Such a stage is never skipped by the
        seal: the upstream rewrote some of its stamps."""
        if self.plan:
            if self.forced:
                return Verdict(True, FORCED)
            if ran is not None:
                return Verdict(True, f"upstream {self.graph.label(ran)} will run")
        if ran is None and not self.forced and self.seal is not None and self.sealed(sid):
            return SEALED
        stage = self.graph.stages[sid]
        root, cache = self.store.root, self.store.statcache(stage)
        snap = snapshot.take(stage, root, cache, self.elsewhere, outs=False, kept=self.graph.snapshots)
        d = decide(
            self.store.record(stage),
            snap,
            forced=self.forced,
            always=stage.always,
            outs=lambda: snapshot.outs_of(stage, root, cache),
        )
        return Verdict(d.run, d.reason, snap)

    def sealed(self, sid: StageId) -> bool:
        """Up to date by the seal alone, its stamps checked now (or, before
        any stage runs, by the fast path's look at them)."""
        if self.seal is None:
            return False
        i = self.graph.index_of(sid)
        return i in self.trusted or self.seal.holds([i])

    def distrust(self) -> None:
        """A stage starts, or is restored: from now on a stamp may change under
        the build (a stage's outputs, an edit made while it runs), so each is
        checked when its stage is decided."""
        self.trusted = frozenset()

    def known_hash(self, path: str) -> str | None:
        """The hash a stat cache holds for the file at `path` (absolute), if any."""
        return self.store.known_hash(path)

    def files_read(self) -> int:
        """Files whose contents were read (not answered from the stat cache) so far."""
        return self.store.files_read()

    def shown(self, sid: StageId, decision: Decision) -> Decision:
        """The decision as `status` shows it: a stage up to date with a
        --no-commit result the lockfile does not have yet is "pending commit"."""
        if decision.run or self.store.pending(self.graph.stages[sid]) is None:
            return decision
        return Decision(False, PENDING_COMMIT)


def decide(
    record: StageRecord | None,
    snap: Snapshot,
    *,
    forced: bool = False,
    always: bool = False,
    outs: Callable[[], tuple[FileRecord, ...]] | None = None,
) -> Decision:
    """Whether a stage must run, given its last record and what is on disk now.
    `outs`, if given, hashes the stage's outputs now (else `snap.outs` are
    theirs): called only if nothing compared before them (params, command,
    deps...) already says why the stage runs, as for most stages a build
    with work runs (docs/performance.md)."""
    if forced:
        return Decision(True, FORCED)
    if always:
        return Decision(True, ALWAYS)
    if record is None:
        return Decision(True, NEVER_RUN)
    reason = _why(record, snap, outs or (lambda: snap.outs))
    return Decision(reason is not None, reason or UP_TO_DATE)


def _why(record: StageRecord, snap: Snapshot, outs_now: Callable[[], tuple[FileRecord, ...]]) -> str | None:
    old_params = {(p.file, p.key): p.value_json for p in record.params}
    for p in snap.params:
        was = old_params.get((p.file, p.key))
        if was != p.value_json:
            return f"param {p.key} {was if was is not None else '(none)'} -> {p.value_json}"
    gone = sorted(set(old_params) - {(p.file, p.key) for p in snap.params})
    if gone:
        return f"param {gone[0][1]} {old_params[gone[0]]} -> (none)"
    if record.command != snap.command:
        return COMMAND_CHANGED
    before = dict(record.facets)
    now = dict(snap.facets)
    if snap.command.startswith("py:") and (code := _code_changed(before, now)):
        return code
    if before.get("shell") != now.get("shell") or before.get("env") != now.get("env"):
        return ENV_CHANGED
    old_deps = {d.path: d for d in record.deps}
    for dep in snap.deps:
        old = old_deps.get(dep.path)
        if dep.kind == GLOB and old is not None and [m.path for m in old.matches] != [m.path for m in dep.matches]:
            return f"dep set of glob {dep.path} changed"
    for dep in snap.deps:
        old = old_deps.get(dep.path)
        if old is None or old.kind != dep.kind or old.hash != dep.hash:
            return f"dep {_changed_path(old, dep)} changed"
    old_outs = {o.path: o for o in record.outs}
    outs = outs_now()
    for out in outs:
        if out.kind == ABSENT:
            return f"out {out.path} missing"
    for out in outs:
        old = old_outs.get(out.path)
        if old is not None and (old.kind != out.kind or old.hash != out.hash):
            return f"out {out.path} modified"
    if before.get("outs") != now.get("outs") or set(old_outs) != {o.path for o in outs}:
        return OUTS_CHANGED
    if len(old_deps) != len(snap.deps):
        return f"dep {sorted(set(old_deps) - {d.path for d in snap.deps})[0]} changed"
    if record.fingerprint != snap.fingerprint:
        return COMMAND_CHANGED
    return None


def _code_changed(before: dict[str, str], now: dict[str, str]) -> str | None:
    """A `py:` stage's reason to run for its code: the first unit of it
    (pysource.py) that changed, appeared or went ("py helpers.fmt changed")."""
    units = {k for k in (*before, *now) if k == PY or k.startswith(PY + " ")}
    for unit in sorted(units):
        if before.get(unit) != now.get(unit):
            return f"{unit} changed" if unit != PY else "py code cannot be read"
    return None


def _changed_path(old: FileRecord | None, dep: FileRecord) -> str:
    """For a glob whose matches kept their names, name the first match that changed."""
    if dep.kind == GLOB and old is not None:
        before = {m.path: m.hash for m in old.matches}
        for m in dep.matches:
            if before.get(m.path) != m.hash:
                return m.path
    return dep.path
