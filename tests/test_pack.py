"""Packs (cache/pack.py): the cache's small objects, many to a file.

Whatever happens to a pack (its writer killed before indexing it, a torn
record, a damaged index, a full disk mid-record, another process merging it
away), every object that was written whole stays readable, and nothing a
reader gets is taken on trust: the cache verifies it (test_damaged_cache.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Project
from helpers import cache_digests, finished

from pivotbuild.cache import gc, pack
from pivotbuild.cache.pack import MAX_PACKS, PACK_MAX, Packs
from pivotbuild.cache.store import Cache, Mode
from pivotbuild.state.hashing import hash_bytes


def blobs(n: int, tag: str = "") -> dict[str, bytes]:
    data = [f"object {tag}{i}\n".encode() * (i % 7 + 1) for i in range(n)]
    return {hash_bytes(d): d for d in data}


def write_pack(directory: Path, objs: dict[str, bytes]) -> None:
    """What a build storing `objs` leaves: a pack, indexed."""
    p = Packs(directory)
    for digest, data in objs.items():
        p.add(digest, data)
    p.close()


def files(directory: Path, suffix: str) -> list[Path]:
    return sorted(directory.glob(f"*{suffix}"))


def test_objects_are_readable_while_written_and_after_from_the_index(tmp_path: Path) -> None:
    objs = blobs(50)
    writer = Packs(tmp_path)
    for digest, data in objs.items():
        writer.add(digest, data)
        assert writer.read(digest) == data  # at once, before any index
    assert files(tmp_path, ".idx") == []
    writer.close()
    assert len(files(tmp_path, ".pack")) == 1 and len(files(tmp_path, ".idx")) == 1
    assert os.stat(files(tmp_path, ".pack")[0]).st_mode & 0o222 == 0  # read-only, as objects are
    reader = Packs(tmp_path)
    assert {d: reader.read(d) for d in objs} == objs
    assert reader.sizes() == {d: len(b) for d, b in objs.items()}
    assert reader.read("0" * 32) is None and "0" * 32 not in reader


def test_an_object_already_packed_is_not_written_again(tmp_path: Path) -> None:
    objs = blobs(3)
    for _ in range(2):
        write_pack(tmp_path, objs)
    assert len(files(tmp_path, ".pack")) == 1  # the second build found them all: no pack at all


def test_the_pack_of_a_killed_writer_is_read_and_then_indexed(tmp_path: Path) -> None:
    objs = blobs(20)
    script = (
        "import os, sys, pathlib; from pivotbuild.cache.pack import Packs\n"
        f"p = Packs(pathlib.Path(sys.argv[1])); objs = {objs!r}\n"
        "for d, b in objs.items(): p.add(d, b)\n"
        "os._exit(0)  # killed: no index\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    assert files(tmp_path, ".idx") == []
    reader = Packs(tmp_path)
    assert {d: reader.read(d) for d in objs} == objs
    assert len(files(tmp_path, ".idx")) == 1  # its writer is gone: indexed by the reader
    assert {d: Packs(tmp_path).read(d) for d in objs} == objs


def test_a_torn_last_record_loses_only_that_object(tmp_path: Path) -> None:
    objs = blobs(10)
    write_pack(tmp_path, objs)
    for idx in files(tmp_path, ".idx"):
        idx.unlink()
    path = files(tmp_path, ".pack")[0]
    path.chmod(0o644)
    os.truncate(path, path.stat().st_size - 3)  # the last record cut short
    reader = Packs(tmp_path)
    last = list(objs)[-1]
    assert last not in reader
    assert {d: reader.read(d) for d in objs if d != last} == {d: b for d, b in objs.items() if d != last}


@pytest.mark.parametrize("damage", ["garbage", "cut short", "a bit flipped"])
def test_a_damaged_index_is_ignored_and_the_pack_read_instead(tmp_path: Path, damage: str) -> None:
    objs = blobs(10)
    write_pack(tmp_path, objs)
    idx = files(tmp_path, ".idx")[0]
    blob = bytearray(idx.read_bytes())
    if damage == "garbage":
        blob = bytearray(b"not an index at all")
    elif damage == "cut short":
        blob = blob[: len(blob) // 2]
    else:
        blob[20] ^= 0x01  # inside an entry: an offset or digest that would mislead
    idx.write_bytes(bytes(blob))
    reader = Packs(tmp_path)
    assert {d: reader.read(d) for d in objs} == objs


def test_a_full_disk_mid_record_leaves_the_pack_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, third = (blobs(1, tag) for tag in "abc")
    p = Packs(tmp_path)
    p.add(*next(iter(first.items())))
    real = pack.write_all

    def half_then_full(fd: int, data: bytes) -> None:
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pack, "write_all", half_then_full)
    with pytest.raises(OSError):
        p.add(*next(iter(second.items())))
    monkeypatch.setattr(pack, "write_all", real)
    p.add(*next(iter(third.items())))
    p.close()
    for idx in files(tmp_path, ".idx"):
        idx.unlink()  # read the pack itself: its records must still run end to end
    reader = Packs(tmp_path)
    for objs in (first, third):
        (digest, data), *_ = objs.items()
        assert reader.read(digest) == data
    assert next(iter(second)) not in reader


def test_too_many_packs_are_merged_into_one_beside_the_largest(tmp_path: Path) -> None:
    big = blobs(200, "big")
    write_pack(tmp_path, big)
    small: dict[str, bytes] = {}
    for build in range(MAX_PACKS):  # the last of them makes one more than MAX_PACKS
        objs = blobs(2, f"build{build}-")
        small |= objs
        write_pack(tmp_path, objs)
    assert len(files(tmp_path, ".pack")) == 2  # the clean build's pack, and every later one merged
    assert len(files(tmp_path, ".idx")) == 2
    reader = Packs(tmp_path)
    assert {d: reader.read(d) for d in big | small} == big | small


def test_dropping_objects_keeps_the_others(tmp_path: Path) -> None:
    objs = blobs(30)
    write_pack(tmp_path, objs)
    gone = list(objs)[::3]
    freed = Packs(tmp_path).drop(gone)
    assert freed == sum(len(objs[d]) for d in gone)
    reader = Packs(tmp_path)
    assert not any(d in reader for d in gone)
    assert {d: reader.read(d) for d in objs if d not in gone} == {d: b for d, b in objs.items() if d not in gone}
    Packs(tmp_path).drop(list(objs))
    assert files(tmp_path, ".pack") == [] and files(tmp_path, ".idx") == []  # nothing left: no pack


def test_a_reader_finds_objects_after_another_process_merged_their_pack(tmp_path: Path) -> None:
    objs = blobs(10)
    write_pack(tmp_path, objs)
    reader = Packs(tmp_path)
    assert next(iter(objs)) in reader  # it has read the directory
    other = Packs(tmp_path)
    other.rewrite([f.name for f in files(tmp_path, ".pack")], drop=frozenset())  # a new pack, the old one gone
    assert {d: reader.read(d) for d in objs} == objs


@pytest.mark.parametrize("whole", [True, False])
def test_a_merge_of_packs_larger_than_what_it_writes_at_once_keeps_every_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    """A rewrite reads a small pack whole and a large one an object at a time,
    and writes the new one a MiB at a time: across those bounds (here about 2 MiB
    of objects in three packs, a duplicate and a dropped one among them)
    every object stays, at the offset its index gives."""
    if not whole:
        monkeypatch.setattr(pack, "_READ_WHOLE", 0)  # (every pack read an object at a time)
    big = {}
    for tag in "abc":
        part = {hash_bytes(d): d for d in (f"{tag}{i:02}".encode() * (PACK_MAX // 4) for i in range(16))}  # 48 KiB each
        write_pack(tmp_path, part)
        big.update(part)
    dup = next(iter(big))
    write_pack(tmp_path, {dup: big[dup]})  # (a second copy, in a fourth pack)
    gone = list(big)[-1]
    Packs(tmp_path).rewrite([f.name for f in files(tmp_path, ".pack")], drop=frozenset({gone}))
    assert len(files(tmp_path, ".pack")) == 1
    reader = Packs(tmp_path)
    assert {d: reader.read(d) for d in big if d != gone} == {d: b for d, b in big.items() if d != gone}
    assert gone not in reader
    assert os.path.getsize(files(tmp_path, ".pack")[0]) == len(pack._PACK_MAGIC) + sum(
        pack._RECORD.size + len(b) for d, b in big.items() if d != gone
    )  # (each object once)


def test_threads_may_store_at_once(tmp_path: Path) -> None:
    objs = blobs(400)
    items = list(objs.items())
    p = Packs(tmp_path)
    halves = (items[::2], items[1::2])
    threads = [threading.Thread(target=lambda part=part: [p.add(d, b) for d, b in part]) for part in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close()
    reader = Packs(tmp_path)
    assert {d: reader.read(d) for d in objs} == objs


def test_the_cache_packs_small_objects_and_keeps_large_ones_as_files(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    small = cache.store_bytes(b"three short lines\n" * 3)
    large_data = os.urandom(PACK_MAX + 1)
    large = cache.store_bytes(large_data)
    cache.close()
    assert not cache.path_of(small).exists() and small in Packs(tmp_path / "cache" / pack.PACKS)
    assert cache.path_of(large).read_bytes() == large_data
    assert cache.packed(small) == b"three short lines\n" * 3 and cache.packed(large) is None  # what push sends
    dest = tmp_path / "ws" / "out.txt"
    cache.checkout_file(small, dest)
    assert dest.read_bytes() == b"three short lines\n" * 3 and dest.stat().st_mode & 0o200


def test_a_build_killed_after_packing_restores_from_the_pack_it_never_indexed(project: Project) -> None:
    project.pivotfile(
        """
stage a:
    outs: a.txt
    run: echo made by a > $@
stage b:
    deps: a.txt
    outs: b.txt
    run:
        if [ ! -e killed.once ]; then
            touch killed.once
            for i in $(seq 500); do [ -z "$(ls .pivot/cache/packs/ 2>/dev/null)" ] || break; sleep 0.02; done
            sleep 0.1
            kill -9 $PPID; sleep 5
        fi
        cat $< > $@
"""
    )
    r = project.run("-j1")
    assert r.code != 0  # pivotbuild itself was killed
    packs = project.root / ".pivot/cache/packs"
    assert files(packs, ".pack") and not files(packs, ".idx")  # a's output packed, never indexed
    (project.root / "a.txt").unlink()
    r = project.run("--json", "-j1")
    assert r.code == 0, r.err
    done = finished(r)
    assert done["a"][0] == "restored" and done["b"][0] == "ran"
    assert (project.root / "a.txt").read_text() == "made by a\n"
    assert (project.root / "b.txt").read_text() == "made by a\n"
    assert len(files(packs, ".idx")) == len(files(packs, ".pack"))  # and now indexed


def test_commit_indexes_the_pack_it_stores_into(project: Project) -> None:
    project.pivotfile("X = 1\nstage make:\n    outs: out.txt\n    run: echo made ${X} > $@\n")
    assert project.run("--no-commit").code == 0
    packs = project.root / ".pivot/cache/packs"
    assert files(packs, ".pack") == []  # a --no-commit result is not cached...
    r = project.run("commit")
    assert r.code == 0, r.err
    assert len(files(packs, ".pack")) == 1 and len(files(packs, ".idx")) == 1  # ...until committed
    (project.root / "out.txt").unlink()
    assert project.run("checkout").code == 0
    assert (project.root / "out.txt").read_text() == "made 1\n"


def test_pull_packs_small_objects_and_keeps_large_ones_as_files(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    one = Project(tmp_path / "one")
    (one.root / ".pivot").mkdir(parents=True)
    one.pivotfile(
        """
stage small:
    outs: s.txt
    run: echo small > $@
stage large:
    outs: l.bin
    run: head -c 70000 /dev/zero > $@
"""
    )
    assert one.run().code == 0
    assert one.run("remote", "add", "--default", "team", str(share)).code == 0
    assert one.run("push").code == 0
    assert len(list((share / "objects").glob("*/*"))) == 2  # a remote keeps a file per object
    two = Project(tmp_path / "two")
    (two.root / ".pivot").mkdir(parents=True)
    for rel in ("Pivotfile", "Pivotfile.lock", ".pivot/config.toml"):
        (two.root / rel).write_bytes((one.root / rel).read_bytes())
    r = two.run("pull")
    assert r.code == 0, r.err
    assert (two.root / "s.txt").read_text() == "small\n" and (two.root / "l.bin").stat().st_size == 70000
    cache = two.root / ".pivot/cache"
    assert [p.name for p in (cache / "objects").glob("*/*")] == [hash_bytes(bytes(70000))[2:]]  # only the large one
    assert len(files(cache / "packs", ".pack")) == 1 and len(files(cache / "packs", ".idx")) == 1  # the small, indexed
    assert set(finished(two.run("--json").out).values()) == {("skipped", "up to date")}


def test_a_pack_still_being_written_is_never_merged_away(tmp_path: Path) -> None:
    for build in range(MAX_PACKS):  # as many packs as may be left
        write_pack(tmp_path, blobs(1, f"old{build}-"))
    building = Packs(tmp_path)  # a build, still storing...
    (x, xdata), (y, ydata) = blobs(2, "build-").items()
    building.add(x, xdata)
    write_pack(tmp_path, blobs(1, "fetched-"))  # ...while a fetch ends and merges
    building.add(y, ydata)
    building.close()
    reader = Packs(tmp_path)
    assert reader.read(x) == xdata and reader.read(y) == ydata
    assert len(files(tmp_path, ".idx")) == len(files(tmp_path, ".pack"))


def test_a_reader_that_scanned_a_pack_before_its_writer_finished_never_indexes_it_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (x, xdata), (y, ydata) = blobs(2, "race-").items()
    writer = Packs(tmp_path)  # a build (or the Dask executor's fetches), storing...
    writer.add(x, xdata)
    scan = pack._scan

    def scan_then_the_writer_finishes(path: Path) -> list[tuple[str, int, int]]:
        seen = scan(path)  # ...while another reads its pack (only x in it so far)...
        writer.add(y, ydata)
        writer.close()  # ...and it ends: y stored, the pack indexed, unlocked
        return seen

    monkeypatch.setattr(pack, "_scan", scan_then_the_writer_finishes)
    assert Packs(tmp_path).read(x) == xdata
    monkeypatch.undo()
    reader = Packs(tmp_path)  # the index the writer wrote stands: y is found
    assert reader.read(x) == xdata and reader.read(y) == ydata


@pytest.mark.parametrize("competitor", ["a merge", "a reader"])
def test_a_new_pack_is_locked_before_another_process_can_find_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, competitor: str
) -> None:
    old = blobs(2, "old-")
    write_pack(tmp_path, old)
    real = fcntl.flock

    def the_competitor_first(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX:  # the writer's, its pack just created
            monkeypatch.setattr(fcntl, "flock", real)
            if competitor == "a merge":  # a pull, a commit, another build's close
                Packs(tmp_path).rewrite([f.name for f in files(tmp_path, ".pack")], drop=frozenset())
            else:  # a pull beside the build, reading the packs
                assert Packs(tmp_path).read(next(iter(old))) is not None
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", the_competitor_first)
    writer = Packs(tmp_path)
    objs = blobs(3, "new-")
    for digest, data in objs.items():
        writer.add(digest, data)
    assert fcntl.flock is real  # (the competitor did run)
    reader = Packs(tmp_path)  # while the build still stores
    assert {d: reader.read(d) for d in old | objs} == old | objs
    writer.close()
    reader = Packs(tmp_path)
    assert {d: reader.read(d) for d in old | objs} == old | objs
    assert len(files(tmp_path, ".idx")) == len(files(tmp_path, ".pack"))


def test_a_merge_while_a_build_reads_the_packs_hides_none_of_their_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packs_dir = tmp_path / "cache" / pack.PACKS
    objs: dict[str, bytes] = {}
    for build in range(5):
        built = blobs(1, f"build{build}-")
        objs |= built
        write_pack(packs_dir, built)
    cache = Cache(tmp_path / "cache")
    entries = Packs._entries
    merged = []

    def merge_first(self: Packs, name: str) -> list[tuple[str, int, int]]:
        if not merged:  # another process merges the packs this one has just listed
            merged.append(name)
            Packs(packs_dir).rewrite([f.name for f in files(packs_dir, ".pack")], drop=frozenset())
        return entries(self, name)

    monkeypatch.setattr(Packs, "_entries", merge_first)
    for i, (digest, data) in enumerate(objs.items()):
        dest = tmp_path / "ws" / f"{i}.txt"
        cache.checkout_file(digest, dest)
        assert dest.read_bytes() == data
    assert merged


def test_an_object_stored_while_another_thread_reloads_the_packs_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (x, xdata), (y, ydata) = blobs(2, "thread-").items()
    p = Packs(tmp_path)  # a build's cache; the Dask executor's threads fetch into it at once
    p.add(x, xdata)
    index = Packs._index

    def then_another_thread_reloads(self: Packs) -> dict[str, tuple[str, int, int]]:
        seen = index(self)
        self.reload()  # another thread: a read that found its pack merged away
        index(self)  # and another thread reads the directory again
        return seen

    monkeypatch.setattr(Packs, "_index", then_another_thread_reloads)
    p.add(y, ydata)
    monkeypatch.undo()
    assert p.read(x) == xdata and p.read(y) == ydata
    p.close()
    assert Packs(tmp_path).read(y) == ydata


def test_a_damaged_record_leaves_a_good_file_copy_of_the_object(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    data = b"small and linked\n"
    digest = cache.store_bytes(data)
    cache.close()
    cache.checkout_file(digest, tmp_path / "ws" / "linked.txt", Mode.HARDLINK)  # makes it a file too
    packs = Packs(tmp_path / "cache" / pack.PACKS)
    packs.drop([digest])
    packs.add(digest, b"rotten\n")  # the record damaged (add does not check)
    packs.close()
    cache = Cache(tmp_path / "cache")
    assert cache.packed(digest) is None  # the bad record dropped; the file copy answers
    assert digest not in Packs(tmp_path / "cache" / pack.PACKS)
    cache.verify(digest)
    dest = tmp_path / "ws" / "copy.txt"
    cache.checkout_file(digest, dest)
    assert dest.read_bytes() == data


def test_gc_counts_an_object_once_and_cleans_what_killed_writers_left(tmp_path: Path) -> None:
    cache = Cache(tmp_path / ".pivot" / "cache")
    digests = [cache.store_bytes(f"garbage {i}\n".encode()) for i in range(3)]
    cache.close()
    for i, digest in enumerate(digests):  # each also a file (a hardlink checkout made it one)
        cache.checkout_file(digest, tmp_path / "ws" / f"{i}.txt", Mode.HARDLINK)
    packs_dir = tmp_path / ".pivot" / "cache" / pack.PACKS
    gone_pid = subprocess.Popen(["true"])  # (a pid that is gone: a child, reaped)
    gone_pid.wait()
    left = packs_dir / f".1-abc.pack.{gone_pid.pid}-0123.tmp"
    left.write_bytes(b"half a pack")
    orphan = packs_dir / "999999-0abc.idx"
    orphan.write_bytes(b"an index whose pack was merged away")
    dry = gc.collect(tmp_path, cache, keep_run_cache=False, dry_run=True)
    assert sorted(dry.objects) == sorted(digests)  # once each, though each is a file and a record
    report = gc.collect(tmp_path, Cache(tmp_path / ".pivot" / "cache"), keep_run_cache=False, dry_run=False)
    assert sorted(report.objects) == sorted(digests)
    assert not left.exists() and not orphan.exists()
    assert files(packs_dir, ".pack") == [] and cache_digests(tmp_path / ".pivot" / "cache") == set()


def test_gc_that_cannot_rewrite_a_pack_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path / ".pivot" / "cache")
    cache.store_bytes(b"garbage\n")
    cache.close()

    def full(self: Packs, digests: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Packs, "drop", full)
    with pytest.raises(gc.GcError, match="free some space and run gc again"):
        gc.collect(tmp_path, Cache(tmp_path / ".pivot" / "cache"), keep_run_cache=False, dry_run=False)


def test_a_process_reads_each_index_once_and_sees_every_pack_written_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build server builds again and again: what the packs hold is read
    once, then only the indexes of packs written since, by itself or another
    process; a pack without an index yet (its writer still storing) is read
    afresh every time."""
    first, second = blobs(20, "first-"), blobs(20, "second-")
    write_pack(tmp_path, first)
    parsed: list[int] = []
    parse = pack._parse_index
    monkeypatch.setattr(pack, "_parse_index", lambda blob: parsed.append(1) or parse(blob))
    assert all(Packs(tmp_path).read(d) == data for d, data in first.items())
    before = len(parsed)
    assert all(Packs(tmp_path).read(d) == data for d, data in first.items())
    assert len(parsed) == before  # read from what this process kept
    subprocess.run(
        [sys.executable, "-c", WRITE_ONE, str(tmp_path), *(f"{d}:{data.hex()}" for d, data in second.items())],
        check=True,
    )
    reader = Packs(tmp_path)
    assert all(reader.read(d) == data for d, data in {**first, **second}.items())
    assert len(parsed) == before + 1  # the new pack's index alone
    storing = Packs(tmp_path)  # another writer, its pack not indexed yet
    (late, late_data), *_ = blobs(1, "late-").items()
    storing.add(late, late_data)
    assert Packs(tmp_path).read(late) == late_data
    storing.close()
    assert Packs(tmp_path).read(late) == late_data


WRITE_ONE = """
import sys
from pathlib import Path
from pivotbuild.cache.pack import Packs
p = Packs(Path(sys.argv[1]))
for arg in sys.argv[2:]:
    digest, data = arg.split(":")
    p.add(digest, bytes.fromhex(data))
p.close()
"""
