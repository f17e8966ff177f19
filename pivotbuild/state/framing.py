"""One frame for every binary state file: the lockfile, the compiled plan, the
seal, the stat cache, run-cache entries and each journal entry.

Layout (integers big-endian), the lockfile's since format 1:

    offset  size  what
    0       8     magic, one per kind of file (the lockfile's catches text-mode mangling, like PNG's)
    8       2     format version
    10      2     flags (0; ignored when read)
    12      4     length N of the payload
    16      N     payload: msgpack, or zstd frames of msgpack for a format that compresses
    16+N    16    XXH3-128 of bytes 0 .. 16+N

Whether the payload is compressed belongs to the format (its magic and
version), not to a flag, so the lockfile keeps the bytes it always had.  A
journal is frames one after the other, so an entry cut short by a crash ends
it.  Reading checks the magic, the length, the checksum and then the version,
then decodes, and raises `Damaged` saying which failed, for the caller's
one-line warning: a damaged file is reported, never half-believed.  A valid
frame of another version, or a file of the layout before this framing, raises
its subclass `OtherVersion`, which most callers ignore without a word.

Cheap to import: the no-op fast path reads the plan and the seal through it
(zstd is loaded only by a format that compresses, and then its C extension
alone: see `zstd_backend`).
"""

from __future__ import annotations

import struct
import sys

import msgpack
import xxhash

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

HEADER = struct.Struct(">8sHHI")
CHECKSUM = 16  # XXH3-128
_FRAMES_KEPT = 4096  # chunks' frames a format keeps (see Format): forgotten all at once past this
_checksum = xxhash.xxh3_128_digest


class Damaged(ValueError):
    """A frame that fails a check or does not decode; `str()` says why."""


class OtherVersion(Damaged):
    """A valid frame of another format version, or a whole file in the layout
    the plan, seal, stat cache and run-cache entries had before this framing:
    written by another pivotbuild, not damaged."""


class Format:
    """One kind of state file: its magic, its version, and its zstd level (None:
    not compressed).  `what` names it in messages ("lockfile"); `older`, the
    earlier versions this still reads, whose payload is the same.

    A format that compresses writes its payload as zstd frames, one a chunk
    (`pack_chunks`), one after the other: a zstd stream all the same, which
    reads back as the chunks end to end.  Each chunk's frame is kept in this
    process, by the chunk's XXH3-128, as it is written or read, so a file
    written again with most of its chunks unchanged compresses only the
    others: a build that reruns 55 stages of 1,000 compresses 12 of the
    lockfile's 69 chunks, not all of it (1.6 ms at level 1)."""

    __slots__ = ("_frames", "level", "magic", "older", "version", "what")

    def __init__(
        self, magic: bytes, version: int, what: str, *, zstd_level: int | None = None, older: tuple[int, ...] = ()
    ) -> None:
        if len(magic) != 8:
            raise ValueError("a magic is 8 bytes")
        self.magic = magic
        self.version = version
        self.what = what
        self.level = zstd_level
        self.older = older
        self._frames: dict[bytes, bytes] = {}  # XXH3-128 of a chunk -> its zstd frame

    # -- writing ------------------------------------------------------------------

    def pack(self, payload: bytes) -> bytes:
        """`payload` in a frame: deterministic bytes for the same payload (one
        chunk, where the format compresses)."""
        return self.pack_chunks([payload]) if self.level is not None else self._framed(payload)

    def pack_chunks(self, chunks: list[bytes]) -> bytes:
        """The payload `chunks` end to end, in a frame, each chunk compressed
        on its own (a format that compresses): deterministic bytes for the
        same chunks."""
        return self.pack_frames([self.compressed(chunk) for chunk in chunks])

    def compressed(self, chunk: bytes) -> bytes:
        """`chunk`'s zstd frame (a format that compresses), kept by its XXH3-128."""
        assert self.level is not None
        key = _checksum(chunk)
        frame = self._frames.get(key)
        if frame is None:
            compressor = zstd_backend().ZstdCompressor(level=self.level, write_checksum=False, write_content_size=True)
            frame = compressor.compress(chunk)
            self._keep(key, frame)
        return frame

    def pack_frames(self, frames: list[bytes]) -> bytes:
        """The zstd `frames` (of `compressed`) end to end as the payload, in a frame."""
        return self._framed(b"".join(frames))

    def _framed(self, payload: bytes) -> bytes:
        body = HEADER.pack(self.magic, self.version, 0, len(payload)) + payload
        return body + _checksum(body)

    def _keep(self, key: bytes, frame: bytes) -> None:
        if len(self._frames) >= _FRAMES_KEPT:
            self._frames.clear()
        self._frames[key] = frame

    def dump(self, obj: object) -> bytes:
        """`obj` as msgpack, in a frame."""
        return self.pack(msgpack.packb(obj, use_bin_type=True))

    # -- reading ------------------------------------------------------------------

    def check(self, blob: bytes, pos: int) -> int:
        """Check the frame at `pos` of a file of frames; where its payload ends
        (its checksum follows).  Raises Damaged."""
        return self._check(blob, pos, whole=False)

    def _check(self, blob: bytes, pos: int, whole: bool) -> int:
        """Check the frame at `pos`; return where its payload ends (the checksum
        follows).  The version is looked at last, once the checksum holds: a
        flipped bit is damage, a valid frame of another version is not."""
        if len(blob) - pos < HEADER.size + CHECKSUM:
            self._earlier(blob, whole)
            raise Damaged(f"too short to be a pivotbuild {self.what}")
        magic, version, _flags, length = HEADER.unpack_from(blob, pos)
        if magic != self.magic:
            raise Damaged(f"not a pivotbuild {self.what} (bad magic)")
        end: int = pos + HEADER.size + length
        if end + CHECKSUM > len(blob) or (whole and end + CHECKSUM != len(blob)):
            self._earlier(blob, whole)
            raise Damaged("truncated or padded (length does not match)")
        if _checksum(memoryview(blob)[pos:end]) != blob[end : end + CHECKSUM]:
            self._earlier(blob, whole)
            raise Damaged("checksum mismatch (the file is damaged)")
        if version != self.version and version not in self.older:
            raise OtherVersion(f"format version {version} is not one this pivotbuild reads ({self.version})")
        return end

    def _earlier(self, blob: bytes, whole: bool) -> None:
        """Raise OtherVersion if `blob` is a whole file in the layout before this
        framing: the magic, msgpack, and the XXH3-64 of that msgpack."""
        if whole and len(blob) > 16 and blob.startswith(self.magic) and xxhash.xxh3_64_digest(blob[8:-8]) == blob[-8:]:
            raise OtherVersion("written by an earlier pivotbuild")

    def unpack(self, blob: bytes) -> bytes | memoryview:
        """The payload of a file that is one frame (a view of `blob` when it is
        not compressed).  Raises Damaged."""
        end = self._check(blob, 0, whole=True)
        return self._payload(blob, HEADER.size, end)

    def load(self, blob: bytes, *, use_list: bool = True) -> Any:
        """The msgpack value of a file that is one frame.  Raises Damaged."""
        return self.loads(self.unpack(blob), use_list=use_list)

    def frames(self, blob: bytes, *, use_list: bool = True) -> Iterator[Any]:
        """The msgpack value of each frame of a file that is frames one after the
        other (a journal, the stat cache); raises Damaged at the first that
        fails, having yielded those before it."""
        pos = 0
        while pos < len(blob):
            end = self._check(blob, pos, whole=False)
            yield self.loads(self._payload(blob, pos + HEADER.size, end), use_list=use_list)
            pos = end + CHECKSUM

    def _payload(self, blob: bytes, start: int, end: int) -> bytes | memoryview:
        payload = memoryview(blob)[start:end]
        if self.level is None:
            return payload
        zstd = zstd_backend()
        decompressor = zstd.ZstdDecompressor()
        rest, chunks = bytes(payload), []
        try:
            while rest:  # frame by frame: each chunk's frame is kept (see the class)
                one = decompressor.decompressobj()
                chunk = one.decompress(rest)
                if not one.eof:
                    raise Damaged("payload does not decode (a zstd frame is cut short)")
                left = one.unused_data
                self._keep(_checksum(chunk), rest[: len(rest) - len(left)])
                chunks.append(chunk)
                rest = left
        except zstd.ZstdError as exc:
            raise Damaged(f"payload does not decode ({type(exc).__name__})") from exc
        return b"".join(chunks)

    def loads(self, payload: bytes | memoryview, *, use_list: bool = True) -> Any:
        try:
            return msgpack.unpackb(payload, use_list=use_list)
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
            raise Damaged(f"payload does not decode ({type(exc).__name__})") from exc


def zstd_backend() -> Any:
    """The `zstandard` package's C backend (`zstandard.backend_c`, whose
    compressor, decompressor and error the package re-exports), loaded alone.
    The package's own import first imports `platform` (and with it `re`) to
    choose among its backends: 2.0 to 2.1 ms of a build with work here, 9 to
    10 in a fresh interpreter, against 0.6 to 1.0 for the extension alone.
    It is put in `sys.modules` under its own name, with the attributes an
    import gives a module, so a later `import zstandard` (a `py:` stage's,
    the Python API's caller's) uses it as it is; that package then lacks a
    `backend_c` attribute (its own names, `zstandard.ZstdCompressor`..., are
    all there).  The package as usual where it is imported already (or
    being imported by another thread: the import waits for it), or where
    the extension is not found (a build of it without the C backend)."""
    found = sys.modules.get("zstandard.backend_c")
    if found is not None:
        return found
    if "zstandard" not in sys.modules:
        try:
            from importlib.machinery import PathFinder

            package = PathFinder.find_spec("zstandard")
            spec = PathFinder.find_spec("zstandard.backend_c", package.submodule_search_locations) if package else None
            if spec is not None and spec.loader is not None:
                module = spec.loader.create_module(spec)
                if module is not None:
                    module.__spec__, module.__loader__, module.__package__ = spec, spec.loader, "zstandard"
                    spec.loader.exec_module(module)
                    sys.modules[spec.name] = module
                    return module
        except (ImportError, OSError):
            pass
    import zstandard

    return zstandard


def cut_short(blob: bytes) -> bool:
    """Whether the last frame of a file of frames is cut short (its header, or
    the length its header gives, runs past the end): what a reader sees of an
    append in progress, where a damaged frame would fail its check whole."""
    pos = 0
    while pos < len(blob):
        if len(blob) - pos < HEADER.size + CHECKSUM:
            return True
        pos += HEADER.size + HEADER.unpack_from(blob, pos)[3] + CHECKSUM
    return pos > len(blob)
