"""The binary lockfile (state/lockfile.py) and the state store that reads and writes it (state/store.py)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest
import xxhash
import zstandard
from conftest import compile_text

from pivotbuild import structs
from pivotbuild.model import Pipeline
from pivotbuild.state import codec, lockfile, statcache
from pivotbuild.state.journal import Journal
from pivotbuild.state.lockfile import MAGIC, VERSION, LockfileError, decode, encode
from pivotbuild.state.records import FileRecord, LockData, ParamRecord, StageRecord
from pivotbuild.state.store import JOURNAL, PENDING, StateStore


def record(name: str, salt: str = "") -> StageRecord:
    return StageRecord(
        name=name,
        fingerprint=f"fp-{name}{salt}",
        command=f"python train.py --name {name} > out/{name}.txt",
        deps=(
            FileRecord("data/raw.csv", "file", "0" * 32),
            FileRecord("models/", "dir", "1" * 32),
            FileRecord(
                "src/**/*.py",
                "glob",
                "2" * 32,
                (FileRecord("src/a.py", "file", "3" * 32), FileRecord("src/b/c.py", "file", "4" * 32)),
            ),
            FileRecord("optional.txt", "absent", ""),
        ),
        outs=(FileRecord(f"out/{name}.txt", "file", "5" * 32 + salt),),
        params=(ParamRecord("params.toml", "train.epochs", "10"), ParamRecord("params.toml", "train", '{"lr":0.1}')),
        facets=(("shell", "6" * 32), ("env", "7" * 32), ("outs", "8" * 32)),
    )


def sample() -> LockData:
    return LockData.of({n: record(n) for n in ("prepare", "train@small", "train@large", "report", "ünïcode-stage")})


# -- encode / decode -------------------------------------------------------------------


def test_round_trip() -> None:
    data = sample()
    assert decode(encode(data)) == data


def test_round_trip_empty() -> None:
    assert decode(encode(LockData())) == LockData()


def test_an_executable_output_round_trips_and_a_plain_one_keeps_its_bytes() -> None:
    tool = structs.replace(record("s"), outs=(FileRecord("bin/t", "file", "5" * 32, executable=True),))
    back = decode(encode(LockData.of({"s": tool})))
    assert back == LockData.of({"s": tool}) and back.stages[0].outs[0].executable
    # No new key where there is no execute bit: records written before keep their bytes.
    assert codec.file_obj(record("s").outs[0]) == {"path": "out/s.txt", "kind": "file", "hash": "5" * 32, "matches": []}


def test_header_layout() -> None:
    blob = encode(sample())
    assert blob[:8] == MAGIC == b"\x89PIV\r\n\x1a\n"
    _magic, version, flags, length = struct.unpack_from(">8sHHI", blob)
    assert (version, flags) == (VERSION, 0) == (2, 0)
    assert len(blob) == 16 + length + 16
    assert blob[-16:] == xxhash.xxh3_128_digest(blob[:-16])


def test_the_payload_keeps_its_bytes() -> None:
    """The lockfile is committed to git: the same records give the same payload
    as every pivotbuild that wrote format 1 or 2 (the zstd bytes around it are
    the zstd library's), a zstd stream that reads back as it with `zstd -d`."""
    blob = encode(sample())
    assert blob[:12] == MAGIC + b"\0\x02\0\0"
    payload = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(blob[16:-16])
    assert xxhash.xxh3_128_hexdigest(payload) == "16c6da44f7746cb8c56dbad18b212e3c"


def _format_1(data: LockData) -> bytes:
    """`data` as a pivotbuild of format 1 wrote it: the payload one zstd frame."""
    payload = msgpack.packb(codec.lock_obj(LockData(tuple(sorted(data.stages, key=lambda r: r.name)))))
    compressed = zstandard.ZstdCompressor(level=1, write_checksum=False, write_content_size=True).compress(payload)
    body = struct.pack(">8sHHI", MAGIC, 1, 0, len(compressed)) + compressed
    return body + xxhash.xxh3_128_digest(body)


def test_a_format_1_lockfile_is_read_and_left_as_it_is_while_its_records_stay(tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"
    old = _format_1(sample())
    path.write_bytes(old)
    assert lockfile.read(path) == sample()
    assert (
        not lockfile.write(path, lockfile.read_records(path)) and path.read_bytes() == old
    )  # upgrading rewrites nothing
    changed = LockData.of({**{r.name: r for r in sample().stages}, "report": record("report", "x")})
    assert lockfile.write(path, changed)
    assert path.read_bytes()[8:10] == b"\0\x02" and lockfile.read(path) == changed


def _frames(blob: bytes) -> list[bytes]:
    """The zstd frames of a lockfile's payload, one a chunk."""
    rest, frames = blob[16:-16], []
    while rest:
        one = zstandard.ZstdDecompressor().decompressobj()
        one.decompress(rest)
        frames.append(rest[: len(rest) - len(one.unused_data)])
        rest = one.unused_data
    return frames


def test_a_lockfile_is_compressed_in_chunks_and_a_changed_record_changes_only_its_own() -> None:
    names = [f"stage{i:04}" for i in range(1000)]
    before = {n: record(n) for n in names}
    blob = encode(LockData.of(before))
    frames = _frames(blob)
    assert 40 <= len(frames) <= 120  # about 16 records a chunk
    after = encode(LockData.of({**before, "stage0500": record("stage0500", "changed")}))
    changed = [k for k, (a, b) in enumerate(zip(frames, _frames(after), strict=True)) if a != b]
    assert len(changed) == 1
    assert decode(after).stages[500] == record("stage0500", "changed")
    # The same bytes whether written from records read back, decoded, or in a process that compressed nothing yet.
    assert encode(lockfile.decode_records(after)) == after == encode(decode(after))
    script = (
        "import sys; from pivotbuild.state import lockfile;"
        "sys.stdout.buffer.write(lockfile.encode(lockfile.decode(sys.stdin.buffer.read())))"
    )
    fresh = subprocess.run([sys.executable, "-c", script], input=after, capture_output=True, check=True)
    assert fresh.stdout == after


def test_a_frame_cut_short_is_damage() -> None:
    blob = encode(LockData.of({f"s{i}": record(f"s{i}") for i in range(200)}))
    first = _frames(blob)[0]
    payload = first[:-3]
    body = struct.pack(">8sHHI", MAGIC, VERSION, 0, len(payload)) + payload
    with pytest.raises(LockfileError, match="does not decode"):
        decode(body + xxhash.xxh3_128_digest(body))


def test_records_are_sorted_by_name() -> None:
    data = sample()
    assert [s.name for s in data.stages] == sorted(s.name for s in data.stages)


def test_encoding_is_deterministic() -> None:
    assert encode(sample()) == encode(sample())
    names = ["prepare", "train@small", "train@large", "report", "ünïcode-stage"]
    forward = LockData.of({n: record(n) for n in names})
    backward = LockData.of({n: record(n) for n in reversed(names)})
    shuffled_names = names[:]
    random.Random(3).shuffle(shuffled_names)
    shuffled = LockData.of({n: record(n) for n in shuffled_names})
    assert encode(forward) == encode(backward) == encode(shuffled)


def test_a_record_committed_through_the_journal_is_written_as_packed_afresh(tmp_path: Path) -> None:
    # The lockfile takes a committed record as the journal packed it (no
    # second packing): the bytes must be those of packing it anew.
    journal = Journal(tmp_path / "journal")
    names = ["b", "a", "c@x"]
    via_journal, afresh = lockfile.Records(), lockfile.Records()
    for n in names:
        via_journal.set(n, record(n), journal.append(record(n)))
        afresh[n] = record(n)
    journal.close()
    assert encode(via_journal) == encode(afresh) == encode(LockData.of({n: record(n) for n in names}))
    assert via_journal.get("a") == record("a")
    # Read back (and decoded), replaced through the journal, then set again by
    # hand: each read gives the newest record, and the bytes are still what
    # packing anew gives.
    read = lockfile.decode_records(encode(via_journal))
    assert read.get("a") == record("a")
    again = Journal(tmp_path / "journal2")
    read.set("a", record("a", "new"), again.append(record("a", "new")))
    read.set("c@x", record("c@x", "new"), again.append(record("c@x", "new")))
    again.close()
    assert read.get("a") == record("a", "new")
    read["b"] = record("b", "new")
    read["c@x"] = record("c@x", "newer")
    assert read.get("c@x") == record("c@x", "newer")
    assert encode(read) == encode(
        LockData.of({"a": record("a", "new"), "b": record("b", "new"), "c@x": record("c@x", "newer")})
    )


def test_encoding_is_the_same_in_another_process() -> None:
    # Nothing depends on the interpreter's hash seed or the process.
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_lockfile import sample
        from pivotbuild.state.lockfile import encode
        sys.stdout.buffer.write(encode(sample()))
        """
    )
    tests_dir = str(Path(__file__).parent)
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", script, tests_dir], capture_output=True, env=env, timeout=60, check=True
        )
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1] == encode(sample())


def test_different_facts_give_different_bytes() -> None:
    a = LockData.of({"s": record("s")})
    b = LockData.of({"s": record("s", salt="x")})
    assert encode(a) != encode(b)


# -- corruption ------------------------------------------------------------------------


def reason(blob: bytes) -> str:
    with pytest.raises(LockfileError) as info:
        decode(blob)
    text = str(info.value)
    assert text
    return text


def test_empty_file() -> None:
    assert "too short" in reason(b"")


def test_truncated_at_every_length() -> None:
    blob = encode(sample())
    for n in range(len(blob)):
        text = reason(blob[:n])
        assert "too short" in text or "truncated" in text, (n, text)


def test_padded() -> None:
    assert "truncated or padded" in reason(encode(sample()) + b"\0")


def test_bad_magic() -> None:
    blob = bytearray(encode(sample()))
    blob[1:4] = b"XYZ"
    assert "bad magic" in reason(bytes(blob))


def test_text_mode_mangling_is_caught() -> None:
    blob = encode(sample())
    assert "bad magic" in reason(blob.replace(b"\r\n", b"\n", 1))


def test_unknown_version_with_a_valid_checksum() -> None:
    blob = bytearray(encode(sample()))
    struct.pack_into(">H", blob, 8, VERSION + 1)
    body = bytes(blob[:-16])
    patched = body + xxhash.xxh3_128_digest(body)
    text = reason(patched)
    assert f"version {VERSION + 1}" in text
    assert "checksum" not in text


def test_flipped_payload_byte() -> None:
    blob = encode(sample())
    for pos in (16, 17, len(blob) // 2, len(blob) - 17):
        damaged = bytearray(blob)
        damaged[pos] ^= 0x01
        assert "checksum" in reason(bytes(damaged)), pos


def test_flipped_checksum_byte() -> None:
    blob = bytearray(encode(sample()))
    blob[-1] ^= 0x80
    assert "checksum" in reason(bytes(blob))


def test_flipped_length_byte() -> None:
    blob = bytearray(encode(sample()))
    blob[15] ^= 0x01
    assert "truncated or padded" in reason(bytes(blob))


def test_valid_frame_with_undecodable_payload() -> None:
    payload = b"this is not a zstd frame"
    body = struct.pack(">8sHHI", MAGIC, VERSION, 0, len(payload)) + payload
    assert "payload does not decode" in reason(body + xxhash.xxh3_128_digest(body))


def test_random_garbage() -> None:
    rng = random.Random(99)
    for _ in range(200):
        blob = rng.randbytes(rng.randint(0, 400))
        reason(blob)


def test_garbage_with_the_right_magic() -> None:
    rng = random.Random(5)
    for _ in range(100):
        reason(MAGIC + rng.randbytes(rng.randint(0, 200)))


# -- read / write ----------------------------------------------------------------------


def test_read_missing_file_is_empty(tmp_path: Path) -> None:
    assert lockfile.read(tmp_path / "Pivotfile.lock") == LockData()


def test_read_unreadable_path_raises(tmp_path: Path) -> None:
    (tmp_path / "Pivotfile.lock").mkdir()
    with pytest.raises(LockfileError, match="cannot be read"):
        lockfile.read(tmp_path / "Pivotfile.lock")


def test_read_damaged_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"
    path.write_bytes(b"stage s: not a lockfile\n")
    with pytest.raises(LockfileError):
        lockfile.read(path)


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"
    assert lockfile.write(path, sample()) is True
    assert lockfile.read(path) == sample()
    assert path.read_bytes() == encode(sample())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Pivotfile.lock"]  # no temporary left


def test_write_does_not_rewrite_identical_content(tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"
    assert lockfile.write(path, sample()) is True
    before = os.stat(path)
    assert lockfile.write(path, sample()) is False
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_ino, after.st_ctime_ns) == (
        before.st_mtime_ns,
        before.st_ino,
        before.st_ctime_ns,
    )
    changed = LockData.of({**sample().by_name(), "new": record("new")})
    assert lockfile.write(path, changed) is True
    assert lockfile.read(path) == changed


def test_write_replaces_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"
    path.write_bytes(b"junk")
    assert lockfile.write(path, sample()) is True
    assert lockfile.read(path) == sample()


def test_new_lockfile_gets_the_usual_mode(tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"
    lockfile.write(path, sample())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"
    lockfile.write(path, LockData())
    path.chmod(0o640)
    lockfile.write(path, sample())
    assert path.stat().st_mode & 0o777 == 0o640


# -- StateStore ------------------------------------------------------------------------

PIVOTFILE = """
stage s:
    deps: in.txt
    outs: out.txt
    run: cp in.txt out.txt
stage t:
    outs: t.txt
    run: echo t > t.txt
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = (tmp_path / "proj").resolve()
    (path / ".pivot").mkdir(parents=True)
    return path


def no_warning(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


def pipeline(root: Path, subdir: str = "") -> Pipeline:
    return compile_text(PIVOTFILE, root, subdir=subdir)


def test_store_without_state_is_empty(root: Path) -> None:
    warnings: list[str] = []
    p = pipeline(root)
    store = StateStore(root, [p], warn=warnings.append)
    assert all(store.record(s) is None for s in p.stages)
    store.close()
    assert warnings == []
    assert not (root / "Pivotfile.lock").exists()  # nothing ran: nothing written
    assert (root / ".pivot" / ".gitignore").exists()


def test_garbage_lockfile_warns_once_and_is_ignored(root: Path) -> None:
    (root / "Pivotfile.lock").write_bytes(b"\x00garbage\xff" * 10)
    warnings: list[str] = []
    p = pipeline(root)
    store = StateStore(root, [p], warn=warnings.append)
    assert len(warnings) == 1, warnings
    assert "Pivotfile.lock" in warnings[0]
    assert all(store.record(s) is None for s in p.stages)
    assert len(store.pipelines[""].records) == 0
    store.close()
    assert len(warnings) == 1


def test_garbage_lockfile_of_a_sub_pipeline_names_it(root: Path) -> None:
    p = pipeline(root, "sub")
    (root / "sub" / "Pivotfile.lock").write_bytes(b"junk")
    warnings: list[str] = []
    store = StateStore(root, [p], warn=warnings.append)
    assert len(warnings) == 1
    assert "sub/Pivotfile.lock" in warnings[0]
    assert len(store.pipelines["sub"].records) == 0
    store.close()


def test_commit_then_close_writes_the_lockfile(root: Path) -> None:
    warnings: list[str] = []
    p = pipeline(root)
    s = p.stages[0]
    store = StateStore(root, [p], warn=warnings.append)
    rec = record(s.name)
    store.commit(s, rec)
    assert store.record(s) == rec
    assert (root / ".pivot" / JOURNAL).exists()  # durable before close
    store.close()
    assert lockfile.read(root / "Pivotfile.lock") == LockData.of({s.name: rec})
    assert not (root / ".pivot" / JOURNAL).exists()
    reopened = StateStore(root, [p], warn=warnings.append)
    assert reopened.record(s) == rec
    reopened.close()
    assert warnings == []


def test_commit_merges_with_existing_records(root: Path) -> None:
    p = pipeline(root)
    s, t = p.stages
    lockfile.write(root / "Pivotfile.lock", LockData.of({t.name: record(t.name)}))
    store = StateStore(root, [p], warn=no_warning)
    store.commit(s, record(s.name))
    store.close()
    assert lockfile.read(root / "Pivotfile.lock") == LockData.of({s.name: record(s.name), t.name: record(t.name)})


def test_leftover_journal_is_folded_on_open(root: Path) -> None:
    p = pipeline(root)
    s, t = p.stages
    lockfile.write(root / "Pivotfile.lock", LockData.of({t.name: record(t.name)}))
    # A build killed after committing `s`: its journal is left behind.
    crashed = StateStore(root, [p], warn=no_warning)
    crashed.commit(s, record(s.name, salt="new"))
    crashed.pipelines[""].journal.close()
    del crashed

    warnings: list[str] = []
    store = StateStore(root, [p], warn=warnings.append)
    assert warnings == []
    assert store.record(s) == record(s.name, salt="new")
    assert store.record(t) == record(t.name)
    assert not (root / ".pivot" / JOURNAL).exists()
    assert lockfile.read(root / "Pivotfile.lock") == LockData.of(
        {s.name: record(s.name, salt="new"), t.name: record(t.name)}
    )
    store.close()


def test_leftover_journal_with_torn_tail_warns_and_keeps_good_records(root: Path) -> None:
    p = pipeline(root)
    s, t = p.stages
    journal_path = root / ".pivot" / JOURNAL
    j = Journal(journal_path)
    j.append(record(s.name))
    j.append(record(t.name))
    j.close()
    with open(journal_path, "r+b") as f:
        f.truncate(os.path.getsize(journal_path) - 3)
    warnings: list[str] = []
    store = StateStore(root, [p], warn=warnings.append)
    assert len(warnings) == 1
    assert "journal" in warnings[0]
    assert store.record(s) == record(s.name)
    assert store.record(t) is None
    store.close()


def test_leftover_journal_over_garbage_lockfile(root: Path) -> None:
    p = pipeline(root)
    s, t = p.stages
    (root / "Pivotfile.lock").write_bytes(b"garbage")
    j = Journal(root / ".pivot" / JOURNAL)
    j.append(record(s.name))
    j.close()
    warnings: list[str] = []
    store = StateStore(root, [p], warn=warnings.append)
    assert len(warnings) == 1
    assert "Pivotfile.lock" in warnings[0]
    assert store.record(s) == record(s.name)
    assert store.record(t) is None
    store.close()
    assert lockfile.read(root / "Pivotfile.lock") == LockData.of({s.name: record(s.name)})


def test_close_without_changes_leaves_the_lockfile_untouched(root: Path) -> None:
    p = pipeline(root)
    s = p.stages[0]
    lockfile.write(root / "Pivotfile.lock", LockData.of({s.name: record(s.name)}))
    before = os.stat(root / "Pivotfile.lock")
    store = StateStore(root, [p], warn=no_warning)
    store.close()
    after = os.stat(root / "Pivotfile.lock")
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_recommitting_identical_record_leaves_the_lockfile_untouched(root: Path) -> None:
    p = pipeline(root)
    s = p.stages[0]
    lockfile.write(root / "Pivotfile.lock", LockData.of({s.name: record(s.name)}))
    before = os.stat(root / "Pivotfile.lock")
    store = StateStore(root, [p], warn=no_warning)
    store.commit(s, record(s.name))
    store.close()
    after = os.stat(root / "Pivotfile.lock")
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_store_keeps_pipelines_apart(root: Path) -> None:
    top = pipeline(root)
    sub = pipeline(root, "sub")
    store = StateStore(root, [top, sub], warn=no_warning)
    store.commit(sub.stages[0], record("s", salt="sub"))
    store.close()
    assert not (root / "Pivotfile.lock").exists()
    assert lockfile.read(root / "sub" / "Pivotfile.lock") == LockData.of({"s": record("s", salt="sub")})
    again = StateStore(root, [top, sub], warn=no_warning)
    assert again.record(top.stages[0]) is None
    assert again.record(sub.stages[0]) == record("s", salt="sub")
    again.close()


# -- records decoded as asked for ------------------------------------------------------------


def test_records_untouched_are_written_back_byte_for_byte() -> None:
    records = lockfile.decode_records(encode(sample()))
    records["report"] = record("report", salt="new")
    assert records.get("prepare") == record("prepare")
    replaced = LockData.of({**sample().by_name(), "report": record("report", salt="new")})
    assert encode(records) == encode(replaced)
    assert lockfile.decode_records(encode(replaced)).data() == replaced


@pytest.mark.parametrize("name", ["s", "n" * 31, "m" * 32, "long@" + "x" * 300, "ünïcode", "a-b@c=d"])
def test_records_read_and_written_untouched_keep_the_bytes_packing_them_gives(name: str) -> None:
    """Every length of name msgpack has a form for (fixstr, str8, str16), and
    one set among them: the bytes are those of the whole file packed afresh."""
    data = LockData.of({**sample().by_name(), name: record(name)})
    blob = encode(data)
    records = lockfile.decode_records(blob)
    assert encode(records) == blob
    assert records.get(name) == record(name)
    assert encode(records) == blob  # read, not set: still its own bytes
    records[name] = record(name, salt="new")
    changed = LockData.of({**data.by_name(), name: record(name, salt="new")})
    assert encode(records) == encode(changed)
    assert lockfile.decode_records(encode(records)).data() == changed


def test_a_record_written_with_its_name_elsewhere_is_still_found() -> None:
    """Another writer's key order: the name is looked up by unpacking the record."""
    plain = {r.name: dict(reversed(list(codec.record_obj(r).items()))) for r in sample().stages}
    records = lockfile.decode_records(lockfile.encode(lockfile.Records(plain)))
    assert records.data() == sample()


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2, 3],  # not a map
        {"stages": 7},  # not a list
        {"stages": [7]},  # a record not a map
        {"stages": [{"fingerprint": "x"}]},  # no name
        {"stages": [{"name": 3}]},  # a name not a string
    ],
    ids=["list", "stages", "record", "unnamed", "name"],
)
def test_a_payload_not_of_named_records_is_refused_whole(payload: object) -> None:
    with pytest.raises(LockfileError, match="payload does not decode"):
        lockfile.decode_records(lockfile.FRAME.dump(payload))


def test_a_payload_naming_stages_twice_is_read_as_msgpack_reads_it_the_last() -> None:
    first, last = (codec.record_obj(record("a", salt=salt)) for salt in ("first", "last"))
    twice = lockfile.FRAME.pack(b"\x82\xa6stages\x91" + msgpack.packb(first) + b"\xa6stages\x91" + msgpack.packb(last))
    assert msgpack.unpackb(lockfile.FRAME.unpack(twice))["stages"] == [last]
    assert lockfile.decode_records(twice).data() == LockData((record("a", salt="last"),))


def test_a_record_naming_itself_twice_is_a_damaged_record() -> None:
    obj = codec.record_obj(record("a"))
    body = msgpack.packb(obj)
    twice = body[:1].replace(b"\x87", b"\x88") + body[1:] + msgpack.packb("name") + msgpack.packb("b")
    blob = lockfile.FRAME.pack(b"\x81\xa6stages\x91" + twice)
    records = lockfile.decode_records(blob)
    with pytest.raises(LockfileError, match="the record of stage a does not decode"):
        records.get("a")
    assert records.data() == LockData(())


def one_bad_record() -> bytes:
    """A well-formed lockfile (checksum and all) holding one record that does not decode."""
    good = lockfile.decode_records(encode(sample())).plain()
    for obj in good["stages"]:
        if obj["name"] == "train@small":
            obj["deps"] = "not a list"
    return lockfile.encode(lockfile.Records({r["name"]: r for r in good["stages"]}))


def test_a_record_that_does_not_decode_is_refused_when_asked_for_and_dropped() -> None:
    records = lockfile.decode_records(one_bad_record())
    assert records.get("prepare") == record("prepare")
    with pytest.raises(LockfileError, match=r"the record of stage train@small does not decode"):
        records.get("train@small")
    assert records.get("train@small") is None  # dropped: the stage runs again
    assert "train@small" not in records
    assert [r.name for r in records.data().stages] == sorted(n for n in sample().by_name() if n != "train@small")
    with pytest.raises(LockfileError):
        decode(one_bad_record())  # decoding the whole file still refuses it


def test_a_damaged_record_reruns_only_its_stage_with_a_warning(tmp_path: Path) -> None:
    """End to end: the real pivotbuild, a lockfile one of whose records was damaged."""
    root = tmp_path / "proj"
    (root / ".pivot").mkdir(parents=True)
    (root / "Pivotfile").write_text(
        "stage a:\n    deps: in.txt\n    outs: a.txt\n    run: cp $< $@; echo a >> runs.log\n\n"
        "stage b:\n    deps: in.txt\n    outs: b.txt\n    run: cp $< $@; echo b >> runs.log\n"
    )
    (root / "in.txt").write_text("x\n")
    env = {**os.environ, "NO_COLOR": "1"}
    run = [sys.executable, "-m", "pivotbuild", "-s"]
    assert subprocess.run(run, cwd=root, env=env, check=False).returncode == 0
    plain = lockfile.decode_records((root / "Pivotfile.lock").read_bytes()).plain()
    for obj in plain["stages"]:
        if obj["name"] == "b":
            obj["outs"] = 7
    (root / "Pivotfile.lock").write_bytes(lockfile.encode(lockfile.Records({r["name"]: r for r in plain["stages"]})))
    (root / ".pivot" / "seal").unlink()
    (root / "runs.log").unlink()
    r = subprocess.run(run, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "Pivotfile.lock: the record of stage b does not decode" in r.stderr
    assert "so the stage will run again" in r.stderr
    assert "0 ran, 1 up to date, 1 restored" in r.stderr  # b from the run cache; a untouched
    assert not (root / "runs.log").exists()
    assert lockfile.read(root / "Pivotfile.lock").by_name()["b"].outs[0].path == "b.txt"  # repaired


def test_a_lockfile_with_several_bad_records_is_reported_once(root: Path) -> None:
    """One warning per damaged file, however many of its stages are decided."""
    p = pipeline(root)
    plain = {s.name: codec.record_obj(record(s.name)) for s in p.stages}
    for obj in plain.values():
        obj["outs"] = 7  # each record is damaged; the file's checksum still holds
    (root / "Pivotfile.lock").write_bytes(lockfile.encode(lockfile.Records(plain)))
    warnings: list[str] = []
    store = StateStore(root, [p], warn=warnings.append)
    assert all(store.record(s) is None for s in p.stages)  # every stage runs again
    store.close()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Pivotfile.lock: the record of stage")


def test_damaged_pending_results_are_kept_up_to_the_damage_and_mended_at_once(root: Path) -> None:
    p = pipeline(root)
    s, t = p.stages
    store = StateStore(root, [p], warn=no_warning)
    store.commit(s, record(s.name), pending=True)
    store.commit(t, record(t.name), pending=True)
    store.close()
    path = root / ".pivot" / PENDING
    blob = path.read_bytes()
    path.write_bytes(blob[:-3])  # the second entry cut short
    warnings: list[str] = []
    reopened = StateStore(root, [p], warn=warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith(".pivot/pending: damaged or cut short"), warnings
    assert reopened.pending(s) == record(s.name)
    assert reopened.pending(t) is None  # runs again
    reopened.close()
    again = StateStore(root, [p], warn=no_warning)  # rewritten: nothing to say now
    assert again.pending(s) == record(s.name)
    again.close()


def test_a_damaged_stat_cache_is_reported_by_the_store_once(root: Path) -> None:
    p = pipeline(root)
    (root / ".pivot").mkdir(exist_ok=True)
    blob = bytearray(statcache.FRAME.dump([]))
    blob[-1] ^= 1
    (root / ".pivot" / "statcache").write_bytes(bytes(blob))
    warnings: list[str] = []
    store = StateStore(root, [p], warn=warnings.append)
    store.close()
    assert warnings == [
        ".pivot/statcache: checksum mismatch (the file is damaged); ignoring it, so files are hashed again"
    ]
    StateStore(root, [p], warn=no_warning).close()  # replaced by a good one
