"""The one frame of every binary state file (pivotbuild.state.framing): what
goes in comes out, and any damage is reported as `Damaged`, never decoded."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import pytest
import xxhash

from pivotbuild.state import framing
from pivotbuild.state.framing import Damaged, Format, OtherVersion

PLAIN = Format(b"PIVTEST\n", 3, "test file")
PACKED = Format(b"PIVTEST\n", 3, "test file", zstd_level=1)
VALUE = {"stages": [{"name": f"s{i}", "hash": f"{i:032x}", "deps": ["a", "b"]} for i in range(40)]}


def reason(fmt: Format, blob: bytes) -> str:
    with pytest.raises(Damaged) as info:
        fmt.load(blob)
    assert str(info.value)
    return str(info.value)


@pytest.mark.parametrize("fmt", [PLAIN, PACKED], ids=["plain", "zstd"])
def test_round_trip_is_deterministic(fmt: Format) -> None:
    blob = fmt.dump(VALUE)
    assert fmt.load(blob) == VALUE
    assert fmt.dump(fmt.load(blob)) == blob


def test_layout_magic_version_length_payload_checksum() -> None:
    blob = PLAIN.dump(VALUE)
    payload = msgpack.packb(VALUE)
    assert blob[:16] == b"PIVTEST\n" + (3).to_bytes(2, "big") + b"\0\0" + len(payload).to_bytes(4, "big")
    assert blob[16:-16] == payload
    assert blob[-16:] == xxhash.xxh3_128_digest(blob[:-16])


def test_zstd_pays_where_asked() -> None:
    assert len(PACKED.dump(VALUE)) < len(PLAIN.dump(VALUE))


@pytest.mark.parametrize("fmt", [PLAIN, PACKED], ids=["plain", "zstd"])
def test_a_flipped_bit_anywhere_is_detected(fmt: Format) -> None:
    blob = fmt.dump(VALUE)
    for at in range(len(blob)):
        for bit in (0, 7):
            damaged = bytearray(blob)
            damaged[at] ^= 1 << bit
            reason(fmt, bytes(damaged))


def test_a_flipped_version_bit_is_damage_not_another_version() -> None:
    damaged = bytearray(PLAIN.dump(VALUE))
    damaged[9] ^= 1
    with pytest.raises(Damaged) as info:
        PLAIN.load(bytes(damaged))
    assert not isinstance(info.value, OtherVersion)
    assert "checksum mismatch" in str(info.value)


@pytest.mark.parametrize("fmt", [PLAIN, PACKED], ids=["plain", "zstd"])
def test_truncated_at_every_length(fmt: Format) -> None:
    blob = fmt.dump(VALUE)
    for n in range(len(blob)):
        text = reason(fmt, blob[:n])
        assert "too short" in text or "truncated" in text, (n, text)


def test_empty_and_padded() -> None:
    assert reason(PLAIN, b"") == "too short to be a pivotbuild test file"
    assert "truncated or padded" in reason(PLAIN, PLAIN.dump(VALUE) + b"\0")


def test_wrong_magic() -> None:
    other = Format(b"PIVOTHR\n", 3, "other file")
    assert reason(PLAIN, other.dump(VALUE)) == "not a pivotbuild test file (bad magic)"


def test_another_version_with_a_valid_checksum() -> None:
    newer = Format(b"PIVTEST\n", 4, "test file")
    with pytest.raises(OtherVersion, match=r"format version 4 is not one this pivotbuild reads \(3\)"):
        PLAIN.load(newer.dump(VALUE))


def test_a_file_of_the_layout_before_the_framing_is_another_version() -> None:
    """Magic, msgpack, XXH3-64 of the msgpack: what the plan, seal, stat cache
    and run-cache entries were before; ignored as another pivotbuild's file."""
    for value in (VALUE, []):  # short ones too
        data = msgpack.packb([2, value])
        old = b"PIVTEST\n" + data + xxhash.xxh3_64_digest(data)
        with pytest.raises(OtherVersion):
            PLAIN.load(old)
        damaged = bytearray(old)
        damaged[9] ^= 1  # and damaged: no longer recognised, so reported
        assert not isinstance(_raised(PLAIN, bytes(damaged)), OtherVersion)


def _raised(fmt: Format, blob: bytes) -> Damaged:
    with pytest.raises(Damaged) as info:
        fmt.load(blob)
    return info.value


@pytest.mark.parametrize("fmt", [PLAIN, PACKED], ids=["plain", "zstd"])
def test_a_valid_frame_whose_payload_does_not_decode(fmt: Format) -> None:
    body = framing.HEADER.pack(fmt.magic, fmt.version, 0, 3) + b"\xc1\xc1\xc1"  # 0xc1: never valid msgpack
    assert "payload does not decode" in reason(fmt, body + xxhash.xxh3_128_digest(body))


def test_frames_yield_each_entry_until_the_first_damaged_one() -> None:
    entries = [{"n": i} for i in range(3)]
    blob = b"".join(PLAIN.dump(e) for e in entries)
    assert list(PLAIN.frames(blob)) == entries
    seen = []
    cut = blob[:-5]
    with pytest.raises(Damaged, match=r"too short|truncated"):
        for entry in PLAIN.frames(cut):
            seen.append(entry)
    assert seen == entries[:2]
    damaged = bytearray(blob)
    damaged[len(PLAIN.dump(entries[0])) + 20] ^= 4  # in the second frame
    seen = []
    with pytest.raises(Damaged, match="checksum"):
        for entry in PLAIN.frames(bytes(damaged)):
            seen.append(entry)
    assert seen == entries[:1]


def test_a_magic_is_eight_bytes() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        Format(b"PIV\n", 1, "short")


# zstd, as a build loads it (framing.zstd_backend), in a fresh interpreter each time.
_ZSTD_PROGRAM = """
import sys
{before}
from pivotbuild.state.framing import Format
fmt = Format(b"PIVTEST\\n", 3, "test file", zstd_level=1)
value = {{"stages": [{{"name": "s%d" % i, "deps": ["a", "b"]}} for i in range(40)]}}
blob = fmt.dump(value)
assert fmt.load(blob) == value
loaded = "platform" in sys.modules, "zstandard" in sys.modules, "zstandard.backend_c" in sys.modules
import zstandard
import importlib.util
assert importlib.util.find_spec("zstandard.backend_c") is not None  # (a module with its spec, as imported)
payload = blob[16:-16]
assert zstandard.ZstdDecompressor().decompress(payload) == fmt.unpack(blob)
print(*loaded)
"""


def _zstd_in_a_fresh_interpreter(before: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-c", _ZSTD_PROGRAM.format(before=before)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_zstd_is_its_c_extension_alone_and_the_package_imported_later_uses_it() -> None:
    # Neither `platform` nor the package's own import: the extension alone,
    # which a later `import zstandard` (a py: stage's) takes as it is.
    assert _zstd_in_a_fresh_interpreter() == "False False True"


def test_zstd_is_the_package_where_it_is_imported_already() -> None:
    assert _zstd_in_a_fresh_interpreter("import zstandard") == "True True True"


def test_zstd_is_the_package_where_its_c_extension_is_not_found() -> None:
    # As on a build of zstandard without its C backend: the package chooses.
    # (Found by nobody but the package's own import, which looks after ours.)
    no_backend = (
        "from importlib.machinery import PathFinder\n"
        "find, asked = PathFinder.find_spec, []\n"
        "def once(cls, name, path=None, target=None):\n"
        "    if name == 'zstandard.backend_c' and not asked:\n"
        "        asked.append(name)\n"
        "        return None\n"
        "    return find(name, path, target)\n"
        "PathFinder.find_spec = classmethod(once)"
    )
    assert _zstd_in_a_fresh_interpreter(no_backend) == "True True True"
