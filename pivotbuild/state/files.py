"""Crash-safe file writes, removals whose blocks are freed on a thread of
their own (`Frees`), and the `.pivot/` directory."""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import stat
import threading
from pathlib import Path

from pivotbuild.paths import PIPELINE_ONLY, STATE_DIR

# What `os.path.exists` takes for absent: nothing there, a path under a file,
# a symlink that leads to itself.
ABSENT_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)

GITIGNORE = (
    "# Written by pivotbuild: keep local state out of git, but share the config.\n"
    "*\n!.gitignore\n!config.toml\n!pipeline-state\n"
)


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a mix:
    write a temporary file beside it, fsync, rename over, fsync the directory.

    `fsync=False` keeps the rename (a killed process leaves no half-written
    file) but not the flushes, for files that are checked when read, so one a
    power cut left short is simply ignored (run-cache entries)."""
    directory = path.parent
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        try:
            st = os.stat(path)
        except FileNotFoundError:
            os.chmod(tmp, 0o666 & ~_umask())
            held = -1
        else:
            os.chmod(tmp, st.st_mode & 0o7777)
            held = _hold(path, st)
        try:
            os.replace(tmp, path)
        finally:
            FREES.close(held)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not fsync:
        return
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove(path: Path) -> None:
    """Remove the file `path` if it is there, its blocks freed on the
    "frees" thread (see `Frees`)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    with contextlib.suppress(FileNotFoundError):
        unlink(path, st)


def unlink(path: str | os.PathLike[str], st: os.stat_result) -> None:
    """`os.unlink(path)`, `st` its lstat: if that leaves the file no name,
    its blocks are freed on the "frees" thread (see `Frees`)."""
    held = _hold(path, st) if st.st_nlink == 1 else -1
    try:
        os.unlink(path)
    finally:
        FREES.close(held)


def _hold(path: str | os.PathLike[str], st: os.stat_result) -> int:
    """A descriptor that keeps the file `path` (`st`: its stat) from being
    freed when its name goes, if it has blocks to free; else -1."""
    if not st.st_blocks or not _O_PATH or not stat.S_ISREG(st.st_mode):
        return -1
    try:
        return os.open(path, _O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return -1


_O_PATH = getattr(os, "O_PATH", 0)  # (Linux)


TRASH = "trash"  # `<root>/.pivot/trash/`: directories being removed on the frees thread
_TRASHES: set[str] = set()  # the trash directories this process made sure of (and swept)


def remove_tree_later(path: str, trash: Path) -> None:
    """Remove the directory `path` (not a symlink to one): renamed into
    `trash` (the project's `.pivot/trash/`) at once, and removed from there
    on the "frees" thread (see `Frees`: each file's blocks freed can wait
    for the disk).  Where it cannot be renamed there (another file system,
    a mount point), it is removed here.  A process that exits waits for
    the thread to finish removing (`Frees.drain`); what a process killed
    meanwhile left in `trash` is removed by the next (`sweep_trash`)."""
    where = os.fspath(trash)
    if not _ready(where, make=True):
        remove_tree(path)
        return
    aside = f"{where}/{os.getpid()}-{os.urandom(6).hex()}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        if exc.errno in ABSENT_ERRNOS:
            if not os.path.lexists(path):
                raise
            _TRASHES.discard(where)  # (the trash gone meanwhile: made again next time)
        remove_tree(path)
        return
    FREES.remove_tree(aside)


def sweep_trash(trash: Path) -> None:
    """Have the frees thread remove what `trash` holds, if it is there: what
    a process killed while it removed it there left (once a process: a
    build with stages to run asks, build/executors/local.py)."""
    _ready(os.fspath(trash), make=False)


def _ready(where: str, *, make: bool) -> bool:
    """Whether the trash directory `where` is there (made, with `make`: in
    `.pivot/`, which the build made, not where git would see it).  The
    first time a process finds it, what it holds is handed to the thread."""
    if where in _TRASHES:
        return True
    try:
        if make:
            with contextlib.suppress(FileExistsError):
                os.mkdir(where)
        left = os.listdir(where)
    except OSError:
        return False
    _TRASHES.add(where)
    for name in left:
        FREES.remove_tree(f"{where}/{name}")
    return True


class Frees:
    """Closes, on a thread of its own ("frees"), the descriptors that kept
    a replaced or removed file's blocks from being freed as its name went,
    and removes the directories `remove_tree_later` moved aside.

    Freeing a file's blocks can wait for the disk: ext4 mounted with
    `discard`, without a journal (as on this project's machines), discards
    them then and there and waits for it, behind every write sent to the
    device before.  Replacing a lockfile at a build's end once waited 1.19
    s for that, where it usually takes a millisecond (docs/performance.md,
    the thirty-fourth session).  The last descriptor's close frees them,
    here, so the build goes on (a process that exits meanwhile still waits
    for the thread: the kernel's exit does).  The thread is started when
    first needed and lives as long as the process."""

    THREAD = "frees"

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._fds: list[int] = []
        self._trees: list[str] = []
        self._removing = False
        self._thread: threading.Thread | None = None

    def close(self, fd: int) -> None:
        """Close `fd` on the thread (-1: nothing)."""
        if fd >= 0:
            with self._lock:
                self._fds.append(fd)
                self._wake()

    def remove_tree(self, path: str) -> None:
        """Remove the directory `path` on the thread (errors ignored)."""
        with self._lock:
            self._trees.append(path)
            self._wake()

    def drain(self) -> None:
        """Wait until the directories handed over are removed (at the
        interpreter's exit; `pivotbuild` calls it before its `os._exit`:
        cli/__init__.py)."""
        with self._lock:
            while self._trees or self._removing:
                self._lock.wait()

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.THREAD, daemon=True)
            self._thread.start()
        self._lock.notify_all()  # (all: `drain` waits on the same condition)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._removing = False
                self._lock.notify_all()
                while not self._fds and not self._trees:
                    self._lock.wait()
                fds, self._fds = self._fds, []
                trees, self._trees = self._trees, []
                self._removing = bool(trees)
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for tree in trees:
                remove_tree(tree, ignore_errors=True)


FREES = Frees()
atexit.register(FREES.drain)  # (the Python API's callers: no tree left half removed)


def append_whole(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Append `data` to the existing file `path` (and fsync it, with `fsync`):
    all of it, or (on an error such as a full disk) none, the file cut back to
    its length before.  For files of checked frames, where a crash mid-append
    leaves a frame that fails its check (the stat cache)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # (else the frame fails its check when read, and is dropped)
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _create_beside(path: Path) -> tuple[int, str]:
    """A new file `.NAME.PID-RANDOM.tmp` beside `path`, open for writing, mode 0600:
    what `tempfile.mkstemp` makes, without importing tempfile (and random with
    it), which cost every build with work some 2 ms of its start-up."""
    while True:
        tmp = f"{path.parent}/.{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:  # another writer's name: draw again
            continue


def _umask() -> int:
    """The process's umask, read without changing it where /proc allows: setting
    it to read it (the portable way) would, for that instant, give a file that
    another thread creates, or a stage a worker thread starts, the wrong
    permissions.  (Read as bytes: a text file's codec lookup imports
    `encodings.ascii`, 0.5 ms of a build's end.)"""
    try:
        with open("/proc/self/status", "rb") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith(b"Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
        return mask


def ensure_state_dir(directory: Path, root: Path | None = None) -> Path:
    """`directory/.pivot/` with its `.gitignore`, created if missing.  Given the
    project `root` and a `directory` below it (an included pipeline), the state
    directory is marked as that pipeline's, so it never makes `directory` look
    like a project root of its own."""
    state = directory / STATE_DIR
    state.mkdir(exist_ok=True)
    ignore = state / ".gitignore"
    if not ignore.exists():
        write_atomic(ignore, GITIGNORE.encode())
    if root is not None and directory.resolve() != root.resolve():
        marker = state / PIPELINE_ONLY
        if not marker.exists():
            text = f"The state of the pipeline in this directory; its project root is {root}.\n"
            write_atomic(marker, text.encode("utf-8", "surrogateescape"))
    return state


def remove_tree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """`shutil.rmtree`, with shutil imported only when a directory must go:
    shutil imports bz2 and lzma, 2 ms of a build that removes none."""
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)
