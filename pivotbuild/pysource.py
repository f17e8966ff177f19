"""The fingerprint of a `py:` stage by its source: the normalised code of its
function and of everything of the project that function reaches, read with
`ast` (user code is never imported or run).

The fingerprint is a set of parts, one per *unit*: a top-level function or
class with its decorators and methods ("helpers.fmt"), the statements
assigning a top-level name ("steps.SCALE"), or the rest of a module's
top-level code, its imports included ("helpers"), which counts for every
module reached, since importing a module runs it.  From the stage's function
the names each reached unit uses are followed: to units of the same module,
through imports (`import helpers` then `helpers.fmt`, `from helpers import
fmt`, `import pkg.mod as m` then `m.f`, relative imports, packages) to units
of project modules; a module used as an object in a way that cannot be read
(`getattr(helpers, name)`) or star-imported reaches all of its units.  A
module is looked for in the pipeline directory, then the project root; one
found elsewhere or not at all (the standard library, installed packages)
counts nothing.  Imports under `if TYPE_CHECKING:` do not run, so they reach
nothing.

Where the code cannot be read exactly the walk over-approximates (a local
variable named like a top-level function reaches that function): a part too
many costs one rerun, a part too few would leave a stage stale.

Each file is read into its units once (pyunits.py: normalised, so comments,
docstrings and formatting change no part); a `SourceCache` keeps them by stat
stamp, and each fingerprint by the stamps of what it read.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from pivotbuild.errors import PivotError
from pivotbuild.pyunits import Import, Parsed, Unit, parse
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.stamps import Stamp, is_racy, stamp
from pivotbuild.structs import struct


@struct(frozen=True, slots=True)
class SourceFingerprint:
    """What a `py:` stage's code is made of.

    `parts`: sorted (unit name, XXH3-128 hex digest of its normalised code),
    e.g. ("steps.square", ...), ("steps", ...) for the module's other
    top-level code, ("helpers.fmt", ...).  `files`: every project source file
    read, absolute and sorted: while none of them and none of `dirs` changes,
    the fingerprint cannot change.  `dirs`: the directories a module was
    looked for in (a new file there could shadow or supply a module)."""

    parts: tuple[tuple[str, str], ...]
    files: tuple[str, ...]
    dirs: tuple[str, ...]


class SourceError(PivotError):
    """A `py:` stage's code cannot be read: its module or function is missing,
    or a project file it reaches does not parse (then `path`, `line` and
    `col` locate the error)."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.col = col


@struct(frozen=True, slots=True)
class _Mod:
    """A module found: its file (None: a namespace package), where its
    submodules are (empty: not a package), and whether it is the project's."""

    name: str
    path: str | None
    dirs: tuple[str, ...]
    project: bool


class _Memo:
    __slots__ = ("digest", "parsed", "stamp", "trusted")

    def __init__(self, stamp: Stamp, trusted: bool, digest: str, parsed: Parsed) -> None:
        self.stamp = stamp
        self.trusted = trusted  # the stamp was not racy when the file was read: it alone proves the contents
        self.digest = digest
        self.parsed = parsed


class SourceCache:
    """Parsed files by stamp, and fingerprints by the stamps of what they
    read, so that computing one again over unchanged files costs `os.stat`
    calls only.  A racy stamp (taken in the clock tick of the file's last
    change) is checked by reading the file again."""

    def __init__(self) -> None:
        self._files: dict[str, _Memo] = {}
        self._results: dict[tuple[str, str, str], tuple[SourceFingerprint, tuple[tuple[str, Stamp], ...]]] = {}
        self.files_read = 0
        self.files_parsed = 0

    def fingerprint(
        self, ref: str, pipeline_dir: str | os.PathLike[str], project_root: str | os.PathLike[str]
    ) -> SourceFingerprint:
        """The fingerprint of the stage `py: ref` ("module:function"); SourceError if it cannot be read."""
        key = (ref, os.path.abspath(pipeline_dir), os.path.abspath(project_root))
        known = self._results.get(key)
        if known is not None and all(_stamp_or_none(path) == st for path, st in known[1]):
            return known[0]
        walk = _Walk(self, key[1], key[2])
        result = walk.run(ref)
        if walk.trusted:
            self._results[key] = (result, tuple(walk.stamps.items()))
        else:
            self._results.pop(key, None)
        return result

    def parsed(self, path: str, name: str) -> tuple[Parsed, Stamp, bool]:
        """The file at `path` (module `name`, for messages) parsed, its stamp, and whether that is trusted."""
        now = time.time_ns()
        try:
            st = os.stat(path)
            memo = self._files.get(path)
            if memo is not None and memo.trusted and memo.stamp == stamp(st):
                return memo.parsed, memo.stamp, True
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise SourceError(f"cannot read module '{name}' ({path}): {exc.strerror}", path) from exc
        self.files_read += 1
        digest, trusted = hash_bytes(data), not is_racy(st, now)
        if memo is None or memo.digest != digest:
            memo = _Memo(stamp(st), trusted, digest, _parse(data, path, name))
            self.files_parsed += 1
        self._files[path] = _Memo(stamp(st), trusted, digest, memo.parsed)
        return memo.parsed, stamp(st), trusted


_CACHE = SourceCache()


def fingerprint(
    ref: str,
    pipeline_dir: str | os.PathLike[str],
    project_root: str | os.PathLike[str],
    cache: SourceCache | None = None,
) -> SourceFingerprint:
    """The fingerprint of the stage `py: ref` ("module:function", the module
    looked for under `pipeline_dir`, then `project_root`).  `cache` defaults
    to one kept for the life of the process.  Raises SourceError."""
    return (cache or _CACHE).fingerprint(ref, pipeline_dir, project_root)


def imported_files(
    ref: str, pipeline_dir: str | os.PathLike[str], project_root: str | os.PathLike[str]
) -> tuple[str, ...]:
    """The project's source files running the stage `py: ref` may import,
    absolute and sorted: its fingerprint's, and those of the project modules
    each of them imports at top level, used or not, transitively (importing a
    module runs its imports: code run elsewhere, on a Dask worker, needs them
    all).  Raises SourceError."""
    walk = _Walk(_CACHE, os.path.abspath(pipeline_dir), os.path.abspath(project_root))
    walk.run(ref)
    done: set[str] = set()
    while todo := [name for name, parsed in walk.entered.items() if parsed is not None and name not in done]:
        for name in todo:
            done.add(name)
            mod, parsed = walk.mods[name], walk.entered[name]
            assert mod is not None and parsed is not None
            for imp in (*(i for found in parsed.imports.values() for i in found), *parsed.stars):
                target = walk.absolute(mod, imp)
                found = walk.find(target) if target else None
                if found is None or not found.project:
                    continue
                walk.enter(found)
                sub = walk.find(f"{target}.{imp.name}") if imp.name and found.dirs else None
                if sub is not None and sub.project:  # (`from pkg import sub`)
                    walk.enter(sub)
    return tuple(sorted(walk.files))


def _stamp_or_none(path: str) -> Stamp | None:
    try:
        return stamp(os.stat(path))
    except OSError:
        return None


class _Walk:
    """One fingerprint's walk over the units a function reaches."""

    def __init__(self, cache: SourceCache, pipeline_dir: str, project_root: str) -> None:
        self.cache = cache
        self.roots = tuple(dict.fromkeys((pipeline_dir, project_root)))
        self.root_real = os.path.realpath(project_root)
        self.stamps: dict[str, Stamp] = {}  # each file read and directory searched: how it looked
        self.files: set[str] = set()
        self.trusted = True
        self.mods: dict[str, _Mod | None] = {}  # dotted name -> where it was found (None: not at all)
        self.entered: dict[str, Parsed | None] = {}
        self.digests: dict[str, set[str]] = {}  # part name -> digests (more than one: two units share a name)
        self.seen: set[tuple[str, str]] = set()
        self.resolved: set[tuple[str, str, tuple[str, ...], bool]] = set()
        self.whole: set[str] = set()
        self.todo: list[tuple[_Mod, Unit]] = []

    def run(self, ref: str) -> SourceFingerprint:
        module, sep, function = ref.partition(":")
        if not sep or not function.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
            raise SourceError(f"'py: {ref}' must name a function as 'module:function' (e.g. 'src.train:main')")
        mod = self.find(module)
        top = module.partition(".")[0]
        if mod is None and (self.find(top) is not None or not _importable(top)):
            rel = module.replace(".", "/")
            where = " or ".join(self.roots)
            raise SourceError(
                f"module '{module}' not found under {where} (looked for {rel}.py and {rel}/__init__.py); "
                f"create it or fix 'py: {ref}'"
            )
        if mod is not None and mod.project:
            parsed = self.enter(mod)
            if parsed is None or not ({function, "__getattr__"} & parsed.bound or parsed.stars):
                from pivotbuild.suggest import did_you_mean

                hint = did_you_mean(function, parsed.bound) if parsed is not None else ""
                raise SourceError(f"module '{module}' has no function '{function}'{hint}; define it or fix 'py: {ref}'")
            self.resolve(mod, function, ())
            while self.todo:
                owner, unit = self.todo.pop()
                for name, chain in unit.uses:
                    self.use(owner, unit, name, chain)
        parts = (
            (name, ds.pop() if len(ds) == 1 else hash_bytes("\n".join(sorted(ds)).encode()))
            for name, ds in self.digests.items()
        )
        dirs = sorted(p for p in self.stamps if p not in self.files)
        return SourceFingerprint(tuple(sorted(parts)), tuple(sorted(self.files)), tuple(dirs))

    # -- finding modules

    def find(self, name: str) -> _Mod | None:
        """Where module `name` is, as Python's path finder would find it
        (a package's __init__.py, else a .py file, else a namespace package)."""
        if name in self.mods:
            return self.mods[name]
        head, _, part = name.rpartition(".")
        search: tuple[str, ...] = self.roots
        if head:
            parent = self.find(head)
            search = parent.dirs if parent is not None and parent.project else ()
        found: _Mod | None = None
        portions = []
        for d in search:
            if not self.searched(d):
                continue
            base = os.path.join(d, part)
            if self.searched(base):
                init = os.path.join(base, "__init__.py")
                if _is_file(init):
                    found = _Mod(name, init, (base,), self.inside(init))
                    break
                portions.append(base)
            if _is_file(base + ".py"):
                found = _Mod(name, base + ".py", (), self.inside(base + ".py"))
                break
        if found is None and portions:
            found = _Mod(name, None, tuple(portions), any(self.inside(p) for p in portions))
        self.mods[name] = found
        return found

    def searched(self, d: str) -> bool:
        """Is `d` a directory?  If so, its stamp is kept: a file added there could change what is found."""
        if d in self.stamps:
            return True
        now = time.time_ns()
        try:
            st = os.stat(d)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        self.stamps[d] = stamp(st)
        self.trusted = self.trusted and not is_racy(st, now)
        return True

    def inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.root_real or real.startswith(self.root_real + os.sep)

    # -- reaching units

    def enter(self, mod: _Mod) -> Parsed | None:
        """Reach module `mod` as importing it would: its packages' top-level code, then its own."""
        if mod.name in self.entered:
            return self.entered[mod.name]
        head = mod.name.rpartition(".")[0]
        parent = self.find(head) if head else None
        if parent is not None and parent.project:
            self.enter(parent)
        parsed = None
        if mod.project and mod.path is not None:
            parsed, st, trusted = self.cache.parsed(mod.path, mod.name)
            self.stamps[mod.path] = st
            self.files.add(mod.path)
            self.trusted = self.trusted and trusted
        self.entered[mod.name] = parsed
        if parsed is not None:
            self.add(mod, "", parsed.body)
            for imp in parsed.stars:
                target = self.absolute(mod, imp)
                star = self.find(target) if target else None
                if star is not None:
                    self.reach(star, ())
        return parsed

    def add(self, mod: _Mod, name: str, unit: Unit) -> None:
        if (mod.name, name) in self.seen:
            return
        self.seen.add((mod.name, name))
        self.digests.setdefault(f"{mod.name}.{name}" if name else mod.name, set()).add(unit.digest)
        self.todo.append((mod, unit))

    def use(self, mod: _Mod, unit: Unit, name: str, chain: tuple[str, ...]) -> None:
        """Follow a name `unit` (of `mod`) uses: to what its own imports bind
        and to the module's name (both: an import in a nested function need
        not shadow the name everywhere in the unit)."""
        for imp in unit.imports.get(name, ()):
            self.follow(mod, imp, chain)
        self.resolve(mod, name, chain, inside=True)

    def resolve(self, mod: _Mod, name: str, chain: tuple[str, ...], inside: bool = False) -> None:
        """Reach what top-level `name` of `mod` is: a unit, what an import
        bound, or else a submodule (not for a name `mod`'s own code uses,
        most of which are local variables and builtins: that would cost a
        lookup each, and a package's code sees its submodules by importing them)."""
        if (mod.name, name, chain, inside) in self.resolved:
            return
        self.resolved.add((mod.name, name, chain, inside))
        parsed = self.enter(mod)
        found = False
        if parsed is not None:
            unit = parsed.units.get(name)
            if unit is not None:
                self.add(mod, name, unit)  # attributes of a class or value count with it
                found = True
            for imp in parsed.imports.get(name, ()):
                self.follow(mod, imp, chain)
                found = True
        if not found and mod.dirs and not inside:
            sub = self.find(f"{mod.name}.{name}")
            if sub is not None:
                self.reach(sub, chain)

    def follow(self, mod: _Mod, imp: Import, chain: tuple[str, ...]) -> None:
        target = self.absolute(mod, imp)
        found = self.find(target) if target else None
        if found is None or not found.project:
            return
        if imp.name is None:
            self.reach(found, chain)
            return
        self.resolve(found, imp.name, chain)
        if found.dirs:  # `from pkg import sub`: an attribute of pkg, or else its submodule (both count)
            sub = self.find(f"{target}.{imp.name}")
            if sub is not None:
                self.reach(sub, chain)

    def reach(self, mod: _Mod, chain: tuple[str, ...]) -> None:
        """Reach module `mod` used as an object, then `chain` off it; with no chain, all of it."""
        if not mod.project:
            return
        parsed = self.enter(mod)
        if chain:
            self.resolve(mod, chain[0], chain[1:])
        elif parsed is not None and mod.name not in self.whole:
            self.whole.add(mod.name)
            for name in parsed.units:
                self.resolve(mod, name, ())
            for name in parsed.imports:
                self.resolve(mod, name, ())

    @staticmethod
    def absolute(mod: _Mod, imp: Import) -> str | None:
        """The absolute module name an import in `mod` names (None: a relative import past the top)."""
        if imp.level == 0:
            return imp.module
        package = mod.name if mod.dirs else mod.name.rpartition(".")[0]
        parts = package.split(".") if package else []
        keep = len(parts) - (imp.level - 1)
        if keep <= 0:
            return None
        return ".".join([*parts[:keep], *([imp.module] if imp.module else [])])


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _importable(top: str) -> bool:
    """Can top-level module `top` be imported from outside the project (the
    standard library, an installed package)?  Found without running it."""
    from importlib.machinery import PathFinder

    return top in sys.builtin_module_names or PathFinder.find_spec(top, [p for p in sys.path if p]) is not None


def _parse(data: bytes, path: str, name: str) -> Parsed:
    try:
        return parse(data, path)
    except SyntaxError as exc:
        line, col = exc.lineno or 1, exc.offset or 1
        raise SourceError(
            f"{path}:{line}:{col}: {exc.msg} in module '{name}', which a py: stage reaches; fix it", path, line, col
        ) from exc
    except ValueError as exc:  # source code cannot contain null bytes
        raise SourceError(f"{path}: {exc} in module '{name}', which a py: stage reaches; fix it", path) from exc
