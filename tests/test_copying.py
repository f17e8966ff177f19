"""How a large output's copy reaches the cache: written through the page
cache or direct, whichever the copies measure as cheaper (cache/copying.py's
`Ways`), and whole and exact either way."""

from __future__ import annotations

import os
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
