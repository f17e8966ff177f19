#!/usr/bin/env python3
"""What new memory costs on this machine, against memory freed a moment ago.

    python3 benchmarks/memtemp.py [--mb 256] [--rounds 4]

Writes --mb megabytes into a new in-memory file (`memfd_create`) --rounds
times, keeping each (memory grows, as the page cache does in a clean build,
or in an incremental build that keeps its old outputs); then, round after
round, frees one of them and at once writes as much into a new one (into
the memory just freed, as a build that overwrites its outputs does). It
prints the milliseconds per MB of each write, the ratio of the medians, and
whether the machine has a virtio balloon that reports free pages to its host.

On bare metal both kinds cost about the same. On a VM whose host takes back
the memory its guest leaves free (free page reporting: this project's
machines), new memory can cost ten times as much (docs/performance.md,
"This machine's memory"). The first rounds may not show it if memory was
freed in the seconds before: run it after a quiet minute. Linux only.

A benchmark, not a test (benchmarks/test_memtemp_smoke.py runs it small).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the checkout's pivotbuild, for any python3
import compare

from pivotbuild.cache.pages import free_page_reporting


def written(size: int) -> tuple[int, float]:
    """A new in-memory file holding `size` bytes, and the ms per MB it took."""
    fd = os.memfd_create("pvmemtemp", os.MFD_CLOEXEC)
    t0 = time.perf_counter()
    compare.write_out(fd, size)
    return fd, (time.perf_counter() - t0) * 1e3 / (size / compare.CHUNK)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256, help="megabytes per write")
    ap.add_argument("--rounds", type=int, default=4, help="writes of each kind")
    args = ap.parse_args(argv)
    if args.mb < 1 or args.rounds < 1:
        ap.error("--mb and --rounds must be at least 1")
    if not hasattr(os, "memfd_create"):
        ap.error("needs memfd_create (Linux)")
    size = args.mb * compare.CHUNK
    kept: list[int] = []
    growing, reused = [], []
    try:
        for _ in range(args.rounds):
            fd, ms = written(size)
            kept.append(fd)
            growing.append(ms)
        for i in range(args.rounds):
            os.close(kept[i])
            kept[i] = -1
            kept[i], ms = written(size)
            reused.append(ms)
    finally:
        for fd in kept:
            if fd >= 0:
                os.close(fd)
    print(f"{args.mb} MB per write, ms per MB")
    print(f"  into new memory         {' '.join(f'{ms:.2f}' for ms in growing)}")
    print(f"  into memory just freed  {' '.join(f'{ms:.2f}' for ms in reused)}")
    print(f"  ratio of the medians    {statistics.median(growing) / statistics.median(reused):.1f}x")
    said = {None: "no virtio balloon", True: "a virtio balloon that reports free pages to the host"}
    print(f"  this machine has        {said.get(free_page_reporting(), 'a virtio balloon, not reporting free pages')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
