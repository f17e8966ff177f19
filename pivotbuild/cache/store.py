"""The content-addressed cache at `<root>/.pivot/cache`: objects named by their XXH3-128.

A file output is stored as one object; a directory output as its files'
objects plus a manifest object (the directory's hash is the manifest's hash,
so the manifest names itself).  A large object is a file of its own,
`objects/ab/cdef...`, written atomically (a temporary name, then a rename) and
made read-only; a small one (up to `pack.PACK_MAX`) is a record in a pack
(pack.py: a file per object is what a small object would cost).  Every object
read back is verified against its name, and a corrupt one is removed and
reported, never checked out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from pivotbuild.cache.copying import Held, clone_and_hash, clone_or_copy, copy_and_hash, send, write_new
from pivotbuild.cache.pack import PACK_MAX, PACKS, Packs
from pivotbuild.state.files import remove_tree
from pivotbuild.state.hashing import (
    ENTRY_EXEC,
    ENTRY_FILE,
    ENTRY_LINK,
    ManifestEntry,
    hash_bytes,
    hash_file,
    manifest_bytes,
    read_small,
)
from pivotbuild.state.stamps import changes_show, stamp

OBJECTS = "objects"
SMALL = 1 << 20  # files up to this size are stored from memory, read once


class Mode(Enum):
    """How checkout puts an object into the workspace."""

    COPY = "copy"  # reflink where the filesystem shares extents, else a real copy
    REFLINK = "reflink"  # the same, but a filesystem that cannot share extents is reported (once)
    HARDLINK = "hardlink"
    SYMLINK = "symlink"

    @property
    def copies(self) -> bool:
        """Whether the workspace gets its own writable copy (not the cache's object)."""
        return self is Mode.COPY or self is Mode.REFLINK


def _content_stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What of a stamp a `write` changes and making a file read-only does not."""
    return st.st_size, st.st_mtime_ns, st.st_ino


class Linked:
    """What `Cache.ingest_by_link` made of a file.  (A plain class: a
    NamedTuple's class is compiled from source as it is made.)"""

    __slots__ = ("digest", "is_object", "proven", "stat")

    def __init__(self, digest: str, stat: os.stat_result, proven: bool, is_object: bool) -> None:
        self.digest = digest
        self.stat = stat  # a stamp for the file, taken before its hash was read (or matching one)
        self.proven = proven  # that stamp proves the hash already (see ingest_by_link)
        self.is_object = is_object  # the file became the cache's object (it was not there before)


class CorruptObject(Exception):
    """An object whose content does not match its name (it has been removed), or
    a manifest that cannot be parsed."""


class MissingObject(Exception):
    """An object the cache does not hold."""


def parse_manifest(blob: bytes, digest: str) -> list[ManifestEntry]:
    """The entries of the directory manifest `blob` (object `digest`, verified
    by the caller); CorruptObject if it is not a manifest at all."""
    import json  # (only a directory's manifest: a build of files does without)

    entries = []
    try:
        for line in blob.decode("ascii").splitlines():
            kind, h, quoted = line.split(" ", 2)
            path = json.loads(quoted)
            if kind not in (ENTRY_FILE, ENTRY_EXEC, ENTRY_LINK) or not isinstance(path, str):
                raise ValueError(line)
            entries.append(ManifestEntry(path, kind, h))
    except ValueError:  # a file object named where a manifest should be
        raise CorruptObject(digest) from None
    return entries


def _tmp_stem() -> str:
    """A temporary file's name in the cache, by its writer (gc knows whose it is)."""
    return f".tmp-{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}"


class Cache:
    def __init__(self, directory: Path, on_notice: Callable[[str], None] | None = None) -> None:
        self.dir = directory
        self.objects = directory / OBJECTS
        self._objects = str(self.objects)  # (a string: `has` is asked for every output a build stores)
        self.packs = Packs(directory / PACKS)
        self.notice = on_notice or (lambda _text: None)
        self._fell_back: set[Mode] = set()
        self._fell_back_lock = threading.Lock()
        self._dirs: set[str] = set()  # object directories known to exist
        self._shards_looked = False  # whether the first link looked for the object directories (_shards_ahead)
        self._making: threading.Thread | None = None  # the thread making them (joined by `close`)
        self._clones = True  # until a reflink fails: then this filesystem copies
        # Set in reflink mode: a copy that could not be a reflink is reported, once.
        self.wants_reflinks = False
        # Set for a resident engine's build: the copies' writeback waits for its end (copying.Held).
        self.held: Held | None = None

    def path_of(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        # (access, not isfile: a missing object, the common answer, raises no exception)
        # (and not a digest too short to name a file: the shard directory itself exists)
        return digest in self.packs or (
            len(digest) > 2 and os.access(f"{self._objects}/{digest[:2]}/{digest[2:]}", os.F_OK)
        )

    def close(self) -> None:
        """Index the pack this process wrote (see pack.py); a build ends with
        this.  The object directories a thread was making are all made: a
        process that ended first would leave the next build to make the
        rest (a build server would find that build's thread running after
        it, and take it for one the build left behind: cli/server.py)."""
        if self._making is not None:
            self._making.join()
            self._making = None
        self.packs.close()

    # -- storing ------------------------------------------------------------------

    def store_file(self, src: Path, digest: str) -> bool:
        """Store `src` as object `digest` unless present.  The workspace file is
        never modified.  Returns False (storing nothing) if `src` no longer
        hashes to `digest` (it changed since it was hashed).

        A small file is read once, checked and written from memory; a large one
        is cloned or copied and the copy checked.  Objects are not fsync'ed
        one by one: every read of an object verifies it against its name, so
        one a power cut left short is caught and never checked out."""
        if self.has(digest):
            return True
        if os.stat(src).st_size <= PACK_MAX:
            actual, data = read_small(src, PACK_MAX)
            if actual != digest:
                return False
            if data is not None:
                self.packs.add(digest, data)
                return True
        if os.stat(src).st_size <= SMALL:
            actual, data = read_small(src, SMALL)
            if actual != digest:
                return False
            if data is not None:
                self._write_file(digest, data)
                return True
        return self.admit(digest, lambda tmp: self._copy_into(src, tmp, 0o444))

    def admit(self, digest: str, fill: Callable[[str], object]) -> bool:
        """Object `digest` as a file of its own, written by `fill(tmp)` into a
        temporary file of the cache's naming (gc knows whose it is) and kept
        only if it hashes to `digest`; False (keeping nothing) if not."""
        dest = self.path_of(digest)
        self._ensure_dir(dest.parent)
        tmp = self._tmp_name(dest)
        try:
            fill(tmp)
            if hash_file(tmp) != digest:
                return False
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def ingest(self, src: str, size: int | None = None) -> str:
        """Store the file `src` and return its hash, reading it once: its bytes
        are hashed as they are copied, so the object is exactly what was
        hashed even if `src` changes meanwhile.  (A large file is cloned where
        the filesystem shares extents, and the clone hashed.)  `size`: as a
        `stat` the caller took found it (else it is asked), only how much
        to read first: a file that grew or shrank since is stored whole."""
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if size is None:
                size = os.fstat(fd).st_size
            if size <= SMALL:
                data = os.read(fd, size + 1)
                if len(data) <= size:
                    while len(data) < size and (more := os.read(fd, size - len(data))):
                        data += more
                    return self.store_bytes(data)
                os.lseek(fd, 0, os.SEEK_SET)
            self._ensure_dir(self.objects)
            tmp = self._tmp_name(self.objects / "x")
            try:
                # Writable until filled (the direct-I/O copy opens it again), then read-only.
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    cloned = clone_and_hash(fd, out, tmp) if self._clones else None
                    copied = cloned is None
                    if cloned is None:
                        self._clones = False
                        self._copied(cloned=False)
                        cloned = copy_and_hash(fd, out, tmp)
                    digest = cloned
                    os.fchmod(out, 0o444)
                    kept = not self.has(digest)
                    if kept and copied and self.held is None:
                        send(out)  # (its writeback begun: copying.send)
                finally:
                    os.close(out)
                if kept:
                    dest = self.path_of(digest)
                    self._ensure_dir(dest.parent)
                    os.replace(tmp, dest)
                    if copied and self.held is not None:
                        self.held.add(os.fspath(dest), size)  # (sent once the build answers: copying.Held)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return digest
        finally:
            os.close(fd)

    def ingest_by_link(self, src: str) -> Linked:
        """Store the file `src` by hard-linking it into the cache (hardlink mode,
        where a filesystem without reflinks would otherwise copy every output).
        The shared file is made read-only, as hardlink mode promises, so an
        edit cannot reach the cache through it.  If the object is already
        there, `src` is left as it was; if the link is refused (another
        filesystem), `src` is stored as a copy.

        The stamp is taken by `stat` before the link, the hash read after it:
        the link waits for a write under way (see state/stamps.py), so where
        changes after a `stat` show (`stamps.changes_show`) the stamp proves
        the hash at once (`Linked.proven`), if the inode linked is the one
        stamped and nothing touched it while it was read, ctime included.
        Making the file read-only changes its ctime, so the stat after is
        returned if its size, mtime and inode are still the stamp's; else the
        stamp before, which no longer matches the file, not proven."""
        before = os.stat(src)
        objects = self._objects  # (strings, not Paths: the build loop links most outputs, one by one)
        if objects not in self._dirs:
            self._ensure_dir(objects)
        if not self._shards_looked:
            self._shards_ahead()
        tmp = f"{objects}/{_tmp_stem()}"
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            self._fall_back(Mode.HARDLINK)
            return Linked(self.ingest(src), before, False, False)
        made = False
        try:
            linked = os.stat(tmp)  # the inode hashed (the link changed its ctime)
            digest = hash_file(tmp)  # the linked inode itself: the object is what was hashed
            hashed = os.stat(tmp)  # nothing touched it while it was read, not even its ctime
            if not self.has(digest):
                shard = f"{objects}/{digest[:2]}"
                dest = f"{shard}/{digest[2:]}"
                if shard not in self._dirs:
                    self._ensure_dir(shard)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
                made = True
        finally:
            if not made:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        after = os.stat(src)
        if _content_stamp(after) == _content_stamp(before):
            held = _content_stamp(linked) == _content_stamp(before) and stamp(hashed) == stamp(linked)
            return Linked(digest, after, held and changes_show(before), made)
        return Linked(digest, before, False, made)

    def forget_link(self, path: str, digest: str) -> bool:
        """`path` no longer holds `digest`: if it is object `digest` itself (hard
        linked in hardlink mode), that object changed with it, so it goes
        (True if it went)."""
        obj = self.path_of(digest)
        try:
            if os.path.samefile(obj, path):
                os.unlink(obj)
                return True
        except OSError:
            pass
        return False

    def store_bytes(self, data: bytes) -> str:
        digest = hash_bytes(data)
        if len(data) <= PACK_MAX:
            # (Not `has`: a small object is a file of its own only if it was
            # fetched or hard-linked; packing it too costs a few bytes, once.)
            self.packs.add(digest, data)
        elif not self.has(digest):
            self._write_file(digest, data)
        return digest

    def _write_file(self, digest: str, data: bytes) -> None:
        """Object `digest` as a file of its own, holding `data`, written atomically."""
        dest = self.path_of(digest)
        self._ensure_dir(dest.parent)
        tmp = self._tmp_name(dest)
        try:
            write_new(tmp, data)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _shards_ahead(self) -> None:
        """At the first link: if the cache lacks some of its 256 object
        directories (`objects/ab/`), a thread makes them, rather than the
        build loop making each at the first object that needs it.

        Hardlink mode links a stage's small outputs into the cache from the
        loop, so each directory a fresh cache makes there holds the next
        stage back; on ext4 without a journal, where a new inode costs more
        the more were removed in the last minutes (benchmarks/creation.py),
        the big lattice's clean build spent 120 of its 1,900 ms so
        (docs/performance.md, the twenty-fifth session).  The loop still
        makes one the thread has not reached (both may: each allows the
        other's).  A cache that has them all costs one listing, once."""
        self._shards_looked = True
        try:
            there = {name for name in os.listdir(self._objects) if len(name) == 2}
        except OSError:
            return
        wanted = [f"{i:02x}" for i in range(256)]
        if not there.issuperset(wanted):
            missing = [f"{self._objects}/{name}" for name in wanted if name not in there]
            self._making = threading.Thread(
                target=self._make_dirs, args=(missing,), name="cache directories", daemon=True
            )
            self._making.start()

    def _make_dirs(self, directories: list[str]) -> None:
        for directory in directories:
            if directory not in self._dirs:
                try:
                    os.mkdir(directory)
                except FileExistsError:
                    pass
                except OSError:  # (a full disk: the loop makes what it needs, and says so if it cannot)
                    return
                self._dirs.add(directory)

    def _ensure_dir(self, directory: Path | str) -> None:
        name = os.fspath(directory)
        if name not in self._dirs:
            os.makedirs(name, exist_ok=True)
            self._dirs.add(name)

    @staticmethod
    def _tmp_name(dest: Path) -> str:
        return f"{os.fspath(dest.parent)}/{_tmp_stem()}"

    def store_dir(self, src: Path, entries: list[ManifestEntry], digest: str) -> bool:
        """Store a directory: an object per file (a symlink's object is its target
        text, whose hash its manifest entry already is), then the manifest object."""
        manifest = manifest_bytes(entries)
        if hash_bytes(manifest) != digest:
            return False
        for e in entries:
            if e.kind == ENTRY_LINK:
                if self.store_bytes(os.fsencode(os.readlink(src / e.path))) != e.hash:
                    return False
            elif not self.store_file(src / e.path, e.hash):
                return False
        self.store_bytes(manifest)
        return True

    # -- reading --------------------------------------------------------------------

    def verify(self, digest: str) -> None:
        """Raise MissingObject, or CorruptObject (after removing it)."""
        if self.packed(digest) is not None:
            return
        try:
            actual = hash_file(self.path_of(digest))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise MissingObject(digest) from None
        if actual != digest:
            self.remove(digest)
            raise CorruptObject(digest)

    def read(self, digest: str) -> bytes:
        """The bytes of a small object (a manifest, a symlink's target), verified:
        MissingObject, or CorruptObject (after removing it)."""
        data = self.packed(digest)
        if data is not None:
            return data
        try:
            data = self.path_of(digest).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise MissingObject(digest) from None
        if hash_bytes(data) != digest:
            self.remove(digest)
            raise CorruptObject(digest)
        return data

    def packed(self, digest: str) -> bytes | None:
        """The object's bytes if a pack holds it, verified; None if no pack
        does.  A record that is not what it is named is removed, and then
        CorruptObject, unless the object is a file too (for a link): then
        None, and that file is checked by whoever reads it."""
        data = self.packs.read(digest)
        if data is None or hash_bytes(data) == digest:
            return data
        with contextlib.suppress(OSError):  # (a full disk: it stays, and is found corrupt again)
            self.packs.drop([digest])
        if os.path.isfile(self.path_of(digest)):
            return None
        raise CorruptObject(digest)

    def read_manifest(self, digest: str) -> list[ManifestEntry]:
        """The entries of a directory's manifest; MissingObject, or CorruptObject
        if it fails verification or is not a manifest at all."""
        return parse_manifest(self.read(digest), digest)

    def remove(self, digest: str) -> None:
        path = self.path_of(digest)
        with contextlib.suppress(FileNotFoundError):
            path.chmod(0o644)
            path.unlink()
        if digest in self.packs:
            with contextlib.suppress(OSError):  # (a full disk: it stays, and is found corrupt again)
                self.packs.drop([digest])

    # -- checkout -------------------------------------------------------------------

    def checkout_file(self, digest: str, dest: Path, mode: Mode = Mode.COPY, executable: bool = False) -> None:
        """Put object `digest` at `dest` (replacing what is there), verified first.

        A copy is created as a stage creates a file: mode 0666, or 0777 if
        `executable`, less the umask.  In a link mode the file is the object
        itself (read-only), except an executable one: that is a read-only copy,
        because a link would share the object's mode, which has no execute bit."""
        data = self.packed(digest)
        if data is None:
            self.verify(digest)
        src = self.path_of(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(dest.parent / f".{dest.name}.{os.urandom(4).hex()}")
        try:
            if mode.copies or executable:
                if data is not None:
                    write_new(tmp, data, 0o777 if executable else 0o666)
                else:
                    self._copy_into(src, tmp, 0o777 if executable else 0o666, mode)
                if not mode.copies:
                    _make_read_only(tmp)
            else:
                if data is not None:  # a link needs the object as a file of its own
                    self._loosen(digest, data)
                try:
                    if mode is Mode.HARDLINK:
                        os.link(src, tmp)
                    else:
                        os.symlink(src, tmp)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    self._fall_back(mode)
                    self._copy_into(src, tmp, 0o666)
                    _make_read_only(tmp)  # read-only, like the links
            if dest.is_dir() and not dest.is_symlink():
                remove_tree(dest)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def checkout_dir(self, digest: str, dest: Path, mode: Mode = Mode.COPY) -> None:
        """Recreate a directory output from its manifest, replacing what is there.
        Every object is verified before anything in the workspace changes.
        Directories are created as a stage creates them: 0777 less the umask.

        The files inside are never symlinks to the cache (the tree would no longer
        hash to its manifest): in symlink mode they are hard links, like in
        hardlink mode, and executable ones are read-only copies."""
        entries = self.read_manifest(digest)
        for e in entries:
            self.verify(e.hash)
        if mode is Mode.SYMLINK:
            mode = Mode.HARDLINK
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Not tempfile.mkdtemp: it makes 0700, and this directory becomes the output.
        staging = dest.parent / f".{dest.name}.{os.urandom(4).hex()}"
        os.mkdir(staging, 0o777)
        try:
            for e in entries:
                target = staging / e.path
                if e.kind == ENTRY_LINK:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(os.fsdecode(self.read(e.hash)), target)
                else:
                    self.checkout_file(e.hash, target, mode, executable=e.kind == ENTRY_EXEC)
            if dest.is_dir() and not dest.is_symlink():
                remove_tree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(staging, dest)
        finally:
            if staging.exists():
                remove_tree(staging, ignore_errors=True)

    def _loosen(self, digest: str, data: bytes) -> None:
        """Make packed object `digest` a file of its own too (for links to it),
        unless it is one already and intact: a link lets an edit reach it."""
        with contextlib.suppress(OSError):
            if hash_file(self.path_of(digest)) == digest:
                return
        self._write_file(digest, data)

    def _copy_into(self, src: Path, tmp: str, perms: int, mode: Mode = Mode.COPY) -> None:
        """Create `tmp` (the umask applies to `perms`) holding a copy of `src`,
        a reflink where the filesystem can."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, perms)
        try:
            cloned = clone_or_copy(src, fd)
        finally:
            os.close(fd)
        self._copied(cloned, mode)

    def _copied(self, cloned: bool, mode: Mode = Mode.COPY) -> None:
        """A copy was made, as a reflink or not: in reflink mode, a real copy is
        reported (once: the filesystem is the same for the next file)."""
        if not cloned and (mode is Mode.REFLINK or self.wants_reflinks):
            self._fall_back(Mode.REFLINK)

    def _fall_back(self, mode: Mode) -> None:
        with self._fell_back_lock:  # checkouts and the storer's threads share this cache
            if mode in self._fell_back:
                return
            self._fell_back.add(mode)
        if mode is Mode.REFLINK:
            self.notice(
                "this filesystem cannot reflink (share extents) between the cache and the workspace; copying instead"
            )
        else:
            self.notice(f"cannot {mode.value} across filesystems here; copying instead")


def _make_read_only(path: str) -> None:
    """Take the write bits off `path`, keeping the rest (what the umask left)."""
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & 0o555)
