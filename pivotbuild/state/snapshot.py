"""A stage's inputs and outputs as they are on disk now, hashed through the stat cache."""

from __future__ import annotations

import os
import stat
from operator import attrgetter
from pathlib import Path

from pivotbuild import globs
from pivotbuild.model import Stage, StageId
from pivotbuild.paths import joined
from pivotbuild.state.files import ABSENT_ERRNOS
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.kinds import ABSENT, DIR, FILE, GLOB
from pivotbuild.state.records import FileRecord, ParamRecord
from pivotbuild.state.statcache import StatCache
from pivotbuild.structs import struct

TYPE_CHECKING = False  # (not typing's: kept off the no-op fast path's imports)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping


@struct(frozen=True, slots=True)
class Snapshot:
    """What a stage's decision is made on: its command, facets, params, deps and outs, hashed now."""

    command: str
    facets: tuple[tuple[str, str], ...]
    params: tuple[ParamRecord, ...]
    deps: tuple[FileRecord, ...]
    outs: tuple[FileRecord, ...]  # () when taken without them (`take`)
    fingerprint: str
    expanded_deps: tuple[str, ...]  # deps with globs replaced by their matches


_kind = attrgetter("kind")


def _not_json(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# One C encoder made once, with json.dumps's defaults (the same text:
# fingerprints and run-cache keys hash it), instead of an encoder made per
# call; taken from json's C accelerator itself, so that a build does not
# import `json` (its decoder and scanner: about 1 ms); None on a Python
# without it.
_ENCODER: Callable[[object, int], Iterable[str]] | None
try:
    from _json import encode_basestring_ascii, make_encoder

    _ENCODER = make_encoder(None, _not_json, encode_basestring_ascii, None, ": ", ", ", False, False, True)
except ImportError:  # pragma: no cover - CPython has it
    _ENCODER = None


def json_text(obj: object) -> str:
    """`json.dumps(obj)`, the same text."""
    if _ENCODER is None:  # pragma: no cover - CPython has the accelerator
        import json

        return json.dumps(obj)
    return "".join(_ENCODER(obj, 0))


def file_record(root: Path, path: str, cache: StatCache) -> FileRecord:
    """The record of one path: a file's hash, a directory's manifest hash, or
    absent (also a symlink that leads nowhere, or to itself: what
    `os.path.exists` takes for absent)."""
    return _record_at(joined(root, path), path, cache)


def _record_at(full: str, path: str, cache: StatCache) -> FileRecord:
    """`file_record` of `path`, found at `full`."""
    try:
        st = os.stat(full)
    except OSError as exc:
        if exc.errno not in ABSENT_ERRNOS:
            raise
        return FileRecord(path, ABSENT, "")
    if stat.S_ISDIR(st.st_mode):
        return FileRecord(path, DIR, cache.dir_hash(full))
    return FileRecord(path, FILE, cache.file_hash(full, st))


def glob_record(root: Path, pattern: str, cache: StatCache) -> FileRecord:
    matches = tuple(file_record(root, m, cache) for m in globs.expand(root, pattern))
    listing = "".join(f"{m.hash} {m.path}\n" for m in matches)
    return FileRecord(pattern, GLOB, hash_bytes(listing.encode("utf-8", "surrogateescape")), matches)


def deps_of(
    stage: Stage, root: Path, cache: StatCache, elsewhere: Mapping[str, FileRecord] | None = None
) -> tuple[FileRecord, ...]:
    """The records of the stage's deps; one in `elsewhere` (an output this
    build left on the remote: build/elsewhere.py) is taken from there."""
    return _deps(stage, root, cache, elsewhere, None)


def _deps(
    stage: Stage,
    root: Path,
    cache: StatCache,
    elsewhere: Mapping[str, FileRecord] | None,
    expanded: list[str] | None,
) -> tuple[FileRecord, ...]:
    """`deps_of`, and into `expanded` (unless None) the paths they name, each
    glob's matches in its place.  (One loop: a decision makes one per stage.)"""
    prefix = joined(root, "")
    found = []
    for d in stage.deps:
        path = d.path
        if d.is_glob:
            record = glob_record(root, path, cache)
            if expanded is not None:
                expanded.extend(m.path for m in record.matches)
            found.append(record)
            continue
        if expanded is not None:
            expanded.append(path)
        left = elsewhere.get(path) if elsewhere else None
        found.append(left or _record_at(path if path[:1] == "/" else prefix + path, path, cache))
    return tuple(found)


def outs_of(stage: Stage, root: Path, cache: StatCache) -> tuple[FileRecord, ...]:
    return tuple(file_record(root, o.path, cache) for o in stage.outs)


_facets: dict[object, str] = {}  # shell or env -> its hash: most stages share both


def _facet(value: tuple[str, ...] | tuple[tuple[str, str], ...]) -> str:
    digest = _facets.get(value)
    if digest is None:
        digest = _facets[value] = hash_bytes(json_text(value).encode())
    return digest


PY = "py"  # a `py:` stage's facets: "py UNIT" for each unit of code it reaches (pysource.py)


def py_facets(stage: Stage, root: Path) -> tuple[tuple[str, str], ...]:
    """The source fingerprint of a `py:` stage, a facet per unit of code
    ("py steps.square"); a stage whose code cannot be read (check says why)
    gets one facet saying so, and runs, to fail as the import does."""
    from pivotbuild.pysource import SourceError, fingerprint  # (`ast`: only where a py: stage is decided)

    assert stage.py is not None
    try:
        found = fingerprint(stage.py, root / stage.id.pipeline, root)
    except SourceError as exc:
        return ((PY, hash_bytes(str(exc).encode())),)
    return tuple((f"{PY} {unit}", digest) for unit, digest in found.parts)


# What a snapshot takes from its stage alone, no file read (`take`'s `kept`):
# the stage, its command, facets, params, fingerprint and deps' paths.
Static = tuple[Stage, str, tuple[tuple[str, str], ...], tuple[ParamRecord, ...], str, tuple[str, ...]]


def take(
    stage: Stage,
    root: Path,
    cache: StatCache,
    elsewhere: Mapping[str, FileRecord] | None = None,
    *,
    outs: bool = True,
    kept: dict[StageId, Static] | None = None,
) -> Snapshot:
    """Hash everything a decision about `stage` needs (see `deps_of` for
    `elsewhere`).  Without `outs`, its outputs are not looked at (`outs` is
    empty): the build's decisions hash them only if nothing compared before
    them says why the stage runs (decider.decide's `outs`), and nothing else
    reads them.  `kept` keeps, by stage, what the snapshot takes from the
    stage alone where that is all of it (no glob, no `py:` code): a build
    server decides the same Stage objects build after build."""
    known = kept.get(stage.id) if kept is not None else None
    if known is not None and known[0] is stage:
        return Snapshot(
            command=known[1],
            facets=known[2],
            params=known[3],
            deps=_deps(stage, root, cache, elsewhere, None),
            outs=outs_of(stage, root, cache) if outs else (),
            fingerprint=known[4],
            expanded_deps=known[5],
        )
    expanded: list[str] = []
    deps = _deps(stage, root, cache, elsewhere, expanded)
    command = stage.render_command(expanded) if stage.command is not None else f"py:{stage.py}"
    facets: tuple[tuple[str, str], ...] = (
        ("shell", _facet(stage.shell)),
        ("env", _facet(stage.env)),
        (
            "outs",
            hash_bytes(json_text([(o.path, o.is_dir, o.cache, o.persist, o.incremental) for o in stage.outs]).encode()),
        ),
    )
    if stage.py is not None:
        facets = (*facets, *py_facets(stage, root))
    # (Most stages have no params and no globs: no comprehension is run for them.)
    params = tuple([ParamRecord(p.file, p.key, p.value_json) for p in stage.params]) if stage.params else ()
    globbed = GLOB in map(_kind, deps)
    glob_sets = sorted([(d.path, [m.path for m in d.matches]) for d in deps if d.kind == GLOB]) if globbed else []
    listed = [(p.file, p.key, p.value_json) for p in params] if params else []
    material = json_text([command, facets, listed, glob_sets])
    fingerprint = hash_bytes(material.encode("utf-8", "surrogateescape"))
    expanded_deps = tuple(expanded)
    if kept is not None and stage.py is None and not globbed and not stage.has_globs:
        kept[stage.id] = (stage, command, facets, params, fingerprint, expanded_deps)
    return Snapshot(
        command=command,
        facets=facets,
        params=params,
        deps=deps,
        outs=outs_of(stage, root, cache) if outs else (),
        fingerprint=fingerprint,
        expanded_deps=expanded_deps,
    )
