#!/usr/bin/env python3
"""What an fsync costs on this machine, after data sent to the disk before it.

    python3 benchmarks/flushes.py [--dir DIR] [--mb 200] [--rounds 2] [--gaps 0,0.02,0.1,0.2,0.4]

An fsync ends with a flush of the whole device (where its write cache is
"write back" and it has no FUA: `/sys/block/*/queue/write_cache`, `fua`):
it waits for everything sent to the device before it, by any process, to
be made durable.  So what a build's few small fsyncs (its journal, its
lockfile, its seal) cost depends on what was sent just before them.  In
DIR (default: the working directory; its file system, its device), it
prints:

- the milliseconds a write of MB megabytes takes, into new files of 8 MB,
  each way a build's cache copies can be written (through the page cache,
  which leaves the writing to the kernel's writeback; the same with its
  writeback begun at once, `sync_file_range`, as hardlink mode's old
  objects are; direct I/O), and then the milliseconds of an fsync of a
  small file right after (and of a second one after it), `--rounds` times;
- the cost of an fsync of a small file a GAP of seconds after the one
  before, while a thread sends 8 MB to the device every few milliseconds
  (as the kernel does, writing back the data of earlier builds): under
  such writeback a flush costs about as long as it has been since the
  last one (docs/performance.md, the thirty-third session).

On a quiet disk every fsync costs well under a millisecond.  make and
ninja never fsync; pivotbuild must (STATE.md: every state file is replaced
with an fsync, and a finished stage's record is made durable), so a build
that ends with one pays here what this script shows.  Linux only (direct
I/O, `sync_file_range`).  A benchmark, not a test
(benchmarks/test_flushes_smoke.py runs it small).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20
FILE_MB = 8
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


def small_fsync(path: Path) -> float:
    """Milliseconds of an fsync of a small file just written at `path`."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"x" * 4096)
        t0 = time.perf_counter()
        os.fsync(fd)
        return (time.perf_counter() - t0) * 1e3
    finally:
        os.close(fd)


def _files(where: Path, mb: int, write: Callable[[int, memoryview], None], flags: int = 0) -> list[Path]:
    """`mb` megabytes in new files of FILE_MB each, each chunk written by `write(fd, chunk)`."""
    data = mmap.mmap(-1, CHUNK)  # (page-aligned, as direct I/O asks)
    data.write(os.urandom(CHUNK))
    view = memoryview(data)
    made = []
    for i in range(max(1, mb // FILE_MB)):
        path = where / f"bulk{i}"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | flags, 0o644)
        try:
            for _ in range(min(FILE_MB, mb)):
                write(fd, view)
            made.append(path)
        finally:
            os.close(fd)
    return made


def _buffered(fd: int, chunk: memoryview) -> None:
    os.write(fd, chunk)


def _begun(fd: int, chunk: memoryview) -> None:
    os.write(fd, chunk)
    _libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


WAYS: dict[str, tuple[Callable[[int, memoryview], None], int]] = {
    "through the page cache": (_buffered, 0),
    "the same, writeback begun": (_begun, 0),
    "direct I/O": (_buffered, getattr(os, "O_DIRECT", 0)),
}


def after_writes(where: Path, mb: int, rounds: int) -> list[tuple[str, list[float], list[float], list[float]]]:
    """For each way of writing: the write's ms, the small fsync's after it, a second fsync's."""
    found = []
    for name, (write, flags) in WAYS.items():
        writes, firsts, seconds = [], [], []
        for _ in range(rounds):
            os.sync()
            time.sleep(0.5)
            t0 = time.perf_counter()
            try:
                made = _files(where, mb, write, flags)
            except OSError:  # (direct I/O refused here: tmpfs, some FUSE file systems)
                break
            writes.append((time.perf_counter() - t0) * 1e3)
            firsts.append(small_fsync(where / "small"))
            seconds.append(small_fsync(where / "small"))
            for path in made:
                path.unlink()
        if writes:
            found.append((name, writes, firsts, seconds))
    return found


def under_writeback(where: Path, gaps: list[float], repeats: int = 5) -> list[tuple[float, list[float]]]:
    """The ms of a small fsync GAP seconds after the one before, for each gap,
    while a thread keeps sending data to the device."""
    stop = threading.Event()

    def sending() -> None:
        i = 0
        while not stop.is_set():
            for path in _files(where, FILE_MB, _begun):
                path.rename(where / f"stream{i % 8}")
            i += 1
            time.sleep(0.005)

    thread = threading.Thread(target=sending, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        found = []
        for gap in gaps:
            costs = []
            for _ in range(repeats):
                small_fsync(where / "small")
                time.sleep(gap)
                costs.append(small_fsync(where / "small"))
            found.append((gap, costs))
        return found
    finally:
        stop.set()
        thread.join()


def device_of(where: Path) -> str:
    """The block device's write cache and FUA, as sysfs tells them (where it can)."""
    dev = os.stat(where).st_dev
    queue = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not (queue / "queue").exists():
        queue = queue / ".."  # (a partition: its disk's queue)
    try:
        cache = (queue / "queue" / "write_cache").read_text().strip()
        fua = (queue / "queue" / "fua").read_text().strip()
    except OSError:
        return "unknown"
    return f"write cache: {cache}, FUA: {'yes' if fua == '1' else 'no'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path.cwd(), help="where (its device); default: here")
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gaps", default="0,0.02,0.1,0.2,0.4", help="seconds between two fsyncs, comma-separated")
    args = ap.parse_args(argv)
    gaps = [float(g) for g in args.gaps.split(",") if g]
    if not args.dir.is_dir():
        ap.error(f"--dir {args.dir}: no such directory (make it first, on the device to measure)")
    with tempfile.TemporaryDirectory(prefix="pvflushes-", dir=args.dir) as tmp:
        where = Path(tmp)
        print(f"the device: {device_of(where)}")
        print(f"{args.mb} MB written, then a small fsync, then another (ms, each round)")
        for name, writes, firsts, seconds in after_writes(where, args.mb, args.rounds):
            show = "  ".join(f"{w:.0f} / {f:.1f} / {s:.1f}" for w, f, s in zip(writes, firsts, seconds, strict=True))
            print(f"  {name:<28}{show}")
        print("a small fsync a gap after the one before, under writeback (ms, median of 5)")
        for gap, costs in under_writeback(where, gaps):
            print(f"  gap {gap:.2f} s{statistics.median(costs):>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
