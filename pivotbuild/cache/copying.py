"""Copying bytes into and out of the cache: a reflink where the filesystem
shares extents, else one pass that copies and hashes at once (direct I/O for
the cache's copy), and new read-only files written whole."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from pathlib import Path

import xxhash

from pivotbuild.state.hashing import CHUNK, hash_file

_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def write_new(path: str, data: bytes, perms: int = 0o444) -> None:
    """Create `path` (it must not exist) holding `data`: read-only unless
    `perms` says otherwise (the umask applies)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, perms)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` at `fd`'s position (a write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def clone_and_hash(src_fd: int, dest_fd: int, dest: str) -> str | None:
    """Reflink `src_fd` into `dest_fd` and hash the clone; None if the
    filesystem cannot share extents."""
    return hash_file(dest) if reflink(src_fd, dest_fd) else None


def copy_and_hash(src_fd: int, dest_fd: int, dest: str) -> str:
    """Copy `src_fd` to `dest_fd` (from the start) in one pass, hashing what is copied.

    The copy is written with direct I/O where the filesystem allows it: an
    object is an archive copy, rarely read back soon, so it need not take page
    cache.  Besides keeping the workspace's files in memory, that makes a large
    store cheap: a buffered write of new data costs the CPU a page allocation
    and a copy per 4 KiB, a direct one is a DMA from our buffer.  Whole aligned
    chunks go direct; a short last chunk (and everything, where direct I/O is
    refused) goes through `dest_fd`."""
    h = xxhash.xxh3_128()
    view = _buffer()
    os.lseek(src_fd, 0, os.SEEK_SET)
    os.ftruncate(dest_fd, 0)
    direct = _open_direct(dest)
    offset = 0
    try:
        while n := os.readv(src_fd, [view]):
            chunk = view[:n]
            h.update(chunk)
            if direct is not None and n % _ALIGN == 0:
                try:
                    _write_all(direct, chunk, offset)
                    offset += n
                    continue
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                os.close(direct)
                direct = None
            elif direct is not None:
                os.close(direct)  # unaligned from here on: finish buffered
                direct = None
            _write_all(dest_fd, chunk, offset)
            offset += n
        return h.hexdigest()
    finally:
        if direct is not None:
            os.close(direct)


_buffers = threading.local()


def _buffer() -> memoryview:
    """This thread's copy buffer: page-aligned, as direct I/O requires, and
    reused, so its pages are faulted in once rather than once per file."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(mmap.mmap(-1, CHUNK))
    return view


_ALIGN = 4096  # a multiple of every logical block size direct I/O asks offsets and lengths to align to


def _open_direct(path: str) -> int | None:
    """A second, direct-I/O descriptor on `path`, or None where that is not available."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
    except OSError:
        return None  # tmpfs and some FUSE filesystems refuse O_DIRECT


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


def reflink(src_fd: int, dest_fd: int) -> bool:
    """Make `dest_fd` share `src_fd`'s extents (FICLONE); False where the
    filesystem (or the pair of them) cannot."""
    try:
        fcntl.ioctl(dest_fd, _FICLONE, src_fd)
    except OSError:
        return False
    return True


def clone_or_copy(src: Path, dest_fd: int) -> bool:
    """Fill the empty file `dest_fd` with `src`'s bytes: a reflink where the
    filesystem can (returns True), else a copy."""
    with open(src, "rb") as fin:
        if reflink(fin.fileno(), dest_fd):
            return True
        size = os.fstat(fin.fileno()).st_size
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(fin.fileno(), dest_fd, size - copied)
                if n == 0:
                    break
                copied += n
        except OSError:
            fin.seek(0)
            os.lseek(dest_fd, 0, os.SEEK_SET)
            os.ftruncate(dest_fd, 0)
            copied = 0
        fin.seek(copied)
        os.lseek(dest_fd, copied, os.SEEK_SET)
        while chunk := fin.read(1 << 20):
            write_all(dest_fd, chunk)
    return False
