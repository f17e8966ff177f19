#!/usr/bin/env python3
"""How fast watch mode answers an edit, beside the same rebuild from the command line.

    python3 benchmarks/watch_latency.py                      # 400 stages (20 x 20), small outputs, 15 edits
    python3 benchmarks/watch_latency.py --width 50 --depth 20 --edits 30

The project is compare.py's lattice (`--shape small`: `md5sum` stages).  One
`pivotbuild -w --json` runs in it; each round appends a line to one source
of the middle layer (as compare.py's incremental build does) and measures,
from the moment the edit is written:

  start   until the edited source's own stage starts (its `stage_started`
          event read from the watcher's stdout): the edit-to-stage time.
          (Watch mode shows a build's `build_started` only once something
          happens in it, so that event cannot time the build's start.)
  build   until that build's `build_finished` event: the whole rebuild
  engine  the rebuild's own `duration_s`, as the engine timed it

Then, with the watcher stopped, the same kind of edit rebuilt by running
`pivotbuild` from the command line (`cli`: its wall time, interpreter start,
imports and state loading included), in the same project.  It prints the
median and the 90th percentile of each.  No timing is asserted anywhere:
benchmarks/test_watch_latency_smoke.py only runs it small.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import compare


class Watcher:
    """A `pivotbuild -w --json` in `root`, its events read by a thread."""

    def __init__(self, root: Path, debounce: int) -> None:
        cmd = [*compare.pivotbuild_command(), "-w", "--json", "-j2", "--debounce", str(debounce)]
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: queue.Queue[tuple[float, dict[str, object]]] = queue.Queue()
        self.errors: list[str] = []
        self.readers = [threading.Thread(target=self._read, daemon=True), threading.Thread(target=self._errors)]
        for reader in self.readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put((time.perf_counter(), json.loads(line)))

    def _errors(self) -> None:
        assert self.proc.stderr is not None
        self.errors.extend(self.proc.stderr)

    def until(self, match: dict[str, object], timeout: float = 120.0) -> float:
        """When the first event holding `match` was read (waiting for it)."""
        return self.event(match, timeout)[0]

    def event(self, match: dict[str, object], timeout: float = 120.0) -> tuple[float, dict[str, object]]:
        """The first event holding `match`, and when it was read (waiting for it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, event = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                said = "".join(self.errors[-20:])
                raise SystemExit(f"watch_latency.py: no {match} within {timeout}s; pivotbuild said:\n{said}") from None
            if all(event.get(k) == v for k, v in match.items()):
                return at, event

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        for reader in self.readers:
            reader.join(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def measure(root: Path, width: int, depth: int, edits: int, debounce: int) -> dict[str, list[float]]:
    layer = depth // 2
    watcher = Watcher(root, debounce)
    try:
        watcher.until({"event": "watching"})
        times: dict[str, list[float]] = {"start": [], "build": [], "engine": []}
        for i in range(edits):
            k = (i * 7) % width
            compare.edit(root, width, depth, i)
            t0 = time.perf_counter()
            times["start"].append(watcher.until({"event": "stage_started", "stage": f"s{layer}_{k}"}) - t0)
            at, finished = watcher.event({"event": "build_finished"})
            times["build"].append(at - t0)
            times["engine"].append(float(finished["duration_s"]))  # type: ignore[arg-type]
            watcher.until({"event": "watching"})
    finally:
        watcher.stop()
    clis = []
    for i in range(edits, 2 * edits):
        compare.edit(root, width, depth, i)
        clis.append(compare.timed([*compare.pivotbuild_command(), "-j2", "-s"], root))
    times["cli"] = clis
    return times


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=20)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--edits", type=int, default=15)
    ap.add_argument("--debounce", type=int, default=50, help="watch mode's --debounce (ms)")
    ap.add_argument("--dir", type=Path, help="build here (made afresh) instead of in a temporary directory")
    args = ap.parse_args(argv)
    stages = compare.lattice(args.width, args.depth)
    with tempfile.TemporaryDirectory(prefix="pb-watch-") as tmp:
        root = (args.dir or Path(tmp)) / "project"
        compare.generate(root, stages, "pivotbuild", "small")
        compare.timed([*compare.pivotbuild_command(), "-j2", "-s"], root)  # the clean build, not measured
        times = measure(root, args.width, args.depth, args.edits, args.debounce)
    print(f"{len(stages)} stages ({args.width} x {args.depth}, small outputs), -j2, --debounce {args.debounce}")
    print(f"{'seconds':<44}{'median':>10}{'p90':>10}")
    labels = {
        "start": "watch: edit -> its stage starts",
        "build": "watch: edit -> rebuild finished",
        "engine": "watch: the rebuild itself (engine's time)",
        "cli": "command line: the same rebuild (wall time)",
    }
    for key, label in labels.items():
        values = sorted(times[key])
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"{label:<44}{statistics.median(values):>10.3f}{p90:>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
