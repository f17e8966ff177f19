"""Three-way merge of lockfiles (state/lockmerge.py) and `pivotbuild lock merge`, git's merge driver."""

from __future__ import annotations

from pathlib import Path

from conftest import Project

from pivotbuild.state import lockfile
from pivotbuild.state.lockmerge import merge
from pivotbuild.state.records import FileRecord, LockData, StageRecord


def rec(name: str, version: str = "1") -> StageRecord:
    return StageRecord(
        name=name,
        fingerprint=f"fp-{name}-{version}",
        command=f"make {name}",
        deps=(FileRecord(f"{name}.in", "file", version * 32),),
        outs=(FileRecord(f"{name}.out", "file", version * 32),),
        params=(),
    )


def lock(*records: StageRecord) -> LockData:
    return LockData.of({r.name: r for r in records})


BASE = lock(rec("a"), rec("b"), rec("c"))


def test_a_stage_changed_on_one_side_comes_from_that_side() -> None:
    merged = merge(BASE, lock(rec("a", "2"), rec("b"), rec("c")), lock(rec("a"), rec("b", "3"), rec("c")))
    assert merged.data == lock(rec("a", "2"), rec("b", "3"), rec("c"))
    assert merged.dropped == ()


def test_a_stage_changed_identically_on_both_sides_is_kept() -> None:
    side = lock(rec("a", "2"), rec("b"), rec("c"))
    merged = merge(BASE, side, side)
    assert merged.data == side
    assert merged.dropped == ()


def test_a_stage_changed_differently_on_both_sides_is_dropped() -> None:
    merged = merge(BASE, lock(rec("a", "2"), rec("b"), rec("c")), lock(rec("a", "3"), rec("b"), rec("c")))
    assert merged.data == lock(rec("b"), rec("c"))
    assert merged.dropped == ("a",)


def test_added_on_one_side_is_taken_and_added_differently_on_both_is_dropped() -> None:
    merged = merge(BASE, lock(*BASE.stages, rec("d"), rec("e", "1")), lock(*BASE.stages, rec("e", "2")))
    assert merged.data == lock(*BASE.stages, rec("d"))
    assert merged.dropped == ("e",)


def test_removed_on_one_side_is_removed_unless_changed_on_the_other() -> None:
    ours = lock(rec("b"), rec("c"))  # a removed
    theirs = lock(rec("a"), rec("b", "2"))  # c removed, b changed
    merged = merge(BASE, ours, theirs)
    assert merged.data == lock(rec("b", "2"))
    merged = merge(BASE, lock(rec("b"), rec("c")), lock(rec("a", "2"), rec("b"), rec("c")))
    assert merged.data == lock(rec("b"), rec("c"))
    assert merged.dropped == ("a",)


def test_the_merge_is_deterministic_whatever_the_order_of_the_records() -> None:
    ours = LockData((rec("c"), rec("a", "2"), rec("b")))
    theirs = LockData((rec("b", "3"), rec("a"), rec("c")))
    one = lockfile.encode(merge(BASE, ours, theirs).data)
    assert one == lockfile.encode(lock(rec("a", "2"), rec("b", "3"), rec("c")))
    assert lockfile.encode(merge(lock(*reversed(BASE.stages)), ours, theirs).data) == one


def _write(path: Path, data: LockData) -> Path:
    path.write_bytes(lockfile.encode(data))
    return path


def test_the_driver_writes_the_merge_into_ours_and_names_dropped_stages(project: Project) -> None:
    base = _write(project.root / "base", BASE)
    ours = _write(project.root / "ours", lock(rec("a", "2"), rec("b", "2"), rec("c")))
    theirs = _write(project.root / "theirs", lock(rec("a", "3"), rec("b"), rec("c", "3")))
    r = project.run("lock", "merge", str(base), str(ours), str(theirs))
    assert r.code == 0, r.err
    assert lockfile.read(ours) == lock(rec("b", "2"), rec("c", "3"))
    assert "stage a changed on both sides" in r.err
    assert "runs again" in r.err


def test_the_driver_reads_an_empty_base_as_an_empty_lockfile(project: Project) -> None:
    base = project.root / "base"
    base.write_bytes(b"")
    ours = _write(project.root / "ours", lock(rec("a")))
    theirs = _write(project.root / "theirs", lock(rec("b")))
    r = project.run("lock", "merge", str(base), str(ours), str(theirs))
    assert r.code == 0, r.err
    assert lockfile.read(ours) == lock(rec("a"), rec("b"))


def test_the_driver_refuses_an_unreadable_lockfile_and_leaves_ours_alone(project: Project) -> None:
    base = _write(project.root / "base", BASE)
    ours = _write(project.root / "ours", BASE)
    theirs = project.root / "theirs"
    theirs.write_bytes(b"<<<<<<< not a lockfile")
    before = ours.read_bytes()
    r = project.run("lock", "merge", str(base), str(ours), str(theirs))
    assert r.code == 2
    assert r.err.startswith("pivotbuild: lock merge: ")
    assert "theirs" in r.err and "resolve the merge by hand" in r.err
    assert "Traceback" not in r.err
    assert ours.read_bytes() == before
    r = project.run("lock", "merge", str(base), str(ours), str(project.root / "missing"))
    assert r.code == 2 and "cannot be read" in r.err
