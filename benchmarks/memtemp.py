#!/usr/bin/env python3
"""What a build pays, on this machine, for memory its kernel has not used lately.

    python3 benchmarks/memtemp.py [--mb 256] [--rounds 4] [--dir DIR]

Writes --mb megabytes into a new file --rounds times over (each write grows
the page cache, as a clean build does, or an incremental build that keeps its
old outputs), then removes one of those files and writes the same amount again
at once (into the memory just freed, as a build that overwrites its outputs
does), and prints the milliseconds per MB of each write.

On bare metal both cost the same: a page cache page is not even zeroed before
it is written. On a VM whose host takes back the memory the guest leaves free
(virtio-balloon free page reporting: a free page the guest has not reused for
a few seconds is handed back, and the host must find it again on the next
touch), growing writes can cost many times a reused one: about 5 ms per MB
against 0.5 on this project's machines, when no memory was freed moments
before. It also says whether such a balloon is there. See the `--warm` option
of compare.py, which gives every tool's build the same memory to start from.

A benchmark, not a test (benchmarks/test_memtemp_smoke.py runs it small).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 1 << 20
REPORTING = 5  # VIRTIO_BALLOON_F_REPORTING, a bit of the device's features


def free_page_reporting() -> bool | None:
    """Whether a virtio balloon here reports free pages to its host (None:
    no virtio balloon found)."""
    found = None
    for dev in Path("/sys/bus/virtio/devices").glob("*"):
        try:
            if int((dev / "device").read_text(), 16) != 5:  # a balloon
                continue
            features = (dev / "features").read_text().strip()
        except (OSError, ValueError):
            continue
        found = len(features) > REPORTING and features[REPORTING] == "1"
    return found


def write(path: Path, size: int, block: bytes) -> float:
    """Milliseconds per MB to write `size` bytes into `path` (made afresh)."""
    t0 = time.perf_counter()
    with path.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(block)
    return (time.perf_counter() - t0) * 1e3 / (size / CHUNK)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256, help="megabytes per write")
    ap.add_argument("--rounds", type=int, default=4, help="growing writes")
    ap.add_argument("--dir", type=Path, help="where to write (default: a temporary directory here)")
    args = ap.parse_args(argv)
    if args.mb < 1 or args.rounds < 1:
        ap.error("--mb and --rounds must be at least 1")
    size = args.mb * CHUNK
    block = os.urandom(CHUNK)
    with tempfile.TemporaryDirectory(prefix="pvmemtemp-", dir=args.dir or Path.cwd()) as tmp:
        base = Path(tmp)
        growing = [write(base / f"grow{i}", size, block) for i in range(args.rounds)]
        reused = []
        for i in range(args.rounds):
            (base / f"grow{i}").unlink()
            reused.append(write(base / f"again{i}", size, block))
    reporting = free_page_reporting()
    print(f"{args.mb} MB per write, ms per MB")
    print(f"  growing the page cache  {' '.join(f'{ms:.2f}' for ms in growing)}")
    print(f"  into memory just freed  {' '.join(f'{ms:.2f}' for ms in reused)}")
    ratio = statistics.median(growing) / statistics.median(reused)
    print(f"  ratio of the medians    {ratio:.1f}x")
    said = {None: "no virtio balloon", True: "a virtio balloon that reports free pages to the host"}
    print(f"  this machine has        {said.get(reporting, 'a virtio balloon, not reporting free pages')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
