"""cache/storer.py: a stage's outputs copied into the cache behind the build,
small ones by the build loop's own thread once they have settled, large ones
by threads; `finish` stores whatever is left."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pivotbuild.build.executors.poller import Poller
from pivotbuild.build.recorder import store_hints
from pivotbuild.cache.outputs import OutputCache
from pivotbuild.cache.store import Mode
from pivotbuild.cache.storer import LOOP_MAX, Storer
from pivotbuild.errors import Location
from pivotbuild.model import Out, Stage, StageId
from pivotbuild.state import stamps
from pivotbuild.state.hashing import hash_file


def stage(name: str) -> Stage:
    return Stage(id=StageId("", name), base=name, loc=Location("Pivotfile", 1, 1), command=("true",))


def storer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cache storer")]


def setup(tmp_path: Path, size: int) -> tuple[Storer, Poller, OutputCache, str, str, list[str]]:
    (tmp_path / ".pivot").mkdir()
    warnings: list[str] = []
    outputs = OutputCache(tmp_path, warnings.append)
    poller = Poller()
    storer = Storer(outputs, warnings.append, lambda *proof: None, poller)
    path = str(tmp_path / "out.bin")
    with open(path, "wb") as f:
        f.write(b"x" * size)
    return storer, poller, outputs, path, hash_file(path), warnings


def test_a_small_file_is_stored_by_the_loops_clock_once_settled_without_a_thread(tmp_path: Path) -> None:
    storer, poller, outputs, path, digest, warnings = setup(tmp_path, 100)
    storer.put(stage("s"), None, ((path, digest),), "s")
    now = time.monotonic()
    due = poller.due(now)
    assert due is not None and due > now  # not yet: its racy window may not have passed
    assert not outputs.cache.has(digest)
    assert poller.due(due) is None  # then the clock stores it, and has nothing more to do
    assert outputs.cache.has(digest)
    assert storer_threads() == []
    storer.finish()
    assert storer.unstored == set()
    assert warnings == []


def test_a_file_the_cache_does_not_pack_is_handed_to_the_threads(tmp_path: Path) -> None:
    # (Not packed: an object of its own, a file created and written, which
    # would hold up the loop and the stages it starts.)
    storer, poller, outputs, path, digest, warnings = setup(tmp_path, LOOP_MAX + 1)
    storer.put(stage("big"), None, ((path, digest),), "big")
    assert len(storer_threads()) == 2
    assert poller.due(time.monotonic()) is None  # nothing for the loop
    storer.finish()
    assert outputs.cache.has(digest)
    assert storer.unstored == set()
    assert storer_threads() == []
    assert warnings == []


def test_the_sizes_the_caller_knows_route_the_copy_without_a_stat(tmp_path: Path) -> None:
    # The recorder knows each file's size from the stat it hashed it by: a
    # file that has grown since is still taken as it was then.
    storer, poller, outputs, path, digest, warnings = setup(tmp_path, 100)
    storer.put(stage("s"), None, ((path, digest),), "s", small=False)
    assert len(storer_threads()) == 2
    storer.finish()
    assert outputs.cache.has(digest)
    (tmp_path / "big").mkdir()
    storer, poller, outputs, path, digest, warnings = setup(tmp_path / "big", LOOP_MAX + 1)
    storer.put(stage("big"), None, ((path, digest),), "big", small=True)
    assert storer_threads() == []
    due = poller.due(time.monotonic())
    assert due is not None and poller.due(due) is None  # the loop's clock copied it
    assert outputs.cache.has(digest)
    storer.finish()
    assert warnings == []


def test_a_copy_is_due_when_the_caller_says_its_files_settle(tmp_path: Path) -> None:
    # (The recorder knows from the files' stamps: about 12 ms after they were
    # written on a local file system, not the 50 ms a network one may need.)
    storer, poller, outputs, path, digest, warnings = setup(tmp_path, 100)
    before = time.monotonic()
    storer.put(stage("s"), None, ((path, digest),), "s", small=True, settled_in=0.005)
    due = poller.due(time.monotonic())
    assert due is not None and before + 0.005 <= due < before + 0.05
    assert poller.due(due) is None
    assert outputs.cache.has(digest)
    storer.finish()
    assert warnings == []


def test_the_recorder_tells_the_storer_sizes_and_when_the_files_settle(tmp_path: Path) -> None:
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_bytes(b"x" * 100)
    big.write_bytes(b"x" * (LOOP_MAX + 1))
    st_small, st_big = os.stat(small), os.stat(big)
    written = max(st_small.st_mtime_ns, st_small.st_ctime_ns)
    window = stamps.window_ns(st_small)
    assert store_hints([(str(small), st_small, "h")], written) == (True, window / 1e9)
    newest = max(written, st_big.st_mtime_ns, st_big.st_ctime_ns)  # (the later file decides)
    fits, wait = store_hints([(str(small), st_small, "h"), (str(big), st_big, "h")], newest + window // 2)
    assert not fits and wait == (window - window // 2) / 1e9
    assert store_hints([(str(small), st_small, "h")], written + window + 1) == (True, 0.0)  # settled already
    assert store_hints([], written) == (True, 0.0)


def test_capture_takes_the_stats_the_executor_took(tmp_path: Path) -> None:
    # (Taken as the stage ended: an output missing then is missing, whatever comes later.)
    (tmp_path / ".pivot").mkdir()
    (tmp_path / "out.txt").write_text("late\n")
    outputs = OutputCache(tmp_path, [].append)
    s = Stage(id=StageId("", "s"), base="s", loc=Location("Pivotfile", 1, 1), command=("true",), outs=(Out("out.txt"),))
    assert outputs.capture(s, {}, False, stats=[None]).missing == ("out.txt",)
    assert outputs.capture(s, {}, False).missing == ()


def test_finish_stores_what_was_not_due_yet_and_reports_a_changed_file(tmp_path: Path) -> None:
    storer, poller, outputs, path, digest, warnings = setup(tmp_path, 10)
    other = str(tmp_path / "other.txt")
    Path(other).write_text("before\n")
    storer.put(stage("a"), None, ((path, digest),), "a")
    storer.put(stage("b"), None, ((other, hash_file(other)),), "b")
    Path(other).write_text("changed after b finished\n")
    os.utime(other)
    storer.finish()  # at once, not waiting for their windows
    assert outputs.cache.has(digest)
    assert storer.unstored == {StageId("", "b")}
    assert warnings == [f"{other} changed after b finished; the next build will see it"]
    assert poller.clocks == []


def test_finish_drops_every_linked_object_written_to_since_and_reports_each_changed_file(tmp_path: Path) -> None:
    """In hardlink mode an output is its cache object.  Stage a's x.txt changes
    before it is read again (which says so and drops its object), and y.txt
    after that: `finish` drops y's object too, though the stage is already
    not stored, and reports every changed file, for the stat cache to
    forget the hash it holds for it."""
    (tmp_path / ".pivot").mkdir()
    warnings: list[str] = []
    changed: list[str] = []
    outputs = OutputCache(tmp_path, warnings.append)
    outputs.mode = Mode.HARDLINK
    storer = Storer(outputs, warnings.append, lambda *proof: None, changed=lambda _stage, path: changed.append(path))
    x, y = tmp_path / "x.txt", tmp_path / "y.txt"
    x.write_bytes(b"x\n")
    y.write_bytes(b"y\n")
    lx, ly = outputs.cache.ingest_by_link(str(x)), outputs.cache.ingest_by_link(str(y))
    assert lx.is_object and ly.is_object
    with open(x, "ab") as f:
        f.write(b"more\n")
    a = stage("a")
    linked = ((str(x), lx.digest, stamps.stamp(lx.stat)), (str(y), ly.digest, stamps.stamp(ly.stat)))
    storer.put(a, None, (), "a", ((str(x), lx.digest),), linked=linked)
    time.sleep(0.2)  # (x read again, past its racy window)
    assert changed == [str(x)], warnings
    with open(y, "ab") as f:
        f.write(b"more\n")
    storer.finish()
    assert changed == [str(x), str(y)]
    assert [w.split(" changed after ")[0] for w in warnings] == [str(x), str(y)], warnings
    assert not outputs.cache.has(lx.digest) and not outputs.cache.has(ly.digest)
    assert storer.unstored == {a.id}


def test_a_stage_that_counted_on_a_dropped_object_is_not_stored_either(tmp_path: Path) -> None:
    """b's output hashed as a's, whose output was the cache's object, so b
    stored nothing of its own (`holds`).  a's file changes before it is read
    again, which takes the object with it: b is not stored either (the next
    build stores its output again); c, with another hash, is."""
    (tmp_path / ".pivot").mkdir()
    warnings: list[str] = []
    outputs = OutputCache(tmp_path, warnings.append)
    outputs.mode = Mode.HARDLINK
    storer = Storer(outputs, warnings.append, lambda *proof: None)
    x, other = tmp_path / "x.txt", tmp_path / "other.txt"
    x.write_bytes(b"same\n")
    other.write_bytes(b"other\n")
    lx = outputs.cache.ingest_by_link(str(x))
    lo = outputs.cache.ingest_by_link(str(other))
    with open(x, "ab") as f:
        f.write(b"more\n")
    a, b, c = stage("a"), stage("b"), stage("c")
    storer.put(a, None, (), "a", ((str(x), lx.digest),))
    storer.put(b, None, (), "b", holds=((str(tmp_path / "b.txt"), lx.stat, lx.digest),))
    storer.put(c, None, (), "c", holds=((str(tmp_path / "c.txt"), lo.stat, lo.digest),))
    time.sleep(0.2)  # (x read again, past its racy window)
    storer.finish()
    assert not outputs.cache.has(lx.digest)
    assert storer.unstored == {a.id, b.id}
    assert [w.split(" changed after ")[0] for w in warnings] == [str(x)]


def test_a_changed_file_in_copy_mode_leaves_the_other_stages_of_its_hash_stored(tmp_path: Path) -> None:
    """In copy mode no output is its object: one that changed after its stage
    ended takes no object with it, and another stage whose output had the
    same bytes stays stored."""
    storer, _poller, _outputs, path, digest, warnings = setup(tmp_path, 10)
    a, b = stage("a"), stage("b")
    storer.put(a, None, ((path, digest),), "a")
    storer.put(b, None, (), "b", holds=((str(tmp_path / "b.bin"), os.stat(path), digest),))
    Path(path).write_bytes(b"y" * 10)
    os.utime(path)
    storer.finish()
    assert storer.unstored == {a.id}
    assert [w.split(" changed after ")[0] for w in warnings] == [path]
