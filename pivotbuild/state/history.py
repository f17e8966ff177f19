"""Build history: one JSON line per build in `<root>/.pivot/history.jsonl`.

Used by `pivotbuild history`, and for past stage durations (the scheduler's
critical path and the live display's estimate).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from typing import Any

HISTORY = "history.jsonl"
_KEEP_BYTES = 4 << 20  # trim to the newer half once the file passes this


def append(state_dir: Path, entry: Mapping[str, Any]) -> None:
    path = state_dir / HISTORY
    state_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, sort_keys=True) + "\n"
    with path.open("a+b") as f:
        # A build killed mid-write leaves a torn last line: start on a fresh one.
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
    if path.stat().st_size > _KEEP_BYTES:
        _trim(path)


def _trim(path: Path) -> None:
    from pivotbuild.state_files import write_atomic

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    write_atomic(path, "".join(lines[len(lines) // 2 :]).encode("utf-8"))


def read(state_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Past builds, oldest first (the last `limit` of them)."""
    try:
        lines = (state_dir / HISTORY).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines[-limit:] if limit else lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def durations(state_dir: Path, builds: int = 20) -> dict[str, float]:
    """The most recent run time of each stage that ran in the last `builds` builds."""
    found: dict[str, float] = {}
    for entry in read(state_dir, builds):
        for name, info in (entry.get("stages") or {}).items():
            if (
                isinstance(info, dict)
                and info.get("status") == "ran"
                and isinstance(info.get("duration_s"), (int, float))
            ):
                found[name] = float(info["duration_s"])
    return found
