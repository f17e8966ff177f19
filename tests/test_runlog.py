"""The run cache's logs (cache/runlog.py): appends and rewrites of one log by
several processes or threads, frames being written, frames of another
version, and gc's view of a name that is both in a log and a file."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pivotbuild.cache import runlog
from pivotbuild.cache.outputs import OutputCache
from pivotbuild.cache.runcache import RunCache, encode_entry, entry_rel, inputs_key, log_rel, stage_key
from pivotbuild.model import StageId
from pivotbuild.state import framing
from pivotbuild.state.files import write_atomic
from pivotbuild.state.records import FileRecord, StageRecord

DEPS = (FileRecord("in.txt", "file", "a" * 32),)


def outs(n: int) -> tuple[FileRecord, ...]:
    return (FileRecord("out.txt", "file", f"{n:032x}"),)


def log_of(cache_dir: Path, sid: StageId) -> Path:
    return cache_dir / log_rel(stage_key(sid)[:2])


def test_a_frame_still_being_appended_is_not_taken_for_damage(tmp_path: Path) -> None:
    """A reader that finds a frame cut short (its name written, not the rest)
    waits for the log's lock before it calls it damage: an appender holds it
    while it writes."""
    one, two = StageId("", "s"), StageId("", "s")
    RunCache(tmp_path).record(one, "fp1", DEPS, outs(1))
    log = log_of(tmp_path, one)
    name = f"{stage_key(two)}-{inputs_key('fp2', DEPS)}"
    frame = runlog.LOG.dump([name, encode_entry(outs(2))])
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    said: list[str] = []
    found: list[object] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.write(fd, frame[:100])  # an appender, half way through its frame (past its name)
        reader = threading.Thread(target=lambda: found.append(RunCache(tmp_path, said.append).lookup(two, "fp2", DEPS)))
        reader.start()
        time.sleep(0.3)
        assert reader.is_alive()  # (waiting for the lock, not calling the half frame damage)
        os.write(fd, frame[100:])
    finally:
        os.close(fd)
    reader.join(10)
    assert said == [] and found == [outs(2)]
    entries, damaged, _ = runlog.read_log(log.read_bytes())
    assert damaged == 0 and len(entries) == 2


def test_a_torn_frame_is_said_once_and_the_log_kept_whole_around_it(tmp_path: Path) -> None:
    sid = StageId("", "s")
    runs = RunCache(tmp_path)
    runs.record(sid, "fp1", DEPS, outs(1))
    log = log_of(tmp_path, sid)
    good = log.read_bytes()
    name = f"{stage_key(sid)}-{inputs_key('fp2', DEPS)}"
    log.write_bytes(good + runlog.LOG.dump([name, encode_entry(outs(2))])[:30])  # a killed build's frame
    name3 = f"{stage_key(sid)}-{inputs_key('fp3', DEPS)}"
    runlog.append(str(log), name3, encode_entry(outs(3)))  # another build's, after the torn one
    said: list[str] = []
    again = RunCache(tmp_path, said.append)
    assert again.lookup(sid, "fp1", DEPS) == outs(1) and again.lookup(sid, "fp3", DEPS) == outs(3)
    assert said == []  # (a build checks only the frames it uses)
    shard = stage_key(sid)[:2]
    name1 = f"{stage_key(sid)}-{inputs_key('fp1', DEPS)}"
    assert [n for n, _ in RunCache(tmp_path, said.append).entries(shard)] == sorted([name1, name3])
    assert len(said) == 1 and "a damaged or torn entry" in said[0]  # (gc and push read every frame)
    assert len(RunCache(tmp_path, said.append).entries(shard)) == 2 and len(said) == 1  # (rewritten)
    assert RunCache(tmp_path, said.append).lookup(sid, "fp2", DEPS) is None and len(said) == 1


def test_a_frame_of_another_version_is_kept_and_not_said(tmp_path: Path) -> None:
    """A newer pivotbuild's frames, in a cache both use, are a miss to this
    one, never damage, and a rewrite keeps them byte for byte."""
    sid = StageId("", "s")
    RunCache(tmp_path).record(sid, "fp1", DEPS, outs(1))
    log = log_of(tmp_path, sid)
    newer = framing.Format(runlog.LOG_MAGIC, runlog.LOG.version + 1, "x").dump(["anything", b"else"])
    with open(log, "ab") as f:
        f.write(newer + b"PIVRUNL\nbroken")  # then a damaged frame, so that the log is written again
    said: list[str] = []
    assert RunCache(tmp_path, said.append).lookup(sid, "fp1", DEPS) == outs(1)
    assert said == []  # (a build checks only the frames it uses)
    assert len(RunCache(tmp_path, said.append).entries(stage_key(sid)[:2])) == 1  # (gc and push read every frame)
    assert len(said) == 1 and "a damaged or torn entry" in said[0]
    assert newer in log.read_bytes()
    entries, damaged, foreign = runlog.read_log(log.read_bytes())
    assert damaged == 0 and foreign == [newer] and len(entries) == 1


def test_an_append_waiting_for_a_rewrite_goes_to_the_new_log(tmp_path: Path) -> None:
    sid = StageId("", "s")
    RunCache(tmp_path).record(sid, "fp1", DEPS, outs(1))
    log = log_of(tmp_path, sid)
    fd = os.open(log, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a rewrite in progress
        writer = threading.Thread(target=lambda: RunCache(tmp_path).record(sid, "fp2", DEPS, outs(2)))
        writer.start()
        time.sleep(0.3)
        write_atomic(log, log.read_bytes(), fsync=False)  # the rewrite's new log, renamed in
    finally:
        os.close(fd)
    writer.join(10)
    fresh = RunCache(tmp_path)
    assert fresh.lookup(sid, "fp1", DEPS) == outs(1) and fresh.lookup(sid, "fp2", DEPS) == outs(2)


def test_removing_a_name_removes_its_log_entry_and_its_file(tmp_path: Path) -> None:
    """gc drops a name from the log and as a file (pull's, an older
    pivotbuild's), so the older one does not come back."""
    sid = StageId("", "s")
    RunCache(tmp_path).record(sid, "fp", DEPS, outs(2))
    entry = tmp_path / entry_rel(stage_key(sid), inputs_key("fp", DEPS))
    entry.parent.mkdir(parents=True)
    entry.write_bytes(encode_entry(outs(1)))
    runs = RunCache(tmp_path)
    assert sorted(b for _, b in runs.entries(stage_key(sid), shadowed=True)) == sorted(
        [encode_entry(outs(1)), encode_entry(outs(2))]
    )
    runs.remove(stage_key(sid)[:2], {entry.name})
    assert not entry.exists() and RunCache(tmp_path).lookup(sid, "fp", DEPS) is None


def test_gc_dry_run_writes_nothing(tmp_path: Path) -> None:
    sid = StageId("", "s")
    RunCache(tmp_path).record(sid, "fp", DEPS, outs(1))
    log = log_of(tmp_path, sid)
    damaged = log.read_bytes() + b"PIVRUNL\ncut"
    log.write_bytes(damaged)
    looking = RunCache(tmp_path, repair=False)
    looking.remove(stage_key(sid)[:2], {f"{stage_key(sid)}-{inputs_key('fp', DEPS)}"})
    assert log.read_bytes() == damaged


def test_threads_recording_while_the_loop_looks_up(tmp_path: Path) -> None:
    runs = RunCache(tmp_path)
    errors: list[BaseException] = []

    def record(first: int) -> None:
        try:
            for i in range(first, first + 200):
                runs.record(StageId("", f"s{i}"), "fp", DEPS, outs(i))
        except BaseException as exc:  # (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(k * 200,)) for k in range(3)]
    for t in threads:
        t.start()
    for i in range(600):
        runs.lookup(StageId("", f"s{i}"), "fp", DEPS)
    for t in threads:
        t.join()
    assert errors == []
    fresh = RunCache(tmp_path)
    assert all(fresh.lookup(StageId("", f"s{i}"), "fp", DEPS) == outs(i) for i in range(600))


def test_a_look_up_does_not_wait_for_a_thread_appending_to_another_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A storer thread recording an entry may be creating its folder's log (a
    # file created: long on a busy file system); the build's loop looking up
    # another stage meanwhile must not wait for it.
    runs = RunCache(tmp_path)
    writing, finish = threading.Event(), threading.Event()
    real_append = runlog.append

    def slow_append(path: str, name: str, entry: bytes, *, create: bool = True) -> None:
        writing.set()
        assert finish.wait(10)
        real_append(path, name, entry, create=create)

    monkeypatch.setattr(runlog, "append", slow_append)
    a, b = StageId("", "a"), StageId("", "b")
    assert stage_key(a)[:2] != stage_key(b)[:2]  # (two folders)
    recorder = threading.Thread(target=runs.record, args=(a, "fp", DEPS, outs(1)))
    recorder.start()
    try:
        assert writing.wait(10)
        looked: list[object] = []
        looker = threading.Thread(target=lambda: looked.append(runs.lookup(b, "fp", DEPS)))
        looker.start()
        looker.join(5)
        assert not looker.is_alive(), "the look-up waited for the append"
        assert looked == [None]
    finally:
        finish.set()
        recorder.join()
    assert runs.lookup(a, "fp", DEPS) == outs(1)


def test_a_cache_of_an_earlier_version_keeps_its_entries(tmp_path: Path) -> None:
    """Earlier versions appended to a log per folder (`runs/<ab>.log`): its
    entries are still found, gc removes from it, and a newer record of the
    same inputs (appended to the log of sixteen folders) wins over it."""
    from pivotbuild.cache.runcache import folder_log_rel

    sid = StageId("", "s")
    name = f"{stage_key(sid)}-{inputs_key('fp', DEPS)}"
    old = tmp_path / folder_log_rel(stage_key(sid)[:2])
    old.parent.mkdir(parents=True)
    runlog.append(str(old), name, encode_entry(outs(1)))
    assert RunCache(tmp_path).lookup(sid, "fp", DEPS) == outs(1)
    assert not log_of(tmp_path, sid).exists()  # (reading writes nothing)
    RunCache(tmp_path).record(sid, "fp", DEPS, outs(2))  # the same inputs gave other outputs
    assert RunCache(tmp_path).lookup(sid, "fp", DEPS) == outs(2)
    assert runlog.read_log(log_of(tmp_path, sid).read_bytes())[0] == {name: encode_entry(outs(2))}
    runs_ = RunCache(tmp_path)
    shard = stage_key(sid)[:2]
    assert shard in runs_.shards() and [n for n, _ in runs_.entries(shard)] == [name]
    runs_.remove(shard, {name})  # (gc)
    assert RunCache(tmp_path).lookup(sid, "fp", DEPS) is None
    assert not old.exists() and not log_of(tmp_path, sid).exists()  # (a log left empty is removed)


def test_a_lookup_checks_only_the_frame_it_uses(tmp_path: Path) -> None:
    """A build reads a log's names from the frames' headers: a damaged entry
    it does not look up costs it nothing and goes unsaid; the one it looks up
    is checked; gc (which reads every entry) finds the other, says so once,
    and removes it."""
    sids = [StageId("", f"s{i}") for i in range(400)]
    first = RunCache(tmp_path)
    for i, sid in enumerate(sids):
        first.record(sid, "fp", DEPS, outs(i))
    hit, other = sids[0], next(s for s in sids[1:] if stage_key(s)[0] == stage_key(sids[0])[0])
    log = log_of(tmp_path, hit)
    blob = bytearray(log.read_bytes())
    other_name = f"{stage_key(other)}-{inputs_key('fp', DEPS)}"
    at = blob.index(encode_entry(outs(sids.index(other))))
    blob[at + 30] ^= 0x40  # inside the other's entry: its frame's checksum fails
    log.write_bytes(bytes(blob))
    said: list[str] = []
    runs_ = RunCache(tmp_path, said.append)
    assert runs_.lookup(hit, "fp", DEPS) == outs(0)
    assert said == []
    assert runs_.lookup(other, "fp", DEPS) is None  # the damaged one: a miss, said once, removed
    assert len(said) == 1 and "damaged or torn entry" in said[0], said
    assert other_name not in runlog.read_log(log.read_bytes())[0]
    assert runs_.lookup(sids[-1], "fp", DEPS) == outs(len(sids) - 1)
    blob = bytearray(log.read_bytes())
    blob[blob.index(encode_entry(outs(0))) + 30] ^= 0x40
    log.write_bytes(bytes(blob))
    said.clear()
    gc_view = RunCache(tmp_path, said.append)
    names = [n for shard in gc_view.shards() for n, _ in gc_view.entries(shard)]
    assert len(names) == len(sids) - 2 and len(said) == 1, said
    assert RunCache(tmp_path).lookup(hit, "fp", DEPS) is None


def test_a_log_read_again_in_one_process_is_read_from_where_it_was_left(tmp_path: Path) -> None:
    """A build server's builds read a log once, then only what was appended
    since (runlog.read_indexed), and find each name's last frame by the
    names noted as it was read: entries appended by others since are found,
    a name's newest frame wins, a log replaced whole (a rewrite: another
    inode) is read afresh, and one whose last frame is cut short is
    searched as before."""
    sid = StageId("", "s")
    RunCache(tmp_path).record(sid, "fp1", DEPS, outs(1))
    log = log_of(tmp_path, sid)
    assert RunCache(tmp_path).lookup(sid, "fp1", DEPS) == outs(1)
    first = runlog.read_indexed(str(log))
    assert first is not None and first.covers(first.blob) and len(first.frames) == 1
    blob = first.blob
    RunCache(tmp_path).record(sid, "fp2", DEPS, outs(2))  # (another build's, appended)
    name1 = f"{stage_key(sid)}-{inputs_key('fp1', DEPS)}"
    runlog.append(str(log), name1, encode_entry(outs(3)))  # a newer frame of the same name
    runs = RunCache(tmp_path)
    assert runs.lookup(sid, "fp2", DEPS) == outs(2) and runs.lookup(sid, "fp1", DEPS) == outs(3)
    again = runlog.read_indexed(str(log))
    assert again is first and again.blob.startswith(blob) and again.blob == log.read_bytes()  # (extended)
    assert again.covers(again.blob) and not again.covers(blob) and len(again.frames) == 2
    # Replaced whole, with less in it: read afresh.
    write_atomic(log, runlog.log_bytes({name1: encode_entry(outs(4))}), fsync=False)
    runs = RunCache(tmp_path)
    assert runs.lookup(sid, "fp1", DEPS) == outs(4) and runs.lookup(sid, "fp2", DEPS) is None
    # A frame cut short at the end (an appender's, half written): the names before it are still found.
    name5 = f"{stage_key(sid)}-{inputs_key('fp5', DEPS)}"
    with open(log, "ab") as f:
        f.write(runlog.LOG.dump([name5, encode_entry(outs(5))])[:120])
    torn = runlog.read_indexed(str(log))
    assert torn is not None and not torn.covers(torn.blob)
    said: list[str] = []
    assert RunCache(tmp_path, said.append).lookup(sid, "fp1", DEPS) == outs(4) and said == []


def test_an_append_that_may_not_create_leaves_a_missing_log_missing(tmp_path: Path) -> None:
    """A build server's appends after its answer (OutputCache.close_runs):
    a project removed meanwhile is not made again."""
    path = tmp_path / "runs" / "a.log"
    runlog.append_many(str(path), [("n", b"entry")], create=False)
    assert not (tmp_path / "runs").exists()
    path.parent.mkdir()
    runlog.append_many(str(path), [("n", b"entry")])
    runlog.append_many(str(path), [("m", b"other")], create=False)
    assert path.read_bytes().count(b"entry") == 1 and path.read_bytes().count(b"other") == 1


def _given(root: Path, fingerprint: str, names: list[str]) -> OutputCache:
    """A build's OutputCache in project `root`, given a record of each stage to remember."""
    outputs = OutputCache(root, lambda _text: None, building=True)
    for name in names:
        stage = SimpleNamespace(id=StageId("", name))
        outputs.remember(stage, StageRecord(name, fingerprint, "cmd", DEPS, outs(len(name)), ()))  # type: ignore[arg-type]
    return outputs


def _found(root: Path, fingerprint: str, name: str) -> bool:
    runs = RunCache(root / ".pivot" / "cache")
    return runs.lookup(StageId("", name), fingerprint, DEPS) == outs(len(name))


def test_a_server_makes_new_logs_before_its_answer_and_after_it_only_appends(tmp_path: Path) -> None:
    """A server makes a build's run-cache entries once its client has the
    answer, except those whose logs do not exist yet (`close_new_runs`,
    before the answer); after it, nothing is created: a script that removes
    its project right after its last build finds it gone."""
    (tmp_path / ".pivot").mkdir()
    names = [f"s{i}" for i in range(40)]  # (their logs: most of the sixteen)
    first = _given(tmp_path, "fp1", names)
    first.close_new_runs()  # a first build: every log is new
    assert all(_found(tmp_path, "fp1", n) for n in names)
    first.close_runs(create=False)  # (nothing left)
    logs = sorted(p.name for p in (tmp_path / ".pivot" / "cache" / "runs").iterdir())

    second = _given(tmp_path, "fp2", names)
    second.close_new_runs()  # every log exists: all are left for after the answer
    assert not any(_found(tmp_path, "fp2", n) for n in names)
    second.close_runs(create=False)
    assert all(_found(tmp_path, "fp2", n) for n in names)
    assert sorted(p.name for p in (tmp_path / ".pivot" / "cache" / "runs").iterdir()) == logs

    third = _given(tmp_path, "fp3", names)
    third.close_new_runs()
    shutil.rmtree(tmp_path / ".pivot")  # the project removed right after the answer
    third.close_runs(create=False)
    assert not (tmp_path / ".pivot").exists()
