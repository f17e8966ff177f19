"""Damaged cache objects are never checked out.

Each object an output needs (a file's object, a file inside a directory, the
directory's manifest) is damaged four ways (a bit flipped, cut short, emptied,
replaced by another object's content), then read back by `checkout`, by a
build that would restore it (from the lockfile's record or the run cache), and
by `pull` from a directory remote holding the damaged copy (or into a cache
holding one).  Every time the damage is reported, the damaged copy removed,
and the output refetched or rebuilt, never checked out with wrong content.
The objects damaged are those a build makes: small ones, so records in a
pack in the cache; a remote holds them as files, and `pull` fetches them as
files (tests/helpers.py's StoredObject finds them either way).
docs/reliability.md ("Damaged cache objects") gives the figures.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Project
from helpers import StoredObject, cache_digests, statuses

from pivotbuild.cache.store import Cache, CorruptObject, MissingObject, Mode
from pivotbuild.remote import transfer
from pivotbuild.remote.directory import DirectoryRemote
from pivotbuild.state.hashing import ManifestEntry, hash_file, manifest_bytes, walk_dir
from pivotbuild.state.kinds import DIR, FILE
from pivotbuild.state.records import FileRecord

PIPELINE = """
X = 1
stage make:
    outs: out.txt
    run: echo "made ${X} $(seq 1 200)" > $@ && echo ran >> runs.log
stage tree:
    deps: out.txt
    outs: tree/
    run:
        mkdir -p $@/sub
        cp $< $@/copy.txt
        echo "deep ${X}" > $@/sub/deep.txt
        echo ran >> runs.log
"""
WANT = {
    "out.txt": "made 1 " + "\n".join(str(i) for i in range(1, 201)) + "\n",
    "tree/sub/deep.txt": "deep 1\n",
}


def _flip(data: bytes, other: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    return bytes(flipped)


def _truncate(data: bytes, other: bytes) -> bytes:
    return data[: len(data) // 2]


def _empty(data: bytes, other: bytes) -> bytes:
    return b""


def _swap(data: bytes, other: bytes) -> bytes:
    return other


# What each kind of damage makes of an object's bytes (and another object's).
DAMAGE: dict[str, Callable[[bytes, bytes], bytes]] = {
    "bit flip": _flip,
    "truncated": _truncate,
    "emptied": _empty,
    "another object": _swap,
}
# Which object of the X=1 outputs is damaged (the other object: what a swap puts there).
TARGETS = ("file output", "file in a directory", "directory manifest")


def objects(store: Path, root: Path) -> dict[str, StoredObject]:
    """The objects of the workspace's outputs in a cache or a remote, by TARGETS name."""
    (manifest,) = (
        d for d in cache_digests(store) if StoredObject(store, d).read_bytes().startswith((b"f ", b"x ", b"l "))
    )
    objs = {
        "file output": StoredObject(store, hash_file(root / "out.txt")),
        "file in a directory": StoredObject(store, hash_file(root / "tree/sub/deep.txt")),
        "directory manifest": StoredObject(store, manifest),
    }
    assert all(obj.exists() for obj in objs.values()), objs
    return objs


def damage(objs: dict[str, StoredObject], target: str, how: str) -> StoredObject:
    obj = objs[target]
    other = objs["file in a directory" if target == "file output" else "file output"]
    obj.write_bytes(DAMAGE[how](obj.read_bytes(), other.read_bytes()))
    assert not obj.intact()
    return obj


def assert_good(root: Path) -> None:
    for rel, text in WANT.items():
        assert (root / rel).read_text() == text, rel


def assert_never_wrong(root: Path) -> None:
    """Each output is absent or right: a damaged object was never checked out."""
    for rel, text in WANT.items():
        path = root / rel
        assert not path.exists() or path.read_text() == text, rel


def remove_outputs(root: Path) -> None:
    (root / "out.txt").unlink(missing_ok=True)
    shutil.rmtree(root / "tree", ignore_errors=True)


def healed(objs: dict[str, StoredObject]) -> bool:
    return all(obj.intact() for obj in objs.values())


# Through the real command, each operation meets each target once, the kinds of
# damage taking turns (every kind meets every target in the in-process cases below).
KINDS = list(DAMAGE)
cases = pytest.mark.parametrize(("target", "how"), [(t, KINDS[i % len(KINDS)]) for i, t in enumerate(TARGETS)])
rotated = pytest.mark.parametrize(("target", "how"), [(t, KINDS[(i + 1) % len(KINDS)]) for i, t in enumerate(TARGETS)])


@pytest.fixture
def built(project: Project) -> Project:
    project.pivotfile(PIPELINE)
    assert project.run().code == 0
    assert_good(project.root)
    assert all(obj.packed() for obj in objects(project.root / ".pivot/cache", project.root).values())
    return project


@cases
def test_checkout_never_checks_out_a_damaged_object(built: Project, target: str, how: str) -> None:
    objs = objects(built.root / ".pivot/cache", built.root)
    bad = damage(objs, target, how)
    remove_outputs(built.root)
    r = built.run("checkout")
    assert r.code == 1
    assert "corrupt" in r.err and bad.digest in r.err  # reported, naming the object
    assert not bad.exists()  # removed
    assert_never_wrong(built.root)
    b = built.run("--json")  # the next build rebuilds what checkout could not restore, and heals the cache
    assert b.code == 0, b.err
    assert "ran" in statuses(b.out).values()
    assert_good(built.root)
    assert healed(objs)


@cases
def test_a_build_never_restores_a_damaged_object(built: Project, target: str, how: str) -> None:
    objs = objects(built.root / ".pivot/cache", built.root)
    bad = damage(objs, target, how)
    remove_outputs(built.root)  # the lockfile still matches: the build would restore them
    r = built.run("--json")
    assert r.code == 0, r.err
    assert "corrupt" in r.err
    assert "ran" in statuses(r.out).values()
    assert_good(built.root)
    assert healed(objs) and bad.exists()


@rotated
def test_the_run_cache_never_restores_a_damaged_object(built: Project, target: str, how: str) -> None:
    objs = objects(built.root / ".pivot/cache", built.root)
    assert built.run("X=2").code == 0
    bad = damage(objs, target, how)
    r = built.run("--json")  # X back to 1: the run cache names the damaged object
    assert r.code == 0, r.err
    assert "corrupt" in r.err
    assert "ran" in statuses(r.out).values()
    assert_good(built.root)
    assert healed(objs) and bad.exists()


def two_clones(tmp_path: Path) -> tuple[Project, Project, Path]:
    """A project that built and pushed to a directory remote, and a fresh clone of it."""
    share = tmp_path / "share"
    share.mkdir()
    one = Project(tmp_path / "one")
    (one.root / ".pivot").mkdir(parents=True)
    one.pivotfile(PIPELINE)
    assert one.run().code == 0
    assert one.run("remote", "add", "--default", "team", str(share)).code == 0
    assert one.run("push").code == 0
    two = Project(tmp_path / "two")
    (two.root / ".pivot").mkdir(parents=True)
    for rel in ("Pivotfile", "Pivotfile.lock", ".pivot/config.toml"):
        shutil.copy(one.root / rel, two.root / rel)
    return one, two, share


@cases
def test_pull_never_checks_out_an_object_damaged_on_the_remote(tmp_path: Path, target: str, how: str) -> None:
    one, two, share = two_clones(tmp_path)
    remote_objs = objects(share, one.root)
    assert all(obj.path.is_file() and not obj.packed() for obj in remote_objs.values())  # a remote holds files
    bad = damage(remote_objs, target, how)
    r = two.run("pull")
    assert r.code == 1
    assert "corrupt" in r.err and bad.digest in r.err
    assert not bad.exists()  # removed from the remote, so that a push can replace it
    assert_never_wrong(two.root)
    b = two.run("--json")  # rebuilt where it could not be fetched
    assert b.code == 0, b.err
    assert_good(two.root)
    assert two.run("push").code == 0  # and the remote heals
    assert healed(remote_objs)


@rotated
def test_pull_refetches_an_object_damaged_in_the_local_cache(tmp_path: Path, target: str, how: str) -> None:
    _, two, _ = two_clones(tmp_path)
    assert two.run("pull").code == 0
    local_objs = objects(two.root / ".pivot/cache", two.root)
    bad = damage(local_objs, target, how)
    remove_outputs(two.root)
    r = two.run("pull")
    assert r.code == 0, r.err
    assert "corrupt" in r.err and bad.digest in r.err
    assert_good(two.root)  # fetched again, then checked out
    assert healed(local_objs)


# -- every kind of damage to every target, in process --------------------------------


def stored(tmp_path: Path) -> tuple[Cache, FileRecord, FileRecord, Path]:
    """A cache holding a file output and a directory output (as a build stores
    them), their records, and the workspace they came from."""
    ws = tmp_path / "ws"
    (ws / "tree/sub").mkdir(parents=True)
    (ws / "out.txt").write_text(WANT["out.txt"])
    (ws / "tree/sub/deep.txt").write_text(WANT["tree/sub/deep.txt"])
    shutil.copy(ws / "out.txt", ws / "tree/copy.txt")
    cache = Cache(tmp_path / "cache")
    entries = [ManifestEntry(rel, kind, cache.ingest(str(ws / "tree" / rel))) for rel, kind, _ in walk_dir(ws / "tree")]
    tree = FileRecord("tree", DIR, cache.store_bytes(manifest_bytes(entries)))
    out = FileRecord("out.txt", FILE, cache.ingest(str(ws / "out.txt")))
    cache.close()  # as a build ends: what it stored is indexed
    assert all(obj.packed() for obj in objects(cache.dir, ws).values())
    return cache, out, tree, ws


def share_of(cache: Cache, share: Path) -> None:
    """Make `share` a directory remote holding every object of `cache` (as files:
    a remote's layout)."""
    for digest in cache_digests(cache.dir):
        StoredObject(share, digest).write_bytes(StoredObject(cache.dir, digest).read_bytes())


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("how", KINDS)
@pytest.mark.parametrize("target", TARGETS)
def test_no_checkout_mode_checks_out_a_damaged_object(tmp_path: Path, target: str, how: str, mode: Mode) -> None:
    cache, out, tree, ws = stored(tmp_path)
    bad = damage(objects(cache.dir, ws), target, how)
    dest = tmp_path / "dest"
    failed = []
    for rec in (out, tree):
        try:
            if rec.kind == DIR:
                cache.checkout_dir(rec.hash, dest / rec.path, mode)
            else:
                cache.checkout_file(rec.hash, dest / rec.path, mode)
        except CorruptObject as exc:
            failed.append(str(exc))
        except MissingObject:  # removed by the first checkout that found it corrupt (both outputs hold it)
            pass
    assert failed and set(failed) <= {bad.digest}  # reported, naming the object
    assert not bad.exists()  # removed
    assert_never_wrong(dest)


@pytest.mark.parametrize("how", KINDS)
@pytest.mark.parametrize("target", TARGETS)
def test_fetch_keeps_no_damaged_object_and_drops_it_from_the_remote(tmp_path: Path, target: str, how: str) -> None:
    cache, out, tree, ws = stored(tmp_path)
    share = tmp_path / "share"
    share_of(cache, share)
    bad = damage(objects(share, ws), target, how)
    local = Cache(tmp_path / "clone-cache")
    report = transfer.fetch(local, DirectoryRemote(share), [out, tree], [])
    assert any(bad.digest in p and "corrupt" in p for p in report.problems)
    assert not local.has(bad.digest) and not bad.exists()  # not kept, and removed from the remote
    kept = cache_digests(local.dir)
    assert kept and all(StoredObject(local.dir, d).intact() for d in kept)  # what was kept is intact


@pytest.mark.parametrize("how", KINDS)
@pytest.mark.parametrize("target", TARGETS)
def test_fetch_replaces_a_damaged_local_copy_of_what_checkout_needs(tmp_path: Path, target: str, how: str) -> None:
    cache, out, tree, ws = stored(tmp_path)
    share = tmp_path / "share"
    share_of(cache, share)
    bad = damage(objects(cache.dir, ws), target, how)
    report = transfer.fetch(cache, DirectoryRemote(share), [out, tree], [], check=[out, tree])
    assert any(bad.digest in n and "corrupt" in n for n in report.notes)
    assert report.problems == []
    assert healed(objects(cache.dir, ws))
