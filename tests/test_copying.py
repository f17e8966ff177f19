"""How a large output's copy reaches the cache: written through the page
cache or direct, whichever the copies measure as cheaper (cache/copying.py's
`Ways`), and whole and exact either way."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pivotbuild.cache import copying
from pivotbuild.cache.copying import Ways
from pivotbuild.cache.store import Cache
from pivotbuild.state.hashing import hash_file

MIB = 1 << 20


@pytest.fixture
def ways(monkeypatch: pytest.MonkeyPatch) -> Ways:
    """A fresh chooser in place of the process's own, and a count of the
    copies that opened a direct descriptor (the real one)."""
    fresh = Ways()
    monkeypatch.setattr(copying, "WAYS", fresh)
    return fresh


def _opened_direct(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = copying._open_direct

    def counting(path: str) -> int | None:
        opened.append(path)
        return real(path)

    monkeypatch.setattr(copying, "_open_direct", counting)
    return opened


def _output(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_each_way_is_tried_once_then_the_cheaper_is_kept(ways: Ways) -> None:
    assert ways.direct(8 * MIB)  # nothing measured: direct first
    ways.note(True, 0.4, 100 * MIB)
    assert not ways.direct(8 * MIB)  # then buffered
    ways.note(False, 0.1, 100 * MIB)
    picks = [ways.direct(2 * MIB) for _ in range(2 * Ways.EXPLORE)]
    assert picks.count(True) == 2  # buffered is cheaper: direct only to keep its measure current
    assert not any(ways.direct(8 * MIB) for _ in range(2 * Ways.EXPLORE))  # but never with a large copy
    for _ in range(8):  # the disk got faster (or memory dearer): the average follows
        ways.note(True, 0.001, 100 * MIB)
    picks = [ways.direct(2 * MIB) for _ in range(2 * Ways.EXPLORE)]
    assert picks.count(False) == 2
    assert all(ways.direct(8 * MIB) for _ in range(2 * Ways.EXPLORE))


def test_a_short_write_is_not_counted(ways: Ways) -> None:
    ways.note(True, 5.0, Ways.MEASURED - 1)  # a short last chunk says nothing of the way
    assert ways.cost == [0.0, 0.0]
    ways.note(False, 0.0, 0)
    assert ways.cost == [0.0, 0.0]


@pytest.mark.parametrize("tail", [0, 12345])  # whole chunks only, and a short last chunk (written buffered)
def test_large_outputs_are_stored_exactly_whichever_way_is_cheaper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ways: Ways, tail: int
) -> None:
    opened = _opened_direct(monkeypatch)
    cache = Cache(tmp_path / "cache")
    outputs = [tmp_path / f"out{i}.bin" for i in range(4)]
    datas = [_output(out, 3 * MIB + tail + i) if tail else _output(out, (3 + i) * MIB) for i, out in enumerate(outputs)]

    digests = [cache.ingest(str(out)) for out in outputs[:2]]
    assert len(opened) == 1  # the first copy direct, the second buffered: each way measured once
    assert ways.cost[0] > 0 and ways.cost[1] > 0

    ways.cost = [1.0, 2.0]  # as if direct had cost twice as much a byte
    digests.append(cache.ingest(str(outputs[2])))
    assert len(opened) == 1
    ways.cost = [2.0, 1.0]  # and now buffered
    digests.append(cache.ingest(str(outputs[3])))
    assert len(opened) == 2

    for out, data, digest in zip(outputs, datas, digests, strict=True):
        assert digest == hash_file(out)
        obj = cache.path_of(digest)
        assert obj.read_bytes() == data
        assert not obj.stat().st_mode & 0o222  # read-only, as every object


def test_a_kept_copy_is_sent_to_the_disk_and_a_copy_the_cache_had_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pivotbuild.cache import store

    sent: list[int] = []
    monkeypatch.setattr(store, "send", lambda fd: sent.append(os.fstat(fd).st_ino))
    cache = Cache(tmp_path / "cache")
    out = tmp_path / "out.bin"
    data = _output(out, 2 * MIB + 5)
    digest = cache.ingest(str(out))
    assert sent == [cache.path_of(digest).stat().st_ino]  # (the object itself: its writeback begun)
    again = tmp_path / "again.bin"
    again.write_bytes(data)
    assert cache.ingest(str(again)) == digest
    assert len(sent) == 1  # (a copy of what the cache had: removed unsent)
    assert cache.path_of(digest).read_bytes() == data
    assert [p.name for p in cache.path_of(digest).parent.iterdir()] == [cache.path_of(digest).name]


def _recording_sends(monkeypatch: pytest.MonkeyPatch, root: Path | None = None) -> list[tuple[str, bool]]:
    """`copying.send_path` recording each path sent (and, given a project's
    `root`, whether its lockfile was written by then)."""
    sent: list[tuple[str, bool]] = []
    real = copying.send_path

    def recording(path: str) -> None:
        sent.append((path, root is not None and (root / "Pivotfile.lock").exists()))
        real(path)

    monkeypatch.setattr(copying, "send_path", recording)
    return sent


def _held_and_sent(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, bool]], list[int]]:
    """The paths the held copies' sending sends (`_recording_sends`), and the
    descriptors the cache sends as each copy is made (recorded, not sent)."""
    from pivotbuild.cache import store

    at_once: list[int] = []
    monkeypatch.setattr(store, "send", at_once.append)
    return _recording_sends(monkeypatch), at_once


def _await(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_held_copies_wait_for_their_release_and_the_oldest_go_once_over_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent, at_once = _held_and_sent(monkeypatch)
    held = copying.Held()
    held.LIMIT = 5 * MIB
    cache = Cache(tmp_path / "cache")
    cache.held = held
    objects = []
    for k in range(3):
        out = tmp_path / f"out{k}.bin"
        _output(out, 2 * MIB + k)
        objects.append(str(cache.path_of(cache.ingest(str(out)))))
        assert Path(objects[-1]).read_bytes() == out.read_bytes()
    assert at_once == []  # (held, not sent as made)
    assert sent == [(objects[0], False)]  # the third took the held bytes over 5 MiB: the oldest went
    dup = tmp_path / "dup.bin"
    dup.write_bytes((tmp_path / "out2.bin").read_bytes())
    cache.ingest(str(dup))  # (an object the cache had: nothing to hold)
    held.release()
    _await(lambda: len(sent) == 3)
    assert sorted(path for path, _ in sent) == sorted(objects)
    held.release()  # (nothing held: nothing more sent)
    assert len(sent) == 3


def _two_big_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[tuple[str, bool]], list[bool]]:
    """A project of two stages with outputs of 3 and 6 MB; the copies sent
    later (`_recording_sends`), and whether the lockfile existed as each
    copy sent as made was."""
    from pivotbuild.cache import store

    root = tmp_path / "p"
    (root / ".pivot").mkdir(parents=True)
    (root / "Pivotfile").write_text(
        "stage big:\n    outs: big.bin\n    run: head -c 3000000 /dev/urandom > big.bin\n"
        "stage bigger:\n    deps: big.bin\n    outs: bigger.bin\n    run: cat big.bin big.bin > bigger.bin\n"
    )
    sent = _recording_sends(monkeypatch, root)
    at_once: list[bool] = []
    real_send = store.send
    monkeypatch.setattr(store, "send", lambda fd: (at_once.append((root / "Pivotfile.lock").exists()), real_send(fd)))
    return root, sent, at_once


@pytest.mark.parametrize("resident", [True, False])
def test_a_resident_engine_sends_its_copies_once_its_records_are_written_a_one_shot_build_as_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resident: bool
) -> None:
    """The API's engine (resident, as a build server's and watch mode's)
    holds the writeback of the copies it keeps until the lockfile is
    written; `pivotbuild` in a process of its own sends each as it is made
    (its thread would not outlive it)."""

    root, sent, at_once = _two_big_stages(tmp_path, monkeypatch)
    if resident:
        from pivotbuild.api import Project as ApiProject

        assert ApiProject.load(root).build().ok
        _await(lambda: len(sent) == 2)
        assert at_once == []
        assert [written for _, written in sent] == [True, True]  # after the records
        cached = {hash_file(root / name) for name in ("big.bin", "bigger.bin")}
        assert {os.path.basename(os.path.dirname(p)) + os.path.basename(p) for p, _ in sent} == cached
    else:
        from pivotbuild.cli import main

        monkeypatch.chdir(root)
        assert main(["-s"]) == 0
        assert at_once == [False, False]  # each as made, before the lockfile
        assert sent == []


def test_dirty_room_is_what_the_kernel_allows_below_a_share_of_its_background_threshold(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text(
        "nr_free_pages 5\nnr_dirty 100\nnr_writeback 7\nnr_dirty_threshold 2000\nnr_dirty_background_threshold 1000\n"
    )
    page = os.sysconf("SC_PAGE_SIZE")
    assert copying.dirty_room(0.9, str(vmstat)) == 800 * page
    vmstat.write_text("nr_dirty 950\nnr_dirty_background_threshold 1000\n")
    assert copying.dirty_room(0.9, str(vmstat)) == -50 * page  # over by that much
    vmstat.write_text("nr_dirty 950\n")  # (a kernel that does not say its threshold)
    assert copying.dirty_room(0.9, str(vmstat)) is None
    assert copying.dirty_room(0.9, str(tmp_path / "missing")) is None


def test_left_copies_stay_unsent_until_the_dirty_pages_near_the_kernel_s_threshold_then_the_oldest_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent, at_once = _held_and_sent(monkeypatch)
    room = [10 * MIB]
    monkeypatch.setattr(copying, "dirty_room", lambda share: room[0])
    left = copying.Left()
    left.EVERY = 1
    cache = Cache(tmp_path / "cache")
    cache.held = left
    objects = []
    for k in range(4):
        if k == 2:
            room[0] = -3 * MIB  # (the dirty pages now over the share by 3 MiB)
        out = tmp_path / f"out{k}.bin"
        _output(out, 2 * MIB + k)
        objects.append(str(cache.path_of(cache.ingest(str(out)))))
        if k == 2:
            room[0] = 10 * MIB
    assert at_once == []  # (none sent as made)
    assert [path for path, _ in sent] == objects[:2]  # over by 3 MiB: the two oldest went
    assert left.left() == objects[2:]  # the rest, for the server, oldest first
    assert left.left() == []
    assert len(sent) == 2  # (never sent here)


def test_a_first_build_that_starts_a_server_leaves_its_copies_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pivotbuild` in a process of its own that will start a server as it
    ends (no server was listening: cli.run) sends none of the copies it
    keeps: it names them to the server (`Left.left`).  (One that will not
    sends each as it is made: the test above.)"""
    from pivotbuild.cli import client, main

    root, sent, at_once = _two_big_stages(tmp_path, monkeypatch)
    monkeypatch.setattr(copying, "LEFT", copying.Left())
    monkeypatch.setattr(copying, "dirty_room", lambda share: 1 << 40)  # (whatever else this machine has dirty)
    monkeypatch.setattr(client, "STARTS", True)
    monkeypatch.chdir(root)
    assert main(["-s"]) == 0
    cached = {hash_file(root / name) for name in ("big.bin", "bigger.bin")}
    left = copying.LEFT.left()
    assert sent == [] and at_once == []
    assert {os.path.basename(os.path.dirname(p)) + os.path.basename(p) for p in left} == cached
