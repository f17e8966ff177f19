"""Hardlink mode: a rerun stage's old output lets go of its memory
(pivotbuild/cache/pages.py).  The old version is the cache's object, so
removing the workspace link frees nothing; on a VM whose balloon reports
free pages to its host (this project's machines), pivotbuild drops the
object's pages from the page cache (they are clean: written back) and keeps
the object, which a later build still restores from.  Elsewhere the pages
stay (the kernel reclaims them when it needs to)."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path

import pytest
from conftest import Project

from pivotbuild.cache import pages

PIPELINE = """
stage big:
    deps: seed.txt
    outs: big.bin
    run: python3 -c "import sys; sys.stdout.buffer.write(open('seed.txt','rb').read() * 40000)" > $@
"""
SEED_A = "a" * 63 + "\n"  # x 40,000: 2.5 MiB (more than pages.MIN_BYTES)
SEED_B = "b" * 63 + "\n"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


def resident(fd: int) -> int:
    """How many of the file's pages are in the page cache (mincore)."""
    size = os.fstat(fd).st_size
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
        assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        return sum(b & 1 for b in vec)
    finally:
        _libc.munmap(addr, size)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "writeback", "evicted", "recent")]


def dirty(fd: int) -> int:
    """How many of the file's pages are dirty, not yet written back (cachestat, Linux 6.5+)."""
    found = _CacheStat()
    assert _libc.syscall(451, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(found), 0) == 0, os.strerror(
        ctypes.get_errno()
    )
    return found.dirty


DROPS = pages.reports_free_pages()  # (this machine's: the tests below expect what it does)


def hardlink_project(project: Project) -> Project:
    project.pivotfile(PIPELINE)
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    project.write("seed.txt", SEED_A)
    built(project)
    return project


def built(project: Project) -> str:
    result = project.run()
    assert result.code == 0, result.err
    return result.err


def test_a_rerun_drops_the_old_versions_pages_and_keeps_the_version(project: Project) -> None:
    hardlink_project(project)
    out = project.root / "big.bin"
    assert out.stat().st_nlink == 2  # (the workspace's link and the cache's object)
    old = os.open(out, os.O_RDONLY)  # the old version's inode, whatever its name becomes
    try:
        os.sync()  # (as the kernel would within half a minute: its pages are clean)
        resident_before = resident(old)
        assert resident_before > 0
        project.write("seed.txt", SEED_B)
        assert "1 ran" in built(project)
        assert out.read_bytes() == SEED_B.encode() * 40000
        assert resident(old) == (0 if DROPS else resident_before)
        assert os.fstat(old).st_nlink == 1  # (still the cache's object)
    finally:
        os.close(old)
    project.write("seed.txt", SEED_A)  # back: the old version comes from the cache, intact
    assert "1 restored" in built(project)
    assert out.read_bytes() == SEED_A.encode() * 40000


def test_an_old_version_not_yet_written_back_is_written_as_the_next_build_begins(project: Project) -> None:
    """Its pages cannot go before they are on disk: a build starts writing
    out the old objects its stages may replace (cache/pages.py), so that a
    large stage, which comes late, finds its old version's pages clean."""
    hardlink_project(project)
    out = project.root / "big.bin"
    old = os.open(out, os.O_RDONLY)
    try:
        assert dirty(old) > 0  # (just written)
        project.write("seed.txt", SEED_B)
        built(project)
        assert (dirty(old) == 0) if DROPS else (dirty(old) > 0)  # (written, or being written)
    finally:
        os.close(old)


def test_a_balloon_that_reports_free_pages_is_found(tmp_path: Path) -> None:
    """sysfs's virtio devices: a balloon (device 5) whose features (bit 0
    first) have bit 5, VIRTIO_BALLOON_F_REPORTING."""

    def device(name: str, kind: int, features: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "device").write_text(f"0x{kind:04x}\n")
        (tmp_path / name / "features").write_text(features + "\n")

    device("virtio0", 1, "0000010000")  # (a network device with that bit)
    assert not pages.reports_free_pages(str(tmp_path))
    device("virtio1", 5, "0110000000")  # a balloon without it
    assert not pages.reports_free_pages(str(tmp_path))
    device("virtio2", 5, "0110010000")
    assert pages.reports_free_pages(str(tmp_path))
    assert not pages.reports_free_pages(str(tmp_path / "none"))


def _linked(tmp_path: Path, links: int) -> int:
    """A written-back file of 2 MiB with `links` names; an fd open on it."""
    first = tmp_path / "f0"
    first.write_bytes(b"x" * (2 << 20))
    for i in range(1, links):
        os.link(first, tmp_path / f"f{i}")
    fd = os.open(first, os.O_RDONLY)
    os.sync()
    return fd


def _released(path: Path, fd: int) -> tuple[int, int]:
    """`fd`'s resident pages before and after `pages.release` has seen to `path`."""
    before = resident(fd)
    pages.release(str(path), os.lstat(path))
    pages.settle()
    return before, resident(fd)


def test_release_drops_an_object_linked_once_besides_the_cache(tmp_path: Path) -> None:
    fd = _linked(tmp_path, 2)
    try:
        before, after = _released(tmp_path / "f0", fd)
        assert after == (0 if DROPS else before) and before > 0
    finally:
        os.close(fd)


def test_release_keeps_a_file_not_yet_written_back_and_begins_its_writeback(tmp_path: Path) -> None:
    """Its pages cannot go before they are written: they stay, and their
    writeback begins (a build's own `write_back`, as it began, did not get
    to it)."""
    first = tmp_path / "f0"
    first.write_bytes(b"x" * (2 << 20))
    os.link(first, tmp_path / "f1")
    fd = os.open(first, os.O_RDONLY)
    try:
        assert dirty(fd) > 0
        before, after = _released(first, fd)
        assert after == before and (dirty(fd) == 0 if DROPS else dirty(fd) > 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("links", "size"), [(3, 2 << 20), (2, pages.MIN_BYTES - 1), (1, 2 << 20)])
def test_release_leaves_other_files_alone(tmp_path: Path, links: int, size: int) -> None:
    """A file another output links too (it may still be read), a small one,
    and a file of the workspace's own keep their pages."""
    fd = _linked(tmp_path, links)
    try:
        os.truncate(tmp_path / "f0", size)
        os.sync()
        before, after = _released(tmp_path / "f0", fd)
        assert after == before > 0
    finally:
        os.close(fd)


def test_a_first_hardlink_build_leaves_every_object_directory_made(project: Project) -> None:
    """The thread making a fresh cache's 256 object directories is waited
    for as the build ends (Cache.close): a build that ended first left the
    rest to the next build's thread, which a build server then found still
    running and took for one the build left behind (it served no more)."""
    hardlink_project(project)
    objects = project.root / ".pivot" / "cache" / "objects"
    assert sorted(p.name for p in objects.iterdir() if p.is_dir()) == [f"{i:02x}" for i in range(256)]


def test_where_new_memory_costs_no_more_nothing_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeing pages costs CPU, which pays only where new memory costs more
    than reused memory: without such a balloon the kernel keeps them until
    it needs the memory."""
    monkeypatch.setattr(pages._PAGES, "worth", False)
    fd = _linked(tmp_path, 2)
    try:
        before, after = _released(tmp_path / "f0", fd)
        assert after == before > 0
    finally:
        os.close(fd)


def test_the_writebacks_a_build_begins_are_flushed_beside_its_releases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the old objects' writebacks are begun, a thread of its own has
    the device make them durable (an fdatasync of the last), while the
    stages run: else the build's own last fsync waited for all of it.  A
    release does not wait behind that flush, however long it takes."""
    olds = [tmp_path / f"old{i}" for i in range(3)]
    for old in olds:
        old.write_bytes(b"o" * (2 << 20))
        os.link(old, f"{old}.cached")  # (the workspace's link and the cache's object)
    fd = _linked(tmp_path, 2)  # a rerun's old object, written back (a sync: before the writebacks below)
    flushing, go_on, done = threading.Event(), threading.Event(), threading.Event()
    flushed: list[tuple[str, str]] = []
    real = os.fdatasync

    def slow_flush(fd: int) -> None:
        flushed.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread().name))
        flushing.set()
        try:
            assert go_on.wait(30)
            real(fd)
        finally:
            done.set()

    monkeypatch.setattr(os, "fdatasync", slow_flush)
    fresh = pages._Pages()
    try:
        fresh.write([*map(str, olds), str(tmp_path / "gone")])  # (the last one gone meanwhile: the one before)
        if pages._Calls.find() is None:  # (a kernel before 6.5: nothing is done)
            fresh.settle()
            assert not flushed
            return
        assert flushing.wait(30)
        assert flushed == [(str(olds[-1]), pages.FLUSHER)]
        before = resident(fd)
        fresh.hand(os.open(tmp_path / "f0", os.O_RDONLY))
        fresh.settle()  # (the flush still waits)
        assert resident(fd) == 0 < before and not done.is_set()
    finally:
        os.close(fd)
        go_on.set()
    assert done.wait(30)
    last = os.open(olds[-1], os.O_RDONLY)
    try:
        assert dirty(last) == 0
    finally:
        os.close(last)


def _object_of(project: Project, data: bytes) -> Path:
    """The cache's object holding `data` (the default mode's copy of an output)."""
    import xxhash

    digest = xxhash.xxh3_128(data).hexdigest()
    path = project.root / ".pivot" / "cache" / "objects" / digest[:2] / digest[2:]
    assert path.is_file()
    return path


def test_a_rerun_in_the_default_mode_lets_go_of_the_replaced_versions_copy(project: Project) -> None:
    """The default mode keeps a copy of each version: a rerun stage's new
    copy is memory the page cache did not have, and on a VM whose balloon
    reports free pages, memory its host took back, whose first touch costs
    several times a copy's (docs/performance.md, the thirty-seventh
    session).  So the old version's copy, written back by then, drops its
    pages as its stage reruns, for the new one to take; it stays in the
    cache, and a later build restores from it."""
    project.pivotfile(PIPELINE)
    project.write("seed.txt", SEED_A)
    built(project)
    old = os.open(_object_of(project, SEED_A.encode() * 40000), os.O_RDONLY)
    try:
        os.sync()  # (as the server's sends, or the kernel within half a minute: its pages are clean)
        os.pread(old, 2 << 20, 0)  # (its pages in the page cache, whatever the build's sending left there)
        resident_before = resident(old)
        assert resident_before > 0
        project.write("seed.txt", SEED_B)
        assert "1 ran" in built(project)
        assert (project.root / "big.bin").read_bytes() == SEED_B.encode() * 40000
        assert resident(old) == (0 if DROPS else resident_before)
    finally:
        os.close(old)
    project.write("seed.txt", SEED_A)  # back: the old version comes from its copy, intact
    assert "1 restored" in built(project)
    assert (project.root / "big.bin").read_bytes() == SEED_A.encode() * 40000


def test_a_copy_let_go_before_it_is_written_back_keeps_its_pages(tmp_path: Path) -> None:
    """`let_go` drops only clean pages, and begins no writeback of its own:
    the build that made the copy sends it (cache/copying.py), and one sent
    in the middle of a build would make its last fsync wait."""
    copy = tmp_path / "copy"
    copy.write_bytes(b"x" * (2 << 20))
    fd = os.open(copy, os.O_RDONLY)
    try:
        assert dirty(fd) > 0
        before = resident(fd)
        pages.let_go(str(copy))
        pages.settle()
        assert resident(fd) == before and dirty(fd) > 0
        os.sync()
        pages.let_go(str(copy))
        pages.settle()
        assert resident(fd) == (0 if DROPS else before)
    finally:
        os.close(fd)


def test_a_rerun_lets_go_of_no_copy_where_the_output_changed_since_it_was_hashed(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is found by the output's stat-cache entry: an output changed
    since (by hand, between builds) names no copy, and none is touched."""
    project.pivotfile(PIPELINE)
    project.write("seed.txt", SEED_A)
    built(project)
    let_go: list[str] = []
    monkeypatch.setattr(pages, "let_go", let_go.append)
    monkeypatch.setattr(pages._PAGES, "worth", True)
    from pivotbuild.api import Project as Api

    api = Api.load(project.root)
    project.write("seed.txt", SEED_B)
    assert api.build().ok
    assert let_go == [str(_object_of(project, SEED_A.encode() * 40000))]
    (project.root / "big.bin").write_bytes(b"edited by hand" * 200000)
    project.write("seed.txt", "c" * 63 + "\n")  # (a version never built: the stage reruns)
    result = api.build()
    assert result.ok and len(result.ran) == 1, result
    assert let_go[1:] == []
