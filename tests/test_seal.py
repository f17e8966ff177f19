"""The up-to-date seal as read back from disk: one pass of stats says which
sealed paths changed, in C (`_stamps`, where it is built: a large seal on
two threads) or in Python (a large seal half in a forked child), and which
stages still hold."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pivotbuild.state import seal, stamptable
from pivotbuild.state.kinds import DIR
from pivotbuild.state.records import FileRecord
from pivotbuild.state.stamps import Stamp, stamp


def _stamp(path: Path) -> Stamp:
    return stamp(os.stat(path))


def _written(tmp_path: Path, names: list[str]) -> dict[str, Path]:
    files = {}
    for name in names:
        files[name] = tmp_path / name
        files[name].write_text(name)
    return files


def _sealed(tmp_path: Path, stages: dict[int, list[tuple[str, Stamp | None]]]) -> seal.Seal:
    """A seal of `stages` written to `tmp_path/.pivot/seal` and read back."""
    (tmp_path / ".pivot").mkdir(exist_ok=True)
    new = seal.Seal("plan", [], [])
    for i, files in stages.items():
        new.add(i, files)
    new.write(tmp_path)
    back = seal.read(tmp_path, "plan")
    assert back is not None
    return back


@pytest.fixture(params=["here", "forked", "python"])
def where(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "forked":  # a seal this small is split only when told to (and only without C's threads)
        monkeypatch.setattr(stamptable, "FORK_ABOVE", 2)
        monkeypatch.setattr(stamptable, "_forkable", lambda: True)
    if request.param in ("python", "forked"):  # the pass without the C module, as where it is not built
        monkeypatch.setattr(stamptable, "_stamps", None)
    return str(request.param)


def test_a_seal_read_back_finds_exactly_the_paths_that_changed(tmp_path: Path, where: str) -> None:
    files = _written(tmp_path, ["a", "b", "c", "d", "e", "f"])
    gone = str(tmp_path / "never")  # sealed as absent (a glob's directory that was not there)
    stages = {
        0: [(str(files["a"]), _stamp(files["a"])), (str(files["b"]), _stamp(files["b"]))],
        1: [(str(files["c"]), _stamp(files["c"])), (gone, None)],
        2: [(str(files["d"]), _stamp(files["d"])), (str(files["e"]), _stamp(files["e"]))],
        3: [(str(files["f"]), _stamp(files["f"]))],
    }
    assert _sealed(tmp_path, stages).holding([0, 1, 2, 3], fork=True) == {0, 1, 2, 3}
    assert _sealed(tmp_path, stages).holds([0, 1, 2, 3])

    files["b"].write_text("b, edited")  # changed
    files["e"].unlink()  # gone
    read = _sealed(tmp_path, stages)
    assert read.holding([0, 1, 2, 3], fork=True) == {1, 3}
    assert not read.holds([0, 1, 2, 3])
    assert read.holding([1], fork=True) == {1}

    assert [read.holds([i]) for i in range(4)] == [False, True, False, True]

    Path(gone).write_text("now it is there")
    assert _sealed(tmp_path, stages).holding([0, 1, 2, 3], fork=True) == {3}
    read = _sealed(tmp_path, stages)
    assert [read.holds([i]) for i in range(5)] == [False, False, False, True, False]


def test_a_seal_kept_in_memory_holds_what_it_holds_read_back(tmp_path: Path, where: str) -> None:
    """A build server keeps the seal it made for its next build (renewed from
    the last, never read back): asked about every stage, it checks all its
    paths in one pass too, paths no stage uses any more included, and says
    what the same seal written and read back says, compacted or not."""
    files = _written(tmp_path, ["a", "b", "c", "d"])
    first = _sealed(tmp_path, {0: [(str(files["a"]), _stamp(files["a"]))], 1: [(str(files["b"]), _stamp(files["b"]))]})
    files["a"].write_text("a, rebuilt")
    kept = first.renewed("plan", [], [])  # (what the next build seals: stage 0 again, with a's new stamp)
    kept.drop(0)
    kept.add(0, [(str(files["a"]), _stamp(files["a"]))])
    kept.add(2, [(str(files["c"]), _stamp(files["c"])), (str(tmp_path / "never"), None)])
    kept.add(3, [(str(files["d"]), _stamp(files["d"]))])
    assert len(kept.names) == 6  # (a's old stamp too, which no stage uses now)
    compact = kept.compacted()
    assert len(compact.names) == 5 and not compact.gathered
    kept.write(tmp_path)
    read = seal.read(tmp_path, "plan")
    assert read is not None
    every = [0, 1, 2, 3]
    assert kept.holding(every) == compact.holding(every) == read.holding(every) == {0, 1, 2, 3}
    files["b"].write_text("b, edited")
    (tmp_path / "never").write_text("now here")
    assert kept.holding(every) == compact.holding(every) == read.holding(every) == {0, 3}
    assert kept.holding([0, 1]) == {0}  # (some stages: looked at one by one)


def test_a_stage_not_sealed_never_holds(tmp_path: Path, where: str) -> None:
    files = _written(tmp_path, ["a", "b", "c"])
    read = _sealed(tmp_path, {0: [(str(files["a"]), _stamp(files["a"]))], 2: [(str(files["c"]), _stamp(files["c"]))]})
    assert read.holding([0, 1, 2], fork=True) == {0, 2}
    assert not read.holds([0, 1, 2])
    assert read.holds([0, 2])


def test_a_seal_read_back_carries_into_the_next(tmp_path: Path) -> None:
    files = _written(tmp_path, ["a", "b"])
    old = _sealed(tmp_path, {0: [(str(files["a"]), _stamp(files["a"]))], 1: [(str(files["b"]), _stamp(files["b"]))]})
    new = old.renewed("plan", [], [])
    new.drop(0)
    new.add(5, [(str(files["a"]), _stamp(files["a"]))])
    new.write(tmp_path)
    read = seal.read(tmp_path, "plan")
    assert read is not None
    assert {i: [read.paths[j] for j in own] for i, own in read.stages.items()} == {
        1: [str(files["b"])],
        5: [str(files["a"])],
    }
    assert read.holding([1, 5], fork=True) == {1, 5}


def test_the_seal_of_another_plan_is_not_read(tmp_path: Path) -> None:
    files = _written(tmp_path, ["a"])
    _sealed(tmp_path, {0: [(str(files["a"]), _stamp(files["a"]))]})
    assert seal.read(tmp_path, "another plan") is None


def test_a_renewed_seal_keeps_what_it_did_not_drop_and_only_the_paths_still_used(tmp_path: Path) -> None:
    files = _written(tmp_path, ["a", "b", "c"])
    old = _sealed(
        tmp_path,
        {
            0: [(str(files["a"]), _stamp(files["a"]))],
            1: [(str(files["b"]), _stamp(files["b"]))],
            2: [(str(files["b"]), _stamp(files["b"])), (str(files["c"]), _stamp(files["c"]))],
        },
    )
    files["c"].write_text("c, rebuilt")
    new = old.renewed("plan", [("lock", "hash")], [])
    new.drop(1)
    new.drop(2)
    new.add(2, [(str(files["c"]), _stamp(files["c"]))])  # sealed afresh
    new.write(tmp_path)
    read = seal.read(tmp_path, "plan")
    assert read is not None
    assert read.locks == [("lock", "hash")]
    assert {i: [read.paths[j] for j in own] for i, own in read.stages.items()} == {
        0: [str(files["a"])],
        2: [str(files["c"])],
    }
    assert sorted(read.paths) == [str(files["a"]), str(files["c"])]  # b's path went with stage 1
    assert read.holding([0, 1, 2], fork=True) == {0, 2}


def test_a_stage_looked_at_alone_is_statted_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _written(tmp_path, ["a", "b", "c", "d"])
    read = _sealed(tmp_path, {i: [(str(files[n]), _stamp(files[n]))] for i, n in enumerate("abcd")})
    files["d"].unlink()  # another stage's file: not this stage's business
    statted: list[object] = []
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: statted.append(p) or real(p, *a, **k))
    assert read.holding([0], fork=True) == {0}
    assert [os.fsdecode(p) for p in statted] == [str(files["a"])]  # type: ignore[arg-type]
    statted.clear()
    assert read.holds([1]) and not read.holds([3])  # (as a build asks of the stage it decides)
    assert [os.fsdecode(p) for p in statted] == [str(files["b"]), str(files["d"])]  # type: ignore[arg-type]


def _frame(fields: list[object]) -> bytes:
    return seal.FRAME.dump(fields)


@pytest.mark.parametrize(
    "packed",
    [
        [7, [], [], b"", b"\0\0\0\0", b""],  # the paths not a byte string
        [b"/x", [[1], 2, 3, 4], [], b"", b"\0\0\0\0", b""],  # a stamp's field not an int
        [b"/x", [1, 2, 3, 4], [5], b"", b"\0\0\0\0", b""],  # an absent path out of range
        [
            b"/x\0/y",
            [1] * 8,
            [],
            b"\0\0\0\0" * 2,
            b"\0\0\0\0\2\0\0\0\1\0\0\0",
            b"\0\0\0\0\1\0\0\0",
        ],  # offsets backwards
        [b"/x", [1, 2, 3, 4], [], b"\0\0\0\0", b"\0\0\0\0\1\0\0\0", b"\7\0\0\0"],  # a member out of range
    ],
    ids=["names", "stamp", "absent", "offsets", "member"],
)
def test_a_seal_of_another_shape_is_damaged_when_read_not_later(tmp_path: Path, packed: list[object]) -> None:
    (tmp_path / ".pivot").mkdir()
    seal.seal_path(tmp_path).write_bytes(_frame(["plan", [], [], packed]))
    with pytest.raises(seal.Damaged):
        seal.read(tmp_path, "plan")


@pytest.mark.parametrize("instead", ["nothing", "a file"])
def test_a_recorded_directory_gone_since_is_left_unsealed(tmp_path: Path, instead: str) -> None:
    # (a stage removed another's directory output, or --no-checkout left it on the remote)
    if instead == "a file":
        (tmp_path / "tree").write_text("not a directory\n")
    record = FileRecord("tree", DIR, "0" * 16)
    with pytest.raises(seal.Unsealable):
        seal.stage_files([record], tmp_path, {}, time.time_ns(), {})


def test_a_look_begun_early_answers_the_next_holding_once_and_leaves_no_thread(tmp_path: Path) -> None:
    """A build server begins the stats as a request comes (`look_early`): the
    fast check's `holding` takes that answer, what comes after looks again,
    and a look no build took is waited for and dropped."""
    import threading

    if not stamptable.c_pass():
        pytest.fail("_stamps is not built here (test_stamptable says why)")
    files = _written(tmp_path, ["a", "b"])
    read = _sealed(tmp_path, {0: [(str(files["a"]), _stamp(files["a"]))], 1: [(str(files["b"]), _stamp(files["b"]))]})
    kept = read.renewed("plan", [], [])  # (a seal made in this process: the server's)
    files["b"].write_text("b, edited before the request")
    kept.look_early()
    assert kept._early is not None
    kept._early[0].join()  # (the look made: what follows is after the request)
    files["a"].write_text("a, edited since")
    assert kept.holding([0, 1]) == {0}  # the answer as of the look: a's edit is the next build's
    assert kept.holding([0, 1]) == set()  # (looked at again)
    kept.look_early()
    kept.end_early()
    assert [t for t in threading.enumerate() if t.name == "stamps"] == []
    read.look_early()  # (a seal read from its file: checked in one pass of its own, never early)
    assert [t for t in threading.enumerate() if t.name == "stamps"] == []
