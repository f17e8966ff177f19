"""The stat cache: unchanged files are never read again; changed files always are."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import msgpack
import pytest
import xxhash

from pivotbuild.state import stamps, statcache
from pivotbuild.state.hashing import hash_bytes, hash_file
from pivotbuild.state.statcache import FORMAT, FRAME, StatCache

# Comfortably longer than the 50 ms racy window of nanosecond timestamps.
LEAVE_RACY_WINDOW_S = 0.1


@pytest.fixture
def cache_path(tmp_path: Path) -> Path:
    return tmp_path / ".pivot" / "statcache"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_first_lookup_reads_and_second_uses_the_cache(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "a.txt", b"hello")
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache = StatCache(cache_path)
    assert cache.file_hash(f) == hash_bytes(b"hello")
    assert cache.files_read == 1
    assert cache.file_hash(f) == hash_bytes(b"hello")
    assert cache.files_read == 1


def test_reloaded_cache_reads_no_unchanged_file(tmp_path: Path, cache_path: Path) -> None:
    files = [write(tmp_path / "data" / f"f{i}.bin", random.Random(i).randbytes(1000 + i)) for i in range(10)]
    time.sleep(LEAVE_RACY_WINDOW_S)
    first = StatCache(cache_path)
    hashes = [first.file_hash(f) for f in files]
    assert first.files_read == len(files)
    first.save()
    assert cache_path.exists()

    second = StatCache(cache_path)
    assert [second.file_hash(f) for f in files] == hashes
    assert second.files_read == 0
    assert hashes == [hash_file(f) for f in files]


def test_reloaded_cache_reads_no_file_of_an_unchanged_directory(tmp_path: Path, cache_path: Path) -> None:
    tree = tmp_path / "tree"
    for name in ("a", "b/c", "b/d/e"):
        write(tree / name, name.encode())
    time.sleep(LEAVE_RACY_WINDOW_S)
    first = StatCache(cache_path)
    digest = first.dir_hash(tree)
    assert first.files_read == 3
    first.save()
    second = StatCache(cache_path)
    assert second.dir_hash(tree) == digest
    assert second.files_read == 0


@pytest.mark.usefixtures("reads_cannot_wait")
def test_file_written_within_racy_window_is_reread_at_save_then_trusted(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "fresh.txt", b"just written")
    first = StatCache(cache_path)
    digest = first.file_hash(f)  # recorded within the racy window: kept, not trusted
    assert not first.entries[os.fspath(f)].trusted
    assert first.files_read == 1
    first.save()  # waits out the window and reads it again, so the next build need not
    assert first.files_read == 2

    second = StatCache(cache_path)
    assert second.file_hash(f) == digest
    assert second.files_read == 0  # trusted: a no-op right after a build reads nothing


def test_a_change_within_the_racy_window_is_caught_when_saving(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "fresh.txt", b"AAAA")
    cache = StatCache(cache_path)
    assert cache.file_hash(f) == hash_bytes(b"AAAA")
    f.write_bytes(b"BBBB")  # same size, right after hashing
    cache.save()
    assert StatCache(cache_path).file_hash(f) == hash_bytes(b"BBBB")


def test_same_size_and_mtime_change_is_detected_through_ctime(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "a.txt", b"version-1")
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache = StatCache(cache_path)
    old = cache.file_hash(f)
    cache.save()
    st = os.stat(f)
    time.sleep(LEAVE_RACY_WINDOW_S)

    f.write_bytes(b"version-2")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime forced back
    now = os.stat(f)
    assert (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert now.st_ctime_ns != st.st_ctime_ns

    assert cache.file_hash(f) == hash_bytes(b"version-2") != old
    reloaded = StatCache(cache_path)
    assert reloaded.file_hash(f) == hash_bytes(b"version-2")
    assert reloaded.files_read == 1


def test_replaced_file_is_detected_through_inode(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "a.txt", b"version-1")
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache = StatCache(cache_path)
    cache.file_hash(f)
    st = os.stat(f)
    # Replace by rename (a new inode), then force size and mtime to match.
    tmp = write(tmp_path / "a.tmp", b"version-2")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, f)
    assert cache.file_hash(f) == hash_bytes(b"version-2")


def test_modification_in_the_same_tick_right_after_hashing_is_detected(tmp_path: Path, cache_path: Path) -> None:
    # The racy case: the file changes again right after it was hashed, within
    # the timestamp granularity, and its mtime is put back.
    f = write(tmp_path / "racy.txt", b"AAAA")
    cache = StatCache(cache_path)
    assert cache.file_hash(f) == hash_bytes(b"AAAA")
    st = os.stat(f)
    with open(f, "r+b") as fh:
        fh.write(b"BBBB")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_size == st.st_size
    assert cache.file_hash(f) == hash_bytes(b"BBBB")


def test_racy_modification_is_detected_after_save_and_reload(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "racy.txt", b"AAAA")
    cache = StatCache(cache_path)
    cache.file_hash(f)
    cache.save()
    st = os.stat(f)
    with open(f, "r+b") as fh:
        fh.write(b"BBBB")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(LEAVE_RACY_WINDOW_S)
    reloaded = StatCache(cache_path)
    assert reloaded.file_hash(f) == hash_bytes(b"BBBB")


@pytest.mark.usefixtures("reads_cannot_wait")
def test_racy_entry_is_believed_within_the_run_and_settled_before_the_next(tmp_path: Path, cache_path: Path) -> None:
    # Within one run (one StatCache), a file hashed moments ago is not read
    # again: a downstream stage deciding on an output just hashed costs no read.
    # Its entry stays untrusted, so save() rereads it once the racy window has
    # passed, and a change made in the same clock tick reaches the next build.
    f = write(tmp_path / "racy.txt", b"AAAA")
    cache = StatCache(cache_path)
    cache.file_hash(f)
    entry = cache.entries[os.fspath(f)]
    assert not entry.trusted
    assert cache.file_hash(f) == hash_bytes(b"AAAA")
    assert cache.files_read == 1
    cache.save()
    assert cache.files_read == 2  # settled: read again outside the window
    assert cache.entries[os.fspath(f)].trusted
    reloaded = StatCache(cache_path)
    assert reloaded.entries[os.fspath(f)].trusted


@pytest.mark.usefixtures("reads_cannot_wait")
def test_a_racy_entry_from_an_earlier_run_is_rehashed(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "racy.txt", b"AAAA")
    first = StatCache(cache_path)
    first.file_hash(f)
    assert not first.entries[os.fspath(f)].trusted  # recorded inside the window
    # Written without settling, as a build killed before its end leaves it.
    rows = [(k, e.size, e.mtime_ns, e.ino, e.ctime_ns, e.hash, e.trusted) for k, e in first.entries.items()]
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(msgpack.packb([1, rows]))
    second = StatCache(cache_path)
    assert second.file_hash(f) == hash_bytes(b"AAAA")
    assert second.files_read == 1  # not believed: it was racy and is not this run's


def test_entry_is_trusted_outside_the_window(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "old.txt", b"old")
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache = StatCache(cache_path)
    cache.file_hash(f)
    assert cache.entries[os.fspath(f)].trusted


def test_coarse_timestamps_use_a_wider_window(tmp_path: Path, cache_path: Path) -> None:
    # A whole-second mtime suggests a coarse clock: a file stamped in the
    # current second must not be trusted.
    f = write(tmp_path / "coarse.txt", b"x")
    whole = (time.time_ns() // 1_000_000_000) * 1_000_000_000
    os.utime(f, ns=(whole, whole))
    cache = StatCache(cache_path)
    cache.file_hash(f)
    assert not cache.entries[os.fspath(f)].trusted


MOUNTINFO = [
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard",
    "25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683568k",
    "60 27 0:52 / /mnt/data rw,relatime - nfs4 server:/export rw,vers=4.2",
    "22 27 0:21 / /proc rw,relatime - proc proc rw",
    "garbage without the separator",
]


def test_local_file_systems_get_the_narrow_window_and_network_ones_do_not() -> None:
    windows = stamps.local_devices(MOUNTINFO, 12_000_000)
    assert windows == {os.makedev(254, 0): 12_000_000, os.makedev(0, 23): 12_000_000}


def test_a_racy_stamp_is_trusted_once_its_file_systems_window_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path / "f.txt", b"x")
    st = os.stat(f)
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    monkeypatch.setattr(stamps, "_windows", [{st.st_dev: 10_000_000}])  # a local file system
    assert stamps.is_racy(st, changed + 9_000_000)
    assert not stamps.is_racy(st, changed + 10_000_000)
    monkeypatch.setattr(stamps, "_windows", [{}])  # not known to be local: 50 ms
    assert stamps.is_racy(st, changed + 10_000_000)
    assert stamps.is_racy(st, changed + 49_000_000)
    assert not stamps.is_racy(st, changed + 50_000_000)


def test_multigrain_file_systems_are_known_by_type_from_linux_6_13() -> None:
    found = stamps.local_devices(MOUNTINFO, 0, stamps._MULTIGRAIN)
    assert found == {os.makedev(254, 0): 0, os.makedev(0, 23): 0}  # ext4 and tmpfs, not nfs4 or proc
    assert stamps.kernel_at_least("6.13.0-arch1-1", (6, 13))
    assert stamps.kernel_at_least("6.18.44-fc-v1272", (6, 13))
    assert stamps.kernel_at_least("7.0", (6, 13))
    assert not stamps.kernel_at_least("6.12.9", (6, 13))
    assert not stamps.kernel_at_least("5.15.0-91-generic", (6, 13))
    assert not stamps.kernel_at_least("garbage", (6, 13))


def test_where_stamps_say_changes_show_a_change_right_after_a_stat_shows(tmp_path: Path) -> None:
    """What `changes_show` claims of this machine's file system is what its
    kernel does: a write made at once after a `stat` (in the same tick of
    the coarse clock, nearly always) changes the stamp every time."""
    f = write(tmp_path / "f.txt", b"0")
    if not stamps.changes_show(os.stat(f)):
        return  # (claimed on this project's machines: Linux 6.18, ext4 and tmpfs)
    fd = os.open(f, os.O_WRONLY)
    try:
        for i in range(300):
            before = stamps.stamp(os.fstat(fd))
            os.pwrite(fd, b"1", 0)  # the same size, at once
            after = stamps.stamp(os.fstat(fd))
            assert after != before, i
            assert after[1] != before[1], i  # the mtime itself
    finally:
        os.close(fd)


def test_where_changes_show_a_fresh_stamp_is_trusted_at_once_only_if_the_read_waited_for_writes(
    tmp_path: Path, cache_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `write` under way when the stamp was taken stamped the file at its
    start, and a plain read may overtake it: nothing would stamp the file
    again.  So within its racy window a stamp is trusted at once only where
    the read began by waiting for such a write (`stamps.read_proves`: ext4
    and tmpfs, whose `lseek(SEEK_DATA)` takes the lock `write` holds), or
    where the stamp is vouched for otherwise (`proven`: hardlink mode's, taken
    before a link that waits for such a write)."""
    f = write(tmp_path / "fresh.txt", b"just written")
    dev = os.stat(f).st_dev
    monkeypatch.setattr(stamps, "_multigrain", [frozenset({dev})])
    monkeypatch.setattr(stamps, "_proving", [frozenset()])  # as on xfs: its lseek takes no lock
    cache = StatCache(cache_path)
    cache.file_hash(f)
    assert not cache.entries[os.fspath(f)].trusted
    g = write(tmp_path / "linked.txt", b"hashed through its link")
    read_ns = time.time_ns()
    cache.note(os.fspath(g), os.stat(g), hash_file(g), read_ns)
    assert not cache.entries[os.fspath(g)].trusted
    cache.note(os.fspath(g), os.stat(g), hash_file(g), read_ns, proven=True)
    assert cache.entries[os.fspath(g)].trusted
    monkeypatch.setattr(stamps, "_proving", [frozenset({dev})])  # as on ext4 or tmpfs
    h = write(tmp_path / "fresh too.txt", b"just written too")
    cache.file_hash(h)
    assert cache.entries[os.fspath(h)].trusted
    empty = write(tmp_path / "empty.txt", b"")  # (no data to seek to: the wait is made all the same)
    assert stamps.hash_proving(os.fspath(empty), os.stat(empty)) == (hash_bytes(b""), True)


def test_a_proving_read_of_a_file_that_begins_with_a_hole_hashes_it_from_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read's `lseek(SEEK_DATA)` lands past a leading hole: the hash is
    still of the whole file, the hole's zeros first."""
    f = tmp_path / "sparse.bin"
    with open(f, "wb") as out:
        out.seek(1 << 20)
        out.write(b"data after a hole")
    monkeypatch.setattr(stamps, "_proving", [frozenset({os.stat(f).st_dev})])  # (as on ext4 or tmpfs)
    assert stamps.hash_proving(os.fspath(f), os.stat(f)) == (hash_bytes(f.read_bytes()), True)


def test_only_ext4_and_tmpfs_reads_wait_for_a_write_under_way() -> None:
    mounts = [*MOUNTINFO, "40 27 259:1 / /srv rw,relatime - xfs /dev/nvme0n1p1 rw"]
    assert os.makedev(259, 1) in stamps.local_devices(mounts, 0, stamps._MULTIGRAIN)
    waits = stamps.local_devices(mounts, 0, stamps._MULTIGRAIN & stamps._SEEK_WAITS)
    assert waits == {os.makedev(254, 0): 0, os.makedev(0, 23): 0}  # ext4 and tmpfs; not xfs (nor nfs4, proc)


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_a_stamp_taken_while_a_write_is_under_way_is_trusted_only_with_what_the_write_leaves(
    tmp_path: Path, cache_path: Path, where: str
) -> None:
    """One `pwrite` overwrites a SIZE file in place: it stamps the file as it
    begins and leaves its size as it was, so a stamp taken while it is under
    way is the file's final one.  The stat cache hashes the file then: where
    its read can wait for the write (`stamps.read_proves`: ext4 and tmpfs
    from Linux 6.13, this project's machines' /tmp and /dev/shm), it trusts
    the entry at once, with the hash of what the write leaves, not of the
    part that had landed (without the wait, each of 11 runs here failed, on
    one file system or both)."""
    import threading

    size = 128 << 20
    if where == "shm":
        if shutil.disk_usage("/dev/shm").free < 4 * size:
            pytest.skip("/dev/shm has no room for the file (a container's default is 64 MiB)")
        base = Path(tempfile.mkdtemp(dir="/dev/shm"))
    else:
        base = tmp_path
    f = base / "big.bin"
    try:
        f.write_bytes(b"a" * size)
        for _ in range(50):  # until the stat catches the write under way (nearly always the first time)
            fill = os.urandom(1) * size
            before = stamps.stamp(os.stat(f))
            fd = os.open(f, os.O_WRONLY)
            writer = threading.Thread(target=os.pwrite, args=(fd, fill, 0))
            writer.start()
            deadline = time.monotonic() + 10
            while stamps.stamp(os.stat(f)) == before and time.monotonic() < deadline:
                pass
            st = os.stat(f)
            under_way = writer.is_alive()
            cache = StatCache(cache_path)
            cache.file_hash(f, st)
            writer.join()
            os.close(fd)
            if under_way:
                break
        assert under_way, "the write was never caught under way"
        assert stamps.stamp(os.stat(f)) == stamps.stamp(st)  # the entry would be believed from now on
        entry = cache.entries[os.fspath(f)]
        if stamps.read_proves(st):
            assert entry.trusted
            assert entry.hash == hash_bytes(fill)
        else:  # (a plain read within the window: trusted by the next build's read only)
            assert not entry.trusted or entry.hash == hash_bytes(fill)
    finally:
        f.unlink(missing_ok=True)
        if where == "shm":
            shutil.rmtree(base)


def test_a_process_that_builds_again_reads_the_mount_table_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount table is read once per process, and again for each build of a
    process that lives on (here through the Python API): by then a device
    number may be another file system's."""
    import pivotbuild

    root = tmp_path / "proj"
    (root / ".pivot").mkdir(parents=True)
    (root / "Pivotfile").write_text("stage a:\n    outs: a.txt\n    run: echo a > a.txt\n")
    reads: list[int] = []
    real = stamps._read_mounts
    monkeypatch.setattr(stamps, "_read_mounts", lambda: (reads.append(1), real())[1])
    f = write(tmp_path / "f.txt", b"x")
    stamps.forget_mounts()
    stamps.changes_show(os.stat(f))
    stamps.window_ns(os.stat(f))
    assert len(reads) == 1
    api = pivotbuild.Project.load(root)
    for n in (1, 2):
        assert api.build().ok
        (root / "a.txt").unlink()  # (so that each build has a file just written to judge)
        assert len(reads) == 1 + n, reads


def test_settling_waits_only_for_the_local_window(
    tmp_path: Path, cache_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path / "new.txt", b"new")
    monkeypatch.setattr(stamps, "_windows", [{os.stat(f).st_dev: 5_000_000}])
    slept: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (slept.append(s), real_sleep(s)))
    cache = StatCache(cache_path)
    cache.file_hash(f)
    cache.save()
    assert StatCache(cache_path).entries[os.fspath(f)].trusted
    assert all(s <= 0.005 for s in slept)


def _garbage_files() -> list[bytes]:
    good_row = ["/x", 1, 2, 3, 4, "ab" * 16, True]
    blobs = [
        b"",
        b"\x00",
        b"not msgpack at all, just text\n",
        msgpack.packb([]),
        msgpack.packb({"a": 1}),
        msgpack.packb(5),
        msgpack.packb([FORMAT, 5]),
        msgpack.packb([FORMAT, [["short"]]]),
        msgpack.packb([FORMAT, [good_row, ["bad row"]]]),
        msgpack.packb([FORMAT, [good_row, 7]]),
        msgpack.packb([FORMAT + 1, [good_row]]),
        msgpack.packb([FORMAT, [good_row]])[:-3],
        msgpack.packb([FORMAT, [good_row]]) + b"trailing",
    ]
    rng = random.Random(1234)
    blobs.extend(rng.randbytes(rng.randint(1, 300)) for _ in range(50))
    return blobs


@pytest.mark.parametrize("blob", _garbage_files())
def test_damaged_statcache_is_treated_as_empty(tmp_path: Path, cache_path: Path, blob: bytes) -> None:
    write(cache_path, blob)
    cache = StatCache(cache_path)  # no exception
    assert cache.entries == {}
    f = write(tmp_path / "a.txt", b"data")
    assert cache.file_hash(f) == hash_bytes(b"data")
    assert cache.files_read == 1
    cache.save()  # and the damaged file is replaced by a good one
    assert set(StatCache(cache_path).entries) == {os.fspath(f)}


@pytest.mark.parametrize(
    "rows",
    [
        [dict.fromkeys("abcdefg", 0)],  # a map of seven keys
        ["abcdefg"],  # a string of seven characters
        [["/p", 1, 2, 3, 4, "h"]],  # six fields
        [["/p", 1, 2, 3, 4, "h", True, "more"]],  # eight
        {"/p": 1},  # not a list of rows
    ],
    ids=["map", "string", "six", "eight", "not-rows"],
)
def test_a_checksummed_statcache_of_another_shape_is_damaged_not_an_error(cache_path: Path, rows: object) -> None:
    write(cache_path, FRAME.dump(rows))
    cache = StatCache(cache_path)  # no exception
    assert cache.entries == {} and cache.damaged


def test_missing_statcache_is_empty(cache_path: Path) -> None:
    assert StatCache(cache_path).entries == {}


def test_save_writes_only_when_dirty(tmp_path: Path, cache_path: Path) -> None:
    cache = StatCache(cache_path)
    cache.save()
    assert not cache_path.exists()  # nothing to record, nothing written

    f = write(tmp_path / "a.txt", b"data")
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache.file_hash(f)
    cache.save()
    st = os.stat(cache_path)
    cache.save()  # clean again: not rewritten
    again = os.stat(cache_path)
    assert (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)

    reloaded = StatCache(cache_path)
    reloaded.file_hash(f)  # a cache hit changes nothing
    reloaded.save()
    again = os.stat(cache_path)
    assert (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert reloaded.files_read == 0


def test_forget_marks_dirty_and_drops_the_entry(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "a.txt", b"data")
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache = StatCache(cache_path)
    cache.file_hash(f)
    cache.save()
    reloaded = StatCache(cache_path)
    reloaded.forget(tmp_path / "not-there")
    reloaded.save()
    reloaded.forget(f)
    reloaded.save()
    assert StatCache(cache_path).entries == {}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "a.txt", b"data")
    cache = StatCache(cache_path)
    cache.file_hash(f)
    cache.save()
    assert sorted(p.name for p in cache_path.parent.iterdir()) == ["statcache"]


def test_deleted_and_recreated_file_is_rehashed(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "a.txt", b"one")
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache = StatCache(cache_path)
    cache.file_hash(f)
    f.unlink()
    write(f, b"two")
    assert cache.file_hash(f) == hash_bytes(b"two")


@pytest.mark.usefixtures("reads_cannot_wait")
def test_confirm_trusts_only_an_entry_that_still_matches(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "out.bin", b"fresh output\n")  # just written: its entry is racy
    cache = StatCache(cache_path)
    digest = cache.file_hash(f)
    assert not cache.entries[str(f)].trusted
    st = os.stat(f)
    cache.confirm(str(f), st, "0" * 32)  # another hash: no
    assert not cache.entries[str(f)].trusted
    moved = os.stat_result((*st[:7], st.st_atime, st.st_mtime + 1, st.st_ctime))
    cache.confirm(str(f), moved, digest)  # another stamp: no
    assert not cache.entries[str(f)].trusted
    cache.confirm(str(f), st, digest)
    assert cache.entries[str(f)].trusted
    cache.save()  # nothing racy is left: saving reads nothing again
    assert cache.files_read == 1
    assert StatCache(cache_path).entries[str(f)].trusted


def test_a_damaged_statcache_says_why_and_is_replaced_whole(tmp_path: Path, cache_path: Path) -> None:
    """Every flipped bit and every cut is caught, even one that leaves valid
    msgpack (a wrong hash for an unchanged stamp would be believed)."""
    f = write(tmp_path / "a.txt", b"data")
    first = StatCache(cache_path)
    first.file_hash(f)
    first.save()
    good = cache_path.read_bytes()
    rng = random.Random(7)
    for at in [*rng.sample(range(len(good)), 20), len(good) - 1]:
        for damaged in (good[:at] + bytes([good[at] ^ 0x04]) + good[at + 1 :], good[:at]):
            write(cache_path, damaged)
            cache = StatCache(cache_path)
            assert cache.damaged and cache.entries == {}, at
            cache.save()  # nothing changed, but the damaged file is replaced
            assert StatCache(cache_path).damaged == ""


def test_a_statcache_from_before_the_checksum_is_dropped_quietly(cache_path: Path) -> None:
    write(cache_path, msgpack.packb([1, [["/x", 1, 2, 3, 4, "ab" * 16, True]]]))
    cache = StatCache(cache_path)
    assert cache.entries == {} and cache.damaged == ""


# -- a save appends what changed ---------------------------------------------------


def _frames(path: Path) -> int:
    return sum(1 for _ in FRAME.frames(path.read_bytes()))


def test_a_save_appends_only_what_changed_and_a_reload_sees_it_all(tmp_path: Path, cache_path: Path) -> None:
    files = [write(tmp_path / f"f{i}.txt", f"{i}\n".encode()) for i in range(50)]
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache = StatCache(cache_path)
    for f in files:
        cache.file_hash(f)
    cache.save()
    whole = cache_path.stat()
    assert _frames(cache_path) == 1

    again = StatCache(cache_path)
    write(files[3], b"changed\n")
    time.sleep(LEAVE_RACY_WINDOW_S)
    assert again.file_hash(files[3]) == hash_bytes(b"changed\n")
    again.forget(files[7])
    again.save()
    grown = cache_path.stat()
    assert grown.st_ino == whole.st_ino  # appended, not replaced
    assert 0 < grown.st_size - whole.st_size < whole.st_size // 4  # two paths' worth, not fifty
    assert _frames(cache_path) == 2

    reloaded = StatCache(cache_path)
    assert reloaded.entries == again.entries
    assert str(files[7]) not in reloaded.entries
    assert [reloaded.file_hash(f) for f in files if f != files[7]] == [hash_file(f) for f in files if f != files[7]]
    assert reloaded.files_read == 0


def test_appended_frames_are_folded_into_one_once_they_outgrow_the_cache(tmp_path: Path, cache_path: Path) -> None:
    f = write(tmp_path / "busy.txt", b"0")
    cache = StatCache(cache_path)
    cache.file_hash(f)
    cache.save()
    frames = [_frames(cache_path)]
    for _ in range(1, 300):  # one entry changed per save: appended until 256 rows, then one frame again
        cache.forget(f)
        cache.file_hash(f)
        cache.save()
        frames.append(_frames(cache_path))
    assert max(frames) == 257 and frames[-1] < 50
    assert frames.count(1) == 2  # the first save, and the fold
    assert StatCache(cache_path).entries == cache.entries


def test_any_sequence_of_saves_reloads_as_the_cache_that_saved(tmp_path: Path, cache_path: Path) -> None:
    rng = random.Random(13)
    files = [tmp_path / f"f{i}.txt" for i in range(12)]
    for f in files:
        write(f, b"start")
    cache = StatCache(cache_path)
    for step in range(120):
        f = rng.choice(files)
        what = rng.random()
        if what < 0.5:
            write(f, f"{step}".encode())
            cache.file_hash(f)
        elif what < 0.7:
            cache.forget(f)
        else:
            cache.file_hash(f)
        if rng.random() < 0.3:
            cache.save()
            assert StatCache(cache_path).entries == cache.entries, step


def _two_frames(tmp_path: Path, cache_path: Path) -> tuple[str, int]:
    a, b = write(tmp_path / "a.txt", b"a"), write(tmp_path / "b.txt", b"b")
    cache = StatCache(cache_path)
    cache.file_hash(a)
    cache.save()
    first = cache_path.stat().st_size
    cache.file_hash(b)
    cache.save()
    return str(a), first


def test_a_damaged_appended_frame_keeps_the_frames_before_it(tmp_path: Path, cache_path: Path) -> None:
    a, base = _two_frames(tmp_path, cache_path)
    blob = bytearray(cache_path.read_bytes())
    blob[base + 20] ^= 0x10  # in the appended frame
    cache_path.write_bytes(bytes(blob))

    damaged = StatCache(cache_path)
    assert "checksum" in damaged.damaged
    assert set(damaged.entries) == {a}  # b's entry is lost: b is hashed again
    damaged.save()  # nothing changed, but the damaged file is written whole
    assert _frames(cache_path) == 1
    assert StatCache(cache_path).damaged == ""


def test_a_cache_removed_during_the_build_is_written_whole(tmp_path: Path, cache_path: Path) -> None:
    a = write(tmp_path / "a.txt", b"a")
    cache = StatCache(cache_path)
    cache.file_hash(a)
    cache.save()
    cache_path.unlink()
    b = write(tmp_path / "b.txt", b"b")
    cache.file_hash(b)
    cache.save()
    assert set(StatCache(cache_path).entries) == {str(a), str(b)}


def test_an_append_that_fails_leaves_the_file_as_it_was(
    tmp_path: Path, cache_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write(tmp_path / "a.txt", b"a")
    cache = StatCache(cache_path)
    cache.file_hash(a)
    cache.save()
    before = cache_path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 1:
            real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    cache.file_hash(write(tmp_path / "b.txt", b"b"))
    with pytest.raises(OSError):
        cache.save()
    monkeypatch.undo()
    assert cache_path.read_bytes() == before
    assert StatCache(cache_path).damaged == ""


def test_a_statcache_of_the_layout_before_the_framing_is_dropped_quietly(cache_path: Path) -> None:
    data = msgpack.packb([2, [["/x", 1, 2, 3, 4, "ab" * 16, True]]])
    write(cache_path, statcache.MAGIC + data + xxhash.xxh3_64_digest(data))
    cache = StatCache(cache_path)
    assert cache.entries == {} and cache.damaged == ""


def test_a_reader_without_the_lock_takes_a_last_frame_cut_short_for_an_append_in_progress(
    tmp_path: Path, cache_path: Path
) -> None:
    a, first = _two_frames(tmp_path, cache_path)
    whole = cache_path.read_bytes()
    for cut in (first + 3, first + 20, len(whole) - 1):  # in the header, in the payload, in the checksum
        write(cache_path, whole[:cut])
        reading = StatCache(cache_path, torn_is_partial=True)
        assert reading.damaged == "" and set(reading.entries) == {a}, cut
        assert StatCache(cache_path).damaged, cut  # (a build, which holds the lock, reports it)
    flipped = bytearray(whole)
    flipped[-3] ^= 1  # a whole frame that fails its checksum is damage to any reader
    write(cache_path, bytes(flipped))
    assert "checksum" in StatCache(cache_path, torn_is_partial=True).damaged


def test_a_hash_read_within_the_racy_window_is_not_trusted_however_late_it_is_noted(
    tmp_path: Path, cache_path: Path
) -> None:
    """A stage's output hashed right after it was written, and noted once its
    window had passed (a busy build loop records a stage's end late): the read
    proves nothing of a change in the same clock tick, so the entry waits for
    a read that began after the window."""
    f = write(tmp_path / "out.bin", b"just written\n")
    st = os.stat(f)
    read_ns = time.time_ns()  # the read began now, within the window
    digest = hash_file(f)
    time.sleep(LEAVE_RACY_WINDOW_S)
    cache = StatCache(cache_path)
    cache.note(str(f), st, digest, read_ns)
    assert not cache.entries[str(f)].trusted
    cache.note(str(f), st, digest, time.time_ns())  # a read that began past the window proves it
    assert cache.entries[str(f)].trusted
