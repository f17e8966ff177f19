"""Damaged state files: every file under `.pivot/` (but cache objects) and each
lockfile, with a bit flipped or cut short, costs a warning and some rework,
never a failed build, a traceback or a wrong output.

A real project (two pipelines, one `include`d; a matrix, a directory output
and a glob dep; a remote in config.toml; a run cache; a journal; pending
--no-commit results) is built once per test session, and each test damages
one file of a copy at seeded positions.  The next build must exit 0 with the
outputs its inputs give, say so in one warning naming the file (for the files
a build reads and can tell are damaged), and the build after it must run
nothing and warn about nothing.

PIVOT_DAMAGE_POSITIONS=N tries N bit flips and N truncations per file kind
(default 1 of each); docs/reliability.md has the figures of a larger run.
"""

from __future__ import annotations

import os
import random
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Project

from pivotbuild.cache.runcache import decode_entry, log_rel, stage_key
from pivotbuild.cache.runlog import LOG, read_log
from pivotbuild.model import StageId
from pivotbuild.remote import config
from pivotbuild.state import framing, journal, lockfile

MAIN = """\
include sub/
default report extra

stage gen:
    deps: src/in.txt
    outs: data/gen.txt
    run: tr a-z A-Z < $< > $@

stage split:
    matrix: part=1 2
    deps: data/gen.txt
    outs: data/part-${part}.txt
    run: (cat $<; echo ${part}) > $@

stage tree:
    deps: data/part-1.txt data/part-2.txt
    outs: tree/
    run: mkdir -p $@ && cp data/part-1.txt data/part-2.txt $@

stage report:
    deps: tree/ sub/out.txt src/*.txt
    outs: report.txt
    run: cat tree/* sub/out.txt > $@

stage extra:
    deps: src/extra.txt
    outs: extra.txt
    run: cp $< $@
"""

SUB = """\
stage make:
    deps: in.txt
    outs: out.txt
    run: rev < $< > $@
"""


def expected_outputs(root: Path) -> dict[str, str]:
    """What the stages make of the inputs now on disk, worked out here, not by pivotbuild."""
    gen = (root / "src/in.txt").read_text().upper()
    part = {n: gen + f"{n}\n" for n in (1, 2)}
    out = "".join(line[::-1] + "\n" for line in (root / "sub/in.txt").read_text().splitlines())
    return {
        "data/gen.txt": gen,
        "data/part-1.txt": part[1],
        "data/part-2.txt": part[2],
        "tree/part-1.txt": part[1],
        "tree/part-2.txt": part[2],
        "sub/out.txt": out,
        "report.txt": part[1] + part[2] + out,
        "extra.txt": (root / "src/extra.txt").read_text(),
    }


def outputs(root: Path) -> dict[str, str | None]:
    return {rel: (root / rel).read_text() if (root / rel).is_file() else None for rel in expected_outputs(root)}


@dataclass(frozen=True)
class Built:
    """Snapshots of the project, all built at `work` (so the plan and the seal,
    which hold absolute paths, are for it); a test copies one back there."""

    work: Path
    committed: Path  # everything recorded, sealed, with a run cache and a remote configured
    pending: Path  # the same after `--no-commit extra` with src/extra.txt changed


def _run_ok(p: Project, *args: str) -> None:
    r = p.run(*args)
    assert r.code == 0, r.err


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("damaged")
    work = base / "work"
    (work / ".pivot").mkdir(parents=True)
    p = Project(work)
    p.write("Pivotfile", MAIN)
    p.write("sub/Pivotfile", SUB)
    p.write("src/in.txt", "hello\nworld\n")
    p.write("sub/in.txt", "abc\n")
    p.write("src/extra.txt", "x\n")
    _run_ok(p)
    p.write("src/extra.txt", "y\n")  # so the run cache holds extra's outputs for "y" as well as "x"
    _run_ok(p)
    p.write("src/extra.txt", "x\n")
    _run_ok(p)
    _run_ok(p, "remote", "add", "--default", "shared", str(base / "remote"))
    _run_ok(p)
    assert (work / ".pivot/seal").is_file() and (work / "sub/Pivotfile.lock").is_file()
    assert len(_frame_ends((work / ".pivot/statcache").read_bytes())) > 2  # (a cut may fall between frames)
    committed = base / "committed"
    shutil.copytree(work, committed, symlinks=True)
    p.write("src/extra.txt", "y\n")
    _run_ok(p, "--no-commit", "extra")
    assert (work / ".pivot/pending").is_file()
    pending = base / "pending"
    shutil.copytree(work, pending, symlinks=True)
    return Built(work, committed, pending)


def _frame_ends(blob: bytes) -> set[int]:
    """Where the frames of a journal (or pending file) end: cutting it there loses
    whole entries, which no reader can tell from a shorter file."""
    ends, pos = {0}, 0
    while pos + framing.HEADER.size <= len(blob):
        n = framing.HEADER.unpack_from(blob, pos)[3]
        pos += framing.HEADER.size + n + framing.CHECKSUM
        ends.add(pos)
    return ends


def _line_ends(blob: bytes) -> set[int]:
    return {0} | {i + 1 for i, b in enumerate(blob) if b == ord("\n")}


def _write_journal(work: Path) -> None:
    """What a build killed just after its stages finished leaves behind."""
    records = lockfile.read(work / "Pivotfile.lock").stages
    (work / ".pivot/journal").write_bytes(b"".join(journal.frame(r) for r in records))


def _keep_config(work: Path) -> None:
    """What the first build with work after `remote add` leaves: config.toml read, and kept."""
    assert config.load(work).remotes
    assert (work / ".pivot/config.parsed").is_file()


def _damaged_run_entry(work: Path) -> None:
    """Make the next build look up extra's run-cache entry for "y" (which is then damaged)."""
    (work / "src/extra.txt").write_text("y\n")


def _extra_y_entry(work: Path) -> str:
    """The run-cache log holding extra's entry for "y" (its other input)."""
    return _extra_y_name(work)[0]


def _extra_y_name(work: Path) -> tuple[str, str]:
    """The run-cache log holding extra's entry for "y", and the entry's name."""
    key = stage_key(StageId("", "extra"))
    (record,) = [r for r in lockfile.read(work / "Pivotfile.lock").stages if r.name == "extra"]
    log = work / ".pivot/cache" / log_rel(key[:2])
    for name, entry in read_log(log.read_bytes())[0].items():
        if name.startswith(f"{key}-") and decode_entry(entry) != record.outs:
            return log.relative_to(work).as_posix(), name
    raise AssertionError("no run-cache entry for extra's other input")


def _read_lazily(name: str, original: bytes, at: int, how: str) -> bool | None:
    """Damage in the run-cache log: a build looks for the name it wants in
    the log's bytes and checks that frame alone (runlog.frame_of).  It must
    warn if the damage is in that frame (a bit flipped anywhere but in its
    name, which makes the entry a miss; or the frame cut short after its
    name); elsewhere (another entry, checked when a build uses it, or by gc
    and push) it may not notice.  `name`: the entry the build looks up."""
    pos, used = 0, (0, 0)
    while pos < len(original):
        length = framing.HEADER.unpack_from(original, pos)[3]
        end = pos + framing.HEADER.size + length + framing.CHECKSUM
        if LOG.loads(original[pos + framing.HEADER.size : end - framing.CHECKSUM])[0] == name:
            used = (pos, end)  # (the last frame of a name is its entry)
        pos = end
    named = original.index(name.encode(), used[0])
    if how == "cut":
        return True if named + len(name) <= at < used[1] else None
    return True if used[0] <= at < used[1] and not named <= at < named + len(name) else None


@dataclass(frozen=True)
class Kind:
    """One kind of state file: where it is, and whether a build must warn about it."""

    path: str | Callable[[Path], str]  # relative to the project, or found in it
    # "always"; "cut" (unless cut at an entry boundary); "toml" (if it no longer parses); "never" (not read,
    # or read past without a word)
    warns: str
    pending: bool = False  # damaged in the snapshot with pending results
    prepare: Callable[[Path], None] | None = None  # before damaging (puts the file there)
    then: Callable[[Path], None] | None = None  # after damaging, before the build
    ends: Callable[[bytes], set[int]] = _frame_ends
    high_bit: bool = False  # text the build reads: flip a high bit, so the damage shows
    lazily: bool = False  # a log whose frames a build checks only when it uses them (see _read_lazily)


KINDS = {
    "lockfile": Kind("Pivotfile.lock", "always"),
    "sub-lockfile": Kind("sub/Pivotfile.lock", "always"),
    "journal": Kind(".pivot/journal", "cut", prepare=_write_journal),
    "pending": Kind(".pivot/pending", "cut", pending=True),
    # (frames appended by each build: cut at a frame's end, it simply holds fewer)
    "statcache": Kind(".pivot/statcache", "cut"),
    "sub-statcache": Kind("sub/.pivot/statcache", "cut"),
    "plan": Kind(".pivot/plan", "always"),
    "seal": Kind(".pivot/seal", "always"),
    "history": Kind(".pivot/history.jsonl", "cut", ends=_line_ends, high_bit=True),
    "config": Kind(".pivot/config.toml", "toml"),
    # (config.toml parsed again, without a word, by a build with work: only such a build reads the config)
    "config-parsed": Kind(".pivot/config.parsed", "never", prepare=_keep_config, then=_damaged_run_entry),
    # (cut at an entry's end, the log simply holds fewer: no reader can tell)
    "run-cache-log": Kind(_extra_y_entry, "cut", then=_damaged_run_entry, lazily=True),
    "build.lock": Kind(".pivot/build.lock", "never"),
    "gitignore": Kind(".pivot/.gitignore", "never"),
    "sub-pipeline-state": Kind("sub/.pivot/pipeline-state", "never"),
}

POSITIONS = int(os.environ.get("PIVOT_DAMAGE_POSITIONS", "1"))
CASES = [(kind, how, i) for kind in KINDS for how in ("flip", "cut") for i in range(POSITIONS)]


def _damage(blob: bytes, how: str, rng: random.Random, high_bit: bool) -> tuple[bytes, int]:
    if how == "cut":
        at = rng.randrange(len(blob))  # never the whole file
        return blob[:at], at
    at = rng.randrange(len(blob))
    bit = 7 if high_bit else rng.randrange(8)
    damaged = bytearray(blob)
    damaged[at] ^= 1 << bit
    return bytes(damaged), at


def _expect_warning(kind: Kind, how: str, original: bytes, damaged: bytes, at: int) -> bool | None:
    """Must the build warn (True), must it not (False), or may it either way (None)?"""
    if kind.warns == "always":
        return True
    if kind.warns == "never":
        return False
    if kind.warns == "cut":
        return how == "flip" or at not in kind.ends(original)
    try:  # config.toml, which the user edits: damage that leaves valid TOML may go unnoticed
        tomllib.loads(damaged.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True
    return None


@pytest.mark.parametrize(("name", "how", "i"), CASES, ids=[f"{k}-{h}{i}" for k, h, i in CASES])
def test_a_damaged_state_file_costs_one_warning_and_some_rework(built: Built, name: str, how: str, i: int) -> None:
    kind = KINDS[name]
    work = built.work
    shutil.rmtree(work)
    shutil.copytree(built.pending if kind.pending else built.committed, work, symlinks=True)
    if kind.prepare is not None:
        kind.prepare(work)
    rel = kind.path if isinstance(kind.path, str) else kind.path(work)
    original = (work / rel).read_bytes()
    used = _extra_y_name(work)[1] if kind.lazily else ""
    rng = random.Random(f"{name}/{how}/{i}")
    damaged, at = _damage(original, how, rng, kind.high_bit)
    (work / rel).write_bytes(damaged)
    if kind.then is not None:
        kind.then(work)
    p = Project(work)

    first = p.run()
    where = f"{rel} {how} at byte {at}"
    assert first.code == 0, f"{where}: {first.err}"
    assert "Traceback" not in first.err, where
    assert outputs(work) == expected_outputs(work), where
    warnings = [line for line in first.err.splitlines() if line.startswith("pivotbuild: warning:")]
    expect = _expect_warning(kind, how, original, damaged, at)
    if kind.lazily:
        expect = _read_lazily(used, original, at, how)
    if expect:
        assert len(warnings) == 1 and rel in warnings[0], f"{where}: {first.err}"
    elif expect is False:
        assert warnings == [], f"{where}: {first.err}"
    if name == "config" and expect:
        assert "(at " in warnings[0], warnings[0]  # where in the file to look: a line and column, or the end

    second = p.run()
    assert second.code == 0, f"{where}: {second.err}"
    assert " 0 ran," in second.err, f"{where}: {second.err}"
    again = [line for line in second.err.splitlines() if "warning" in line]
    # Each damaged file was replaced, so nothing is said twice; but config.toml
    # is the user's, never rewritten: a build that reads it says so until it is fixed.
    assert all(name == "config" and rel in line for line in again), f"{where}: {second.err}"
