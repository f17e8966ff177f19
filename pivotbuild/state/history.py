"""Build history: one JSON line per build in `<root>/.pivot/history.jsonl`.

Used by `pivotbuild history`, and for past stage durations (the scheduler's
critical path and the live display's estimate).  The history is advisory: a
damaged line (a crash cut it short, a bit flipped) is skipped, counted so
the reader can say so once, and dropped when a build that saw it appends.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping
    from pathlib import Path
    from typing import Any

HISTORY = "history.jsonl"
_KEEP_BYTES = 4 << 20  # trim to the newer half once the file passes this
RECENT = 20  # builds whose stage durations the scheduler uses


def record_build(
    state_dir: str | Path,
    *,
    started: str,
    duration_s: float,
    targets: list[str],
    result: str,
    counts: tuple[int, int, int],
    stages: Mapping[str, Mapping[str, Any]],
    repair: bool = False,
) -> None:
    """Append one build's entry: when it started (ISO 8601, UTC), how long it
    took, its targets, its result ("ok", "failed" or "interrupted"), how many
    stages (ran, were up to date, failed), and each stage that did not skip.
    The one writer of build entries, for the no-op fast path and the build alike."""
    ran, skipped, failed = counts
    entry = {
        "started": started,
        "duration_s": round(duration_s, 3),
        "targets": targets,
        "result": result,
        "ran": ran,
        "skipped": skipped,
        "failed": failed,
        "stages": stages,
    }
    append(state_dir, entry, repair=repair)


def now_stamp() -> str:
    """The current time as build entries record it (ISO 8601, UTC, seconds)."""
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def append(state_dir: str | Path, entry: Mapping[str, Any], *, repair: bool = False) -> None:
    """Add `entry`; with `repair`, first drop every damaged line (a reader saw
    some), so a damaged file is mended by the next build that writes."""
    path = os.path.join(state_dir, HISTORY)
    os.makedirs(state_dir, exist_ok=True)
    line = _dumps(entry) + "\n"
    if repair:
        _rewrite(path, _good_lines(path), line)
        return
    with open(path, "a+b") as f:
        # A build killed mid-write leaves a torn last line: start on a fresh one.
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
    if os.stat(path).st_size > _KEEP_BYTES:
        lines = _good_lines(path)
        _rewrite(path, lines[len(lines) // 2 :])


def _dumps(entry: Mapping[str, Any]) -> str:
    """`json.dumps(entry, sort_keys=True)`, by json's own C encoder
    (`_json.make_encoder`, as `json.dumps` makes it), made here: importing
    json imports `re`, which the no-op fast path otherwise never needs, and a
    build may not have imported it (a build server's did not: its history line
    spelled in Python took 0.6 ms)."""
    try:
        from _json import encode_basestring_ascii, make_encoder

        encoder = make_encoder({}, _not_json, encode_basestring_ascii, None, ": ", ", ", True, False, True)
    except (ImportError, TypeError):  # (another Python's: json's own way)
        import json

        return json.dumps(entry, sort_keys=True)
    return "".join(encoder(entry, 0))


def _not_json(value: object) -> object:
    """What json.dumps says of a value it cannot spell."""
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _good_lines(path: str) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return []
    return [line + b"\n" for line in blob.splitlines() if _entry(line) is not None]


def _rewrite(path: str, lines: list[bytes], extra: str = "") -> None:
    from pathlib import Path

    from pivotbuild.state.files import write_atomic

    write_atomic(Path(path), b"".join(lines) + extra.encode("utf-8"))


class Read:
    """Past builds, oldest first, and how many damaged lines were skipped among
    the lines read.  (A plain class: the no-op fast path does not import dataclasses.)"""

    __slots__ = ("entries", "skipped")

    def __init__(self, entries: list[dict[str, Any]], skipped: int) -> None:
        self.entries = entries
        self.skipped = skipped


def damage_warning(skipped: int) -> str:
    """The one warning about `skipped` damaged lines, for a build (which mends the file)."""
    lines = "line" if skipped == 1 else "lines"
    return f".pivot/{HISTORY}: skipped {skipped} damaged {lines}; this build's entry replaces the file without them"


class Recent:
    """What `load(state_dir, RECENT)` reads, for a long-lived engine that asks
    before every build (watch mode): the history is read whole once, then only
    the lines appended since (by this process's builds or another's); whole
    again if the file was replaced or cut short."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / HISTORY
        self._at: tuple[int, int] | None = None  # (inode, bytes read so far)
        self._last: list[dict[str, Any] | None] = []  # the last RECENT lines' entries (None: damaged)

    def load(self) -> Read:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                resume = self._at is not None and self._at[0] == st.st_ino and self._at[1] <= st.st_size
                offset = self._at[1] if resume and self._at is not None else 0
                f.seek(offset)
                data = f.read()
        except OSError:
            self._at, self._last = None, []
            return Read([], 0)
        whole = data.rfind(b"\n") + 1  # (a line still being written is read next time)
        last = self._last if resume else []
        last.extend(_entry(line) for line in data[:whole].splitlines() if line.strip())
        self._last = last[-RECENT:]
        self._at = (st.st_ino, offset + whole)
        return Read([e for e in self._last if e is not None], sum(e is None for e in self._last))


def read(state_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Past builds, oldest first (the last `limit` of them)."""
    return load(state_dir, limit).entries


def load(state_dir: Path, limit: int | None = None) -> Read:
    """The last `limit` lines (all by default): their entries, and how many of
    them were damaged (not UTF-8 JSON, or not an entry) and skipped."""
    try:
        lines = (state_dir / HISTORY).read_bytes().splitlines()
    except OSError:
        return Read([], 0)
    entries = []
    skipped = 0
    for line in lines[-limit:] if limit else lines:
        entry = _entry(line)
        if entry is not None:
            entries.append(entry)
        elif line.strip():
            skipped += 1
    return Read(entries, skipped)


# The fields a build writes, and the types that make an entry usable; an entry
# may lack any of them.
_FIELDS: dict[str, tuple[type, ...]] = {
    "started": (str,),
    "duration_s": (int, float),
    "targets": (list,),
    "result": (str,),
    "ran": (int,),
    "skipped": (int,),
    "failed": (int,),
    "stages": (dict,),
}


def _entry(line: bytes) -> dict[str, Any] | None:
    """The entry on one line; None for a damaged line (a bit flipped, a line cut short by a crash)."""
    try:
        entry = _loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError too
        return None
    if not isinstance(entry, dict):
        return None
    for key, types in _FIELDS.items():
        value = entry.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return None
    if not all(isinstance(t, str) for t in entry.get("targets") or ()):
        return None
    return entry


_scanner: list[Callable[[str, int], tuple[Any, int]]] = []  # json's C scanner, made on first use


def _loads(text: str) -> Any:
    """`json.loads(text)`, by json's C scanner alone: every build with work
    reads the history's last lines, and `json` itself (its decoder, encoder
    and scanner in Python) costs about 1 ms to import.  ValueError if `text`
    is not one JSON value (json's own, once a line is damaged)."""
    if not _scanner:
        try:
            from _json import make_scanner
        except ImportError:  # pragma: no cover - CPython has the accelerator
            import json

            return json.loads(text)
        from types import SimpleNamespace

        # What the scanner asks of the decoder it serves: json.loads's defaults.
        constants = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}
        decoding = SimpleNamespace(
            strict=True,
            object_hook=None,
            object_pairs_hook=None,
            parse_float=float,
            parse_int=int,
            parse_constant=constants.__getitem__,
        )
        _scanner.append(make_scanner(decoding))  # type: ignore[arg-type]  # (typeshed: a json decoder)
    blank = " \t\n\r"  # (json's whitespace)
    try:
        value, end = _scanner[0](text, len(text) - len(text.lstrip(blank)))
    except StopIteration:
        raise ValueError("expecting a value") from None
    except SystemError:  # (3.11's scanner reports a damaged line through json.decoder, if imported)
        import json

        return json.loads(text)
    if text[end:].strip(blank):
        raise ValueError("extra data")
    return value


def durations(state_dir: Path, wanted: Collection[str], limit: int = RECENT) -> tuple[dict[str, float], int]:
    """The most recent run time of each of `wanted` that ran in the last
    `limit` builds, and how many of those lines are damaged.  Read from the
    end of the file, newest first, parsing lines only until every one is
    found: an incremental build parses its last build or two, not twenty
    (each of which may list every stage of the project); the rest of the
    last `limit` lines are only looked at (`_torn`), and the history's older
    lines are never read at all."""
    found: dict[str, float] = {}
    skipped = 0
    left = set(wanted)
    lines = _tail(state_dir / HISTORY, limit)
    for n, line in enumerate(reversed(lines)):
        if not left:  # the older lines are only looked at: one cut short (a crash) or not a JSON object is damaged
            skipped += sum(map(_torn, lines[: len(lines) - n]))
            break
        entry = _entry(line)
        if entry is None:
            skipped += bool(line.strip())
            continue
        for name, info in (entry.get("stages") or {}).items():
            if name in left and (took := _ran_for(info)) is not None:
                found[name] = took
                left.discard(name)
    return found, skipped


_CHUNK = 1 << 16


def _torn(line: bytes) -> bool:
    """Is `line`, unparsed, plainly not an entry (cut short, or not a JSON object)?"""
    text = line.strip()
    return bool(text) and not (text.startswith(b"{") and text.endswith(b"}"))


def _tail(path: Path, limit: int) -> list[bytes]:
    """The last `limit` lines of the file at `path` (as `splitlines` gives
    them, a last line without its newline included), read from its end."""
    try:
        with open(path, "rb") as f:
            at = f.seek(0, os.SEEK_END)
            data = b""
            while at > 0 and data.count(b"\n") <= limit:
                step = min(_CHUNK, at)
                at -= step
                f.seek(at)
                data = f.read(step) + data
    except OSError:
        return []
    lines = data.splitlines()
    if at > 0:
        lines = lines[1:]  # (the first is cut: it began before what was read)
    return lines[-limit:]


def durations_in(past: Read, wanted: Collection[str]) -> dict[str, float]:
    """The most recent run time of each of `wanted` that ran in the `past`
    builds: newest first, until every one is found (each entry looked up by
    name: the first build's lists every stage of the project)."""
    found: dict[str, float] = {}
    left = set(wanted)
    for entry in reversed(past.entries):
        if not left:
            break
        stages = entry.get("stages")
        if not isinstance(stages, dict):
            continue
        for name in [n for n in left if n in stages] if len(left) < len(stages) else [n for n in stages if n in left]:
            if (took := _ran_for(stages[name])) is not None:
                found[name] = took
                left.discard(name)
    return found


def _ran_for(info: object) -> float | None:
    """How long a stage ran, as an entry's `stages` has it; None if it did not run there."""
    if isinstance(info, dict) and info.get("status") == "ran" and isinstance(info.get("duration_s"), (int, float)):
        return float(info["duration_s"])
    return None
