#!/usr/bin/env python3
"""What creating a file costs here, and what that does to starting a stage.

    python3 benchmarks/creation.py [--dir DIR] [--files 1000] [--rounds 5]

pivotbuild starts a plain stage (`md5sum A B > OUT`) with posix_spawn, and
its output file is created by the build loop just before (it was created in
the spawned child, while the loop waited for it: slower still, the child
first waiting for a core; spawn._opened).  So whatever the file system
charges for a new file is paid in the loop, one stage after another; ninja
and make pay it in each stage's `sh`, side by side.  This prints, in
microseconds (medians):

  create      a new empty file, in a directory whose files were created and
              removed the round before (`--rounds` rounds, one line each;
              the first round follows whatever was removed before it):
              ext4 without a journal skips every inode freed in the last 60
              seconds (6 minutes while its inode table block is dirty) when
              it picks one for a new file, reading each one's deletion time
              (`recently_deleted` in fs/ext4/ialloc.c), so the cost grows
              with each round's removals
  spawn       posix_spawn of md5sum, its output /dev/null
  spawn+new   the same, its output a new file in the churned directory
  spawn+trunc the same, its output an existing file truncated (`>` on a file
              whose data is on disk: its blocks are freed, and with the
              `discard` mount option and no journal, the discard is waited
              for)

and whether the file system under DIR keeps a journal (`/proc/fs/jbd2`).
Quote ratios: the figures depend on the removals of the last minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _create(directory: str, n: int) -> list[float]:
    times = []
    for i in range(n):
        path = os.path.join(directory, f"{i}.out")
        t = time.perf_counter()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
        times.append(time.perf_counter() - t)
    return times


def _remove_all(directory: str, n: int) -> None:
    for i in range(n):
        os.unlink(os.path.join(directory, f"{i}.out"))


def _spawn(program: str, output: tuple[str, int] | None, devnull: int) -> float:
    actions: list[tuple[object, ...]] = [(os.POSIX_SPAWN_DUP2, devnull, 0)]
    if output is None:
        actions.append((os.POSIX_SPAWN_DUP2, devnull, 1))
    else:
        actions.append((os.POSIX_SPAWN_OPEN, 1, output[0], output[1], 0o644))
    t = time.perf_counter()
    pid = os.posix_spawn(program, [program, os.devnull], dict(os.environ), file_actions=actions)
    took = time.perf_counter() - t
    os.waitpid(pid, 0)
    return took


def journal(directory: str) -> str:
    """'yes', 'no' or 'unknown': does the ext4 file system under `directory` keep a journal?"""
    try:
        st = os.stat(directory)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                major, minor = (int(x) for x in fields[2].split(":"))
                if os.makedev(major, minor) != st.st_dev:
                    continue
                kind = fields[fields.index("-") + 1]
                if kind != "ext4":
                    return f"unknown ({kind})"
                source = os.path.basename(fields[fields.index("-") + 2])
                return "yes" if any(name.startswith(source) for name in os.listdir("/proc/fs/jbd2")) else "no"
    except (OSError, ValueError, StopIteration):
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="where to work (default: a temporary directory under /tmp)")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    program = shutil.which("md5sum") or shutil.which("true")
    if program is None:
        raise SystemExit("neither md5sum nor true is on PATH")
    work = tempfile.mkdtemp(prefix="pivot-creation-", dir=args.dir or "/tmp")
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        print(f"{work}: a journal: {journal(work)}; {args.files} files per round (microseconds, medians)")
        churned = os.path.join(work, "churned")
        os.mkdir(churned)
        n = args.files
        for r in range(args.rounds):
            print(f"  create, round {r + 1:<3}{_median_us(_create(churned, n)):10.0f}")
            _remove_all(churned, n)
        spawns = max(n // 5, 1)
        plain = [_spawn(program, None, devnull) for _ in range(spawns)]
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        new = [_spawn(program, (os.path.join(churned, f"s{i}.out"), flags), devnull) for i in range(spawns)]
        os.sync()  # (their blocks allocated, as an output's are once written back)
        trunc = [_spawn(program, (os.path.join(churned, f"s{i}.out"), flags), devnull) for i in range(spawns)]
        print(f"  spawn             {_median_us(plain):10.0f}")
        print(f"  spawn+new         {_median_us(new):10.0f}")
        print(f"  spawn+trunc       {_median_us(trunc):10.0f}")
    finally:
        os.close(devnull)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
