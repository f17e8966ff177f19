"""Content hashes: XXH3-128 of files, of directory trees, and of glob match sets.

A file is read in fixed-size chunks into one reused buffer, so a large file is
never held in memory.  A directory's hash is the hash of its manifest: the
sorted list of (relative path, kind, content hash) of everything under it, so
renaming, adding, removing or chmod +x of a file all change it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

import xxhash

CHUNK = 1 << 20  # 1 MiB: big enough for xxh3 to run at memory speed

# Manifest entry kinds: a regular file, an executable file, a symlink (hashed
# by its target text, not followed, so a link cannot smuggle in outside data).
ENTRY_FILE, ENTRY_EXEC, ENTRY_LINK = "f", "x", "l"


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def hash_file(path: str | os.PathLike[str]) -> str:
    """XXH3-128 of a file's contents: read at once if small, else streamed
    through one buffer (so a large file is never held in memory)."""
    return read_small(path)[0]


def read_small(path: str | os.PathLike[str], limit: int = CHUNK) -> tuple[str, bytes | None]:
    """The file's XXH3-128 and, if it is at most `limit` bytes, its contents
    (read once, so a caller that stores the file need not read it again)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return hash_fd(fd, limit)
    finally:
        os.close(fd)


def hash_fd(fd: int, limit: int = CHUNK, size: int | None = None) -> tuple[str, bytes | None]:
    """`read_small` of an open file, from its position.  `size`: its size as
    a `stat` the caller took found it (else it is asked): only how much to
    read at first, so a file that grew or shrank since still hashes whole."""
    if size is None:
        size = os.fstat(fd).st_size
    if size <= limit:
        data = os.read(fd, size + 1)
        if len(data) <= size:  # all of it (a file that grew since `size` was found is streamed)
            while len(data) < size and (more := os.read(fd, size - len(data))):
                data += more
            return xxhash.xxh3_128_hexdigest(data), data
        h = xxhash.xxh3_128(data)
    else:
        h = xxhash.xxh3_128()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
    return h.hexdigest(), None


class ManifestEntry:
    """One file of a directory manifest.  (A plain class, not a dataclass or
    NamedTuple: the no-op fast path imports this module and neither of those.)"""

    __slots__ = ("hash", "kind", "path")

    def __init__(self, path: str, kind: str, hash: str) -> None:
        self.path = path  # relative to the directory, POSIX separators
        self.kind = kind  # ENTRY_FILE, ENTRY_EXEC or ENTRY_LINK
        self.hash = hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ManifestEntry) and (self.path, self.kind, self.hash) == (
            other.path,
            other.kind,
            other.hash,
        )

    def __hash__(self) -> int:
        return hash((self.path, self.kind, self.hash))

    def __repr__(self) -> str:
        return f"ManifestEntry({self.path!r}, {self.kind!r}, {self.hash!r})"


def manifest_bytes(entries: Iterable[ManifestEntry]) -> bytes:
    """The canonical text of a manifest: one `kind hash "path"` line per entry,
    sorted by path; the path is JSON-quoted so no file name can forge a line."""
    import json

    lines = [f"{e.kind} {e.hash} {json.dumps(e.path)}\n" for e in sorted(entries, key=lambda e: e.path)]
    return "".join(lines).encode("ascii")


def walk_dir(root: str | os.PathLike[str]) -> list[tuple[str, str, os.stat_result]]:
    """(relative path, kind, lstat) of every file and symlink under `root`, sorted.

    Directories are descended (symlinks to directories are not); empty
    directories contribute nothing, as in git.
    """
    found: list[tuple[str, str, os.stat_result]] = []
    base = os.fspath(root)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(base, rel_dir) if rel_dir else base) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    found.append((rel, ENTRY_LINK, st))
                elif stat.S_ISDIR(st.st_mode):
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    found.append((rel, ENTRY_EXEC if st.st_mode & 0o111 else ENTRY_FILE, st))
    found.sort(key=lambda t: t[0])
    return found


def link_hash(path: str | os.PathLike[str]) -> str:
    return hash_bytes(os.fsencode(os.readlink(path)))
