"""What the lockfile records about a stage: the facts a later build compares.

Nothing volatile goes in a record (no times, durations or absolute paths of
this machine), so the same facts always encode to the same bytes.
"""

from __future__ import annotations

from pivotbuild.structs import struct


@struct(frozen=True, slots=True)
class FileRecord:
    """A dep or out and its content hash.  `kind` is "file", "dir" (the hash of
    the tree's manifest), "glob" (the hash of the sorted match list, with
    `matches` holding each match's record), or "absent".  `executable`: an
    output file that had an execute bit, so checkout gives it one again (a
    directory's manifest says so per file)."""

    path: str
    kind: str
    hash: str
    matches: tuple[FileRecord, ...] = ()
    executable: bool = False


@struct(frozen=True, slots=True)
class ParamRecord:
    """A param a stage read and its canonical JSON value."""

    file: str
    key: str
    value_json: str


@struct(frozen=True, slots=True)
class StageRecord:
    """One stage's last good run."""

    name: str  # the stage's name inside its pipeline
    fingerprint: str  # hash of `facets`, the params and the glob match sets
    command: str  # after interpolation, globs expanded
    deps: tuple[FileRecord, ...]
    outs: tuple[FileRecord, ...]
    params: tuple[ParamRecord, ...]
    # Hashes of the parts of the fingerprint ("shell", "env", "outs"), so a
    # change can be explained precisely.
    facets: tuple[tuple[str, str], ...] = ()


@struct(frozen=True, slots=True)
class LockData:
    """A whole lockfile: records sorted by stage name."""

    stages: tuple[StageRecord, ...] = ()

    def by_name(self) -> dict[str, StageRecord]:
        return {s.name: s for s in self.stages}

    @staticmethod
    def of(records: dict[str, StageRecord]) -> LockData:
        return LockData(tuple(records[name] for name in sorted(records)))
