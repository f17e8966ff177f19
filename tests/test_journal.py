"""The journal (state/journal.py), build history (state/history.py) and the project lock (state/projectlock.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S

from pivotbuild.state import history, lockfile
from pivotbuild.state.journal import Journal, fold, frame, read_records
from pivotbuild.state.projectlock import LOCK_NAME, Busy, ProjectLock
from pivotbuild.state.records import FileRecord, LockData, ParamRecord, StageRecord


def record(name: str, salt: str = "") -> StageRecord:
    return StageRecord(
        name=name,
        fingerprint=f"fp-{name}-{salt}",
        command=f"make {name}",
        deps=(
            FileRecord("in.txt", "file", "a" * 32),
            FileRecord("src/*.c", "glob", "b" * 32, (FileRecord("src/x.c", "file", "c" * 32),)),
        ),
        outs=(FileRecord(f"{name}.out", "file", "d" * 31 + (salt[:1] or "0")),),
        params=(ParamRecord("params.toml", "k", '"v"'),),
        facets=(("shell", "e" * 32), ("env", "f" * 32), ("outs", "0" * 32)),
    )


# -- append / read ---------------------------------------------------------------------


def test_appended_records_are_read_back(tmp_path: Path) -> None:
    path = tmp_path / ".pivot" / "journal"
    j = Journal(path)
    recs = [record("a"), record("b"), record("a", salt="2")]
    for r in recs:
        j.append(r)
    j.close()
    assert read_records(path) == (recs, False)


def test_reading_while_the_journal_is_still_open(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    j = Journal(path)
    j.append(record("a"))
    assert read_records(path) == ([record("a")], False)
    j.append(record("b"))
    assert read_records(path) == ([record("a"), record("b")], False)
    j.close()
    j.close()  # closing twice is harmless


def test_frames_of_many_stages_share_an_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: stages finishing faster than the sync interval do not pay
    an fsync each (a disk flush per stage is what a power cut alone needs)."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    j = Journal(tmp_path / "journal")
    for i in range(200):
        j.append(record(f"s{i}"))
    j.close()
    assert 1 <= len(synced) <= 3  # the interval's, then close's
    assert len(read_records(tmp_path / "journal")[0]) == 200


def test_missing_journal_reads_empty(tmp_path: Path) -> None:
    assert read_records(tmp_path / "journal") == ([], False)


def test_empty_journal_reads_empty(tmp_path: Path) -> None:
    (tmp_path / "journal").write_bytes(b"")
    assert read_records(tmp_path / "journal") == ([], False)


def test_journal_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    first = Journal(path)
    first.append(record("a"))
    first.close()
    second = Journal(path)
    second.append(record("b"))
    second.close()
    assert read_records(path) == ([record("a"), record("b")], False)


def test_torn_tail_at_every_offset_of_the_last_frame(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    recs = [record("a"), record("b"), record("c")]
    j = Journal(path)
    for r in recs:
        j.append(r)
    j.close()
    blob = path.read_bytes()
    last = len(frame(recs[-1]))
    start = len(blob) - last
    assert blob[start:] == frame(recs[-1])
    for cut in range(start + 1, len(blob)):
        path.write_bytes(blob[:cut])
        assert read_records(path) == (recs[:-1], True), cut
    path.write_bytes(blob[:start])
    assert read_records(path) == (recs[:-1], False)


def test_corrupt_frame_ends_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    recs = [record("a"), record("b"), record("c")]
    blob = b"".join(frame(r) for r in recs)
    second = len(frame(recs[0]))
    damaged = bytearray(blob)
    damaged[second + 10] ^= 0xFF  # inside the second frame's payload
    path.write_bytes(bytes(damaged))
    assert read_records(path) == ([recs[0]], True)


def test_garbage_after_good_frames(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    path.write_bytes(frame(record("a")) + b"\xff\xff\xff\xff garbage")
    assert read_records(path) == ([record("a")], True)


def test_frame_with_valid_checksum_but_wrong_structure(tmp_path: Path) -> None:
    from pivotbuild.state.journal import FRAME

    bad = FRAME.dump({"not": "a record"})
    path = tmp_path / "journal"
    path.write_bytes(frame(record("a")) + bad + frame(record("b")))
    assert read_records(path) == ([record("a")], True)


# -- fold ------------------------------------------------------------------------------


def write_journal(path: Path, recs: list[StageRecord]) -> None:
    j = Journal(path)
    for r in recs:
        j.append(r)
    j.close()


def fold_data(jpath: Path, lpath: Path, base: LockData) -> tuple[LockData, bool]:
    """`fold` over `base`, the result decoded."""
    records, damaged = fold(jpath, lpath, lockfile.Records.of(base))
    return records.data(), damaged


def test_fold_merges_over_the_base(tmp_path: Path) -> None:
    jpath, lpath = tmp_path / ".pivot" / "journal", tmp_path / "Pivotfile.lock"
    base = LockData.of({"a": record("a"), "b": record("b")})
    lockfile.write(lpath, base)
    write_journal(jpath, [record("b", salt="new"), record("c"), record("c", salt="newer")])
    data, damaged = fold_data(jpath, lpath, base)
    expected = LockData.of({"a": record("a"), "b": record("b", salt="new"), "c": record("c", salt="newer")})
    assert (data, damaged) == (expected, False)
    assert lockfile.read(lpath) == expected
    assert not jpath.exists()


def test_fold_without_journal_changes_nothing(tmp_path: Path) -> None:
    lpath = tmp_path / "Pivotfile.lock"
    base = LockData.of({"a": record("a")})
    assert fold_data(tmp_path / "journal", lpath, base) == (base, False)
    assert not lpath.exists()


def test_fold_is_idempotent_after_a_crash_following_the_lockfile_write(tmp_path: Path) -> None:
    jpath, lpath = tmp_path / "journal", tmp_path / "Pivotfile.lock"
    base = LockData.of({"a": record("a")})
    recs = [record("a", salt="x"), record("b")]
    write_journal(jpath, recs)
    first, _ = fold_data(jpath, lpath, base)
    written = lpath.read_bytes()
    st = os.stat(lpath)

    # The crash: the lockfile was written but the journal not yet removed.
    write_journal(jpath, recs)
    second, damaged = fold_data(jpath, lpath, lockfile.read(lpath))
    assert (second, damaged) == (first, False)
    assert lpath.read_bytes() == written
    again = os.stat(lpath)
    assert (again.st_mtime_ns, again.st_ino) == (st.st_mtime_ns, st.st_ino)  # not even rewritten
    assert not jpath.exists()

    # Folding the same journal over the *old* base (crash before the lockfile
    # rename) gives the same result too.
    write_journal(jpath, recs)
    third, _ = fold_data(jpath, lpath, base)
    assert third == first
    assert lpath.read_bytes() == written


def test_fold_of_a_torn_journal_keeps_the_good_records(tmp_path: Path) -> None:
    jpath, lpath = tmp_path / "journal", tmp_path / "Pivotfile.lock"
    write_journal(jpath, [record("a"), record("b")])
    with open(jpath, "r+b") as f:
        f.truncate(os.path.getsize(jpath) - 1)
    data, damaged = fold_data(jpath, lpath, LockData())
    assert damaged is True
    assert data == LockData.of({"a": record("a")})
    assert lockfile.read(lpath) == data
    assert not jpath.exists()


def test_journal_module_uses_the_lockfile_encoding(tmp_path: Path) -> None:
    jpath, lpath = tmp_path / "journal", tmp_path / "Pivotfile.lock"
    write_journal(jpath, [record("z"), record("a")])
    data, _ = fold_data(jpath, lpath, LockData())
    assert lpath.read_bytes() == lockfile.encode(LockData.of({"a": record("a"), "z": record("z")}))
    assert [s.name for s in data.stages] == ["a", "z"]


# -- history ---------------------------------------------------------------------------


def build(n: int, stages: dict[str, dict[str, object]]) -> dict[str, object]:
    return {"build": n, "stages": stages}


@pytest.mark.parametrize(
    "entry",
    [
        {"started": "2026-12-03T08:00:00+00:00", "duration_s": 0.012, "targets": [], "result": "ok", "stages": {}},
        {"targets": ["a b", "\u00e9t\u00e9", "\u2603", 'q"\\\n\t\x01'], "ran": 0, "skipped": 10**20, "x": None},
        {"stages": {"b": {"s": 1.5, "why": ["dep a changed", True]}, "a": {}}, "duration_s": 1e-7, "z": -0.0},
        {"duration_s": float("nan"), "stages": {}},  # json's own spelling (NaN): the fallback
    ],
)
@pytest.mark.parametrize("json_imported", [False, True], ids=["json not imported", "json imported"])
def test_a_history_line_is_spelled_as_json_dumps_spells_it(
    tmp_path: Path, entry: dict[str, object], json_imported: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (history writes its lines with json's C encoder, made without importing
    # json, which imports re: the no-op path never needs it)
    if not json_imported:
        monkeypatch.delitem(sys.modules, "json")
    history.append(tmp_path, entry)
    assert ("json" in sys.modules) == json_imported  # (not imported for it)
    assert (tmp_path / "history.jsonl").read_text("utf-8") == json.dumps(entry, sort_keys=True) + "\n"


def test_a_history_entry_json_cannot_spell_is_refused_as_json_refuses_it(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        history.append(tmp_path, {"stages": {"a": object()}})


def test_recent_builds_read_as_the_history_grows_match_a_whole_read(tmp_path: Path) -> None:
    state = tmp_path
    recent = history.Recent(state)

    def same() -> None:
        whole = history.load(state, history.RECENT)
        kept = recent.load()
        assert (kept.entries, kept.skipped) == (whole.entries, whole.skipped)

    same()  # no history yet
    for i in range(25):
        history.append(state, {"ran": i, "stages": {}})
        if i % 7 == 0:
            same()
    with (state / "history.jsonl").open("ab") as f:
        f.write(b"{damaged\n")
        f.write(b'{"ran": 99')  # a line still being written: not read yet
    assert recent.load().skipped == 1
    with (state / "history.jsonl").open("ab") as f:
        f.write(b"}\n")
    assert recent.load().entries[-1] == {"ran": 99}
    same()
    lines = (state / "history.jsonl").read_bytes().splitlines(keepends=True)
    (state / "history.jsonl").write_bytes(b"".join(lines[:3]))  # cut short, in place
    same()
    replaced = state / "new.jsonl"
    replaced.write_bytes(b"".join(lines[5:9]))
    os.replace(replaced, state / "history.jsonl")  # replaced whole
    same()
    (state / "history.jsonl").unlink()
    same()


def test_history_append_and_read(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    assert history.read(state) == []
    entries = [build(i, {"s": {"status": "ran", "duration_s": i}}) for i in range(5)]
    for e in entries:
        history.append(state, e)
    assert history.read(state) == entries
    assert history.read(state, limit=2) == entries[-2:]
    lines = (state / history.HISTORY).read_text().splitlines()
    assert len(lines) == 5
    assert json.loads(lines[0]) == entries[0]


def test_history_durations(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    history.append(
        state, build(1, {"a": {"status": "ran", "duration_s": 1.5}, "b": {"status": "ran", "duration_s": 2}})
    )
    history.append(
        state,
        build(
            2,
            {
                "a": {"status": "ran", "duration_s": 3.0},
                "b": {"status": "up to date", "duration_s": 0.0},
                "c": {"status": "failed", "duration_s": 9.0},
                "d": {"status": "ran", "duration_s": "slow"},
                "e": "not a dict",
            },
        ),
    )
    every = "abcdef"
    assert history.durations_in(history.load(state, history.RECENT), every) == {"a": 3.0, "b": 2.0}
    assert history.durations_in(history.load(state, 1), every) == {"a": 3.0}
    assert history.durations_in(history.load(state, history.RECENT), ["b", "z"]) == {"b": 2.0}
    assert history.durations(state, every) == ({"a": 3.0, "b": 2.0}, 0)  # (the same, read from the file's end)


def test_history_torn_last_line_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    good = [build(1, {"a": {"status": "ran", "duration_s": 1}}), build(2, {})]
    for e in good:
        history.append(state, e)
    with (state / history.HISTORY).open("a") as f:
        f.write('{"build": 3, "stages": {"a": {"sta')
    assert history.read(state) == good
    assert history.durations_in(history.load(state, history.RECENT), ["a"]) == {"a": 1.0}


def test_history_append_after_a_torn_line_is_kept(tmp_path: Path) -> None:
    # A crash mid-append leaves a line without its newline; the next build's
    # entry must not be glued onto it (and so lost).
    state = tmp_path / ".pivot"
    history.append(state, build(1, {}))
    with (state / history.HISTORY).open("a") as f:
        f.write('{"build": 2, "sta')
    history.append(state, build(3, {}))
    assert history.read(state) == [build(1, {}), build(3, {})]


def test_history_skips_non_object_lines(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    state.mkdir()
    (state / history.HISTORY).write_text('[1, 2]\n"x"\n{"build": 1}\n\n')
    assert history.read(state) == [{"build": 1}]


def test_history_lines_that_are_not_utf8_json_entries_are_skipped_and_counted(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    state.mkdir()
    good = [build(1, {}), build(2, {})]
    lines = [
        json.dumps(good[0]).encode(),
        b'{"ran": 1, "st\xffarted": "x"}',
        b'{"ran": "3"}',
        json.dumps(good[1]).encode(),
    ]
    (state / history.HISTORY).write_bytes(b"\n".join(lines) + b"\n")
    past = history.load(state)
    assert past.entries == good
    assert past.skipped == 2
    assert history.load(state, limit=1).skipped == 0  # only the lines read count


def test_history_append_with_repair_drops_every_damaged_line(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    history.append(state, build(1, {}))
    with (state / history.HISTORY).open("ab") as f:
        f.write(b"\xff\xfe\n[1]\n")
    history.append(state, build(2, {}), repair=True)
    assert (state / history.HISTORY).read_bytes().splitlines() == [
        json.dumps(build(n, {}), sort_keys=True).encode() for n in (1, 2)
    ]


def test_a_build_warns_once_about_a_damaged_history_and_mends_it(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / ".pivot").mkdir(parents=True)
    (root / "Pivotfile").write_text("stage a:\n    deps: in.txt\n    outs: a.txt\n    run: cp $< $@\n")
    (root / "in.txt").write_text("x\n")
    env = {**os.environ, "NO_COLOR": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pivotbuild", *args]
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)

    assert run().returncode == 0
    with (root / ".pivot" / history.HISTORY).open("ab") as f:
        f.write(b'{"result": "ok", "ran": \xff}\n')  # a flipped bit: not UTF-8
    shown = run("history")
    assert shown.returncode == 0
    assert "pivotbuild: warning: .pivot/history.jsonl: skipped 1 damaged line" in shown.stderr
    (root / "in.txt").write_text("y\n")
    r = run()
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning") == 1 and ".pivot/history.jsonl: skipped 1 damaged line" in r.stderr
    assert (root / "a.txt").read_text() == "y\n"
    assert b"\xff" not in (root / ".pivot" / history.HISTORY).read_bytes()
    shown = run("history")
    assert shown.returncode == 0 and "warning" not in shown.stderr
    assert len(shown.stdout.splitlines()) == 2


def test_history_trims_when_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / ".pivot"
    monkeypatch.setattr(history, "_KEEP_BYTES", 2000)
    for i in range(100):
        history.append(state, build(i, {}))
    assert (state / history.HISTORY).stat().st_size <= 2000 + 100
    kept = history.read(state)
    assert kept
    assert kept[-1] == build(99, {})
    assert [e["build"] for e in kept] == list(range(100 - len(kept), 100))


# -- ProjectLock -----------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pivotbuild.state.projectlock import ProjectLock
    with ProjectLock(Path(sys.argv[1]), wait=False, on_wait=print):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
    """
)


class Holder:
    """A separate process holding the project lock for `seconds`."""

    def __init__(self, state_dir: Path, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(state_dir), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "locked\n", line

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=HANG_GUARD_S)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_lock_is_created_and_records_the_pid(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    with ProjectLock(state, wait=False, on_wait=print) as lock:
        assert lock.fd is not None
        assert (state / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert lock.fd is None


def test_lock_can_be_taken_again_after_release(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    with ProjectLock(state, wait=False, on_wait=print):
        pass
    with ProjectLock(state, wait=False, on_wait=print):
        pass


def test_second_lock_in_the_same_process_conflicts(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    with ProjectLock(state, wait=False, on_wait=print):
        with pytest.raises(Busy) as info, ProjectLock(state, wait=False, on_wait=print):
            pass
        assert info.value.exit_code == 1
        assert f"pid {os.getpid()}" in str(info.value)


def test_no_wait_raises_busy_naming_the_holder(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    holder = Holder(state, 60)
    try:
        messages: list[str] = []
        with pytest.raises(Busy) as info, ProjectLock(state, wait=False, on_wait=messages.append):
            pass
        assert info.value.exit_code == 1
        assert f"pid {holder.proc.pid}" in str(info.value)
        assert messages == []
    finally:
        holder.finish()


def test_wait_waits_for_the_holder_and_says_so(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    holder = Holder(state, 1.0)
    try:
        messages: list[str] = []
        started = time.monotonic()
        with ProjectLock(state, wait=True, on_wait=messages.append):
            # We got in only once the holder let go.
            assert holder.proc.stdout is not None
            assert holder.proc.stdout.readline() == "released\n"
            assert (state / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert time.monotonic() - started < HANG_GUARD_S
        assert messages
        assert "waiting" in messages[0]
        assert f"pid {holder.proc.pid}" in messages[0]
    finally:
        holder.finish()


def test_wait_in_the_same_process_from_another_thread(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    first = ProjectLock(state, wait=False, on_wait=print).__enter__()
    messages: list[str] = []
    got = threading.Event()

    def second() -> None:
        with ProjectLock(state, wait=True, on_wait=messages.append):
            got.set()

    t = threading.Thread(target=second)
    t.start()
    deadline = time.monotonic() + HANG_GUARD_S
    while not messages and time.monotonic() < deadline:
        time.sleep(0.01)
    assert messages and "waiting" in messages[0]
    assert not got.is_set()
    first.__exit__(None, None, None)
    t.join(HANG_GUARD_S)
    assert got.is_set()


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    state = tmp_path / ".pivot"
    holder = Holder(state, 60)
    try:
        with pytest.raises(Busy), ProjectLock(state, wait=False, on_wait=print):
            pass
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(timeout=HANG_GUARD_S)
        with ProjectLock(state, wait=False, on_wait=print):
            assert (state / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    finally:
        holder.finish()


def test_the_pid_in_a_damaged_lock_file_is_not_shown(tmp_path: Path) -> None:
    path = tmp_path / LOCK_NAME
    path.write_bytes(b"\xff\xfe12\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert ProjectLock._holder(fd) == ""
    finally:
        os.close(fd)
