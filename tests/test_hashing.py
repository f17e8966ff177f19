"""Content hashes of files and directory trees (hashing.py), and dep glob expansion (globs.py)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import xxhash

from pivotbuild import globs
from pivotbuild.state.hashing import (
    CHUNK,
    ENTRY_EXEC,
    ENTRY_FILE,
    ENTRY_LINK,
    ManifestEntry,
    hash_bytes,
    hash_fd,
    hash_file,
    link_hash,
    manifest_bytes,
    walk_dir,
)
from pivotbuild.state.statcache import StatCache

# -- hash_file -------------------------------------------------------------------------


def test_hash_bytes_is_xxh3_128() -> None:
    assert hash_bytes(b"") == xxhash.xxh3_128_hexdigest(b"")
    assert hash_bytes(b"hello") == xxhash.xxh3_128_hexdigest(b"hello")
    assert len(hash_bytes(b"hello")) == 32


@pytest.mark.parametrize(
    "size",
    [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345],
    ids=["empty", "one", "small", "chunk-1", "chunk", "chunk+1", "multi-chunk"],
)
def test_hash_file_equals_xxh3_128_of_the_bytes(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert hash_file(path) == xxhash.xxh3_128_hexdigest(data)
    assert hash_file(str(path)) == xxhash.xxh3_128_hexdigest(data)


def test_hash_file_distinguishes_a_change_in_the_last_chunk(tmp_path: Path) -> None:
    data = bytearray(random.Random(7).randbytes(2 * CHUNK + 10))
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(data))
    before = hash_file(path)
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert hash_file(path) != before
    assert hash_file(path) == xxhash.xxh3_128_hexdigest(bytes(data))


@pytest.mark.parametrize(
    ("stated", "now"),
    [(100, 100), (100, 40), (100, 0), (40, 100), (0, 100), (100, CHUNK + 5), (CHUNK + 5, 100)],
    ids=["same", "shrank", "emptied", "grew", "grew-from-empty", "grew-past-a-chunk", "shrank-below-a-chunk"],
)
def test_hash_fd_given_a_stale_size_hashes_the_file_as_it_is(tmp_path: Path, stated: int, now: int) -> None:
    """A caller's stat says how much to read first; a file that changed size
    since that stat is still hashed whole, as it is now (and its bytes are
    returned only when they are all of it: for a file no larger than the
    stat said, when the stat said it was small)."""
    data = random.Random(now).randbytes(now)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        digest, contents = hash_fd(fd, size=stated)
    finally:
        os.close(fd)
    assert digest == xxhash.xxh3_128_hexdigest(data)
    assert contents in (data, None)
    if now <= stated <= CHUNK:
        assert contents == data


def test_hash_file_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "nope")


# -- directory manifests ---------------------------------------------------------------


def tree_hash(root: Path) -> str:
    """A directory's hash computed from the public pieces, without any cache."""
    entries = []
    for rel, kind, _st in walk_dir(root):
        full = root / rel
        digest = link_hash(full) if kind == ENTRY_LINK else hash_file(full)
        entries.append(ManifestEntry(rel, kind, digest))
    return hash_bytes(manifest_bytes(entries))


def make_tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.txt").write_text("beta\n")
    (root / "sub" / "deep" / "c.txt").write_text("gamma\n")


def test_walk_dir_lists_files_sorted_with_kinds(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    os.symlink("a.txt", tmp_path / "link")
    found = [(rel, kind) for rel, kind, _ in walk_dir(tmp_path)]
    assert found == [
        ("a.txt", ENTRY_FILE),
        ("link", ENTRY_LINK),
        ("run.sh", ENTRY_EXEC),
        ("sub/b.txt", ENTRY_FILE),
        ("sub/deep/c.txt", ENTRY_FILE),
    ]


def test_manifest_bytes_text_and_order() -> None:
    entries = [
        ManifestEntry("b", ENTRY_FILE, "22"),
        ManifestEntry("a/x", ENTRY_EXEC, "11"),
        ManifestEntry("a/l", ENTRY_LINK, "33"),
    ]
    assert manifest_bytes(entries) == b'l 33 "a/l"\nx 11 "a/x"\nf 22 "b"\n'
    assert manifest_bytes(reversed(entries)) == manifest_bytes(entries)
    assert manifest_bytes([]) == b""


def test_dir_hash_is_stable_and_matches_statcache(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    make_tree(tree)
    first = tree_hash(tree)
    assert tree_hash(tree) == first
    cache = StatCache(tmp_path / "statcache")
    assert cache.dir_hash(tree) == first


def test_dir_hash_changes_on_content_change(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = tree_hash(tmp_path)
    (tmp_path / "sub" / "deep" / "c.txt").write_text("GAMMA\n")
    assert tree_hash(tmp_path) != before


def test_dir_hash_changes_on_rename(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = tree_hash(tmp_path)
    (tmp_path / "sub" / "b.txt").rename(tmp_path / "sub" / "b2.txt")
    assert tree_hash(tmp_path) != before


def test_dir_hash_changes_on_move_between_directories(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = tree_hash(tmp_path)
    (tmp_path / "sub" / "b.txt").rename(tmp_path / "sub" / "deep" / "b.txt")
    assert tree_hash(tmp_path) != before


def test_dir_hash_changes_on_new_file_and_removal(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = tree_hash(tmp_path)
    (tmp_path / "sub" / "new.txt").write_text("")
    with_new = tree_hash(tmp_path)
    assert with_new != before
    (tmp_path / "sub" / "new.txt").unlink()
    assert tree_hash(tmp_path) == before


def test_dir_hash_changes_on_chmod_exec(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = tree_hash(tmp_path)
    (tmp_path / "a.txt").chmod(0o755)
    assert {rel: kind for rel, kind, _ in walk_dir(tmp_path)}["a.txt"] == ENTRY_EXEC
    assert tree_hash(tmp_path) != before
    (tmp_path / "a.txt").chmod(0o644)
    assert tree_hash(tmp_path) == before


def test_other_mode_bits_do_not_matter(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = tree_hash(tmp_path)
    (tmp_path / "a.txt").chmod(0o600)
    assert tree_hash(tmp_path) == before


def test_symlink_is_hashed_by_target_text_not_followed(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("one\n")
    os.symlink(outside, tree / "link")
    (tree / "plain.txt").write_text("x\n")
    kinds = {rel: kind for rel, kind, _ in walk_dir(tree)}
    assert kinds == {"link": ENTRY_LINK, "plain.txt": ENTRY_FILE}
    assert link_hash(tree / "link") == hash_bytes(os.fsencode(str(outside)))
    before = tree_hash(tree)
    # The target's content is not part of the hash: the link is not followed.
    outside.write_text("two\n")
    assert tree_hash(tree) == before
    # The target text is.
    (tree / "link").unlink()
    os.symlink(tmp_path / "elsewhere.txt", tree / "link")
    assert tree_hash(tree) != before


def test_symlink_to_directory_is_not_descended(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    target = tmp_path / "d"
    target.mkdir()
    (target / "inner.txt").write_text("x")
    os.symlink(target, tree / "dlink")
    assert [(rel, kind) for rel, kind, _ in walk_dir(tree)] == [("dlink", ENTRY_LINK)]
    before = tree_hash(tree)
    (target / "more.txt").write_text("y")
    assert tree_hash(tree) == before


def test_dangling_symlink_is_hashed(tmp_path: Path) -> None:
    os.symlink("no-such-target", tmp_path / "dangling")
    assert [(rel, kind) for rel, kind, _ in walk_dir(tmp_path)] == [("dangling", ENTRY_LINK)]
    assert tree_hash(tmp_path) == hash_bytes(
        manifest_bytes([ManifestEntry("dangling", ENTRY_LINK, hash_bytes(b"no-such-target"))])
    )


def test_empty_subdirectories_are_ignored(tmp_path: Path) -> None:
    make_tree(tmp_path)
    before = tree_hash(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "sub" / "also" / "empty").mkdir(parents=True)
    assert tree_hash(tmp_path) == before


def test_empty_directory_hash_is_hash_of_empty_manifest(tmp_path: Path) -> None:
    assert tree_hash(tmp_path) == hash_bytes(b"")


def test_dir_hash_independent_of_creation_order(tmp_path: Path) -> None:
    names = ["z.txt", "a.txt", "m/n.txt", "m/a.txt", "b/c/d.txt", "B.txt", "a-b.txt", "a/b.txt"]
    one, two = tmp_path / "one", tmp_path / "two"
    for root, order in ((one, names), (two, list(reversed(names)))):
        for name in order:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"content of {name}\n")
    assert [rel for rel, _, _ in walk_dir(one)] == [rel for rel, _, _ in walk_dir(two)]
    assert tree_hash(one) == tree_hash(two)


def test_same_content_under_different_names_differs(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "x").write_text("same")
    (two / "y").write_text("same")
    assert tree_hash(one) != tree_hash(two)


def test_file_names_with_newlines_cannot_forge_manifest_entries(tmp_path: Path) -> None:
    # Two different trees: `x` and `y`, versus one file whose name spells out
    # the manifest line of `y`.  Their hashes must differ.
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "x").write_text("first")
    (one / "y").write_text("second")
    forged = f"x\nf {hash_bytes(b'second')} y"
    (two / forged).write_text("first")
    assert tree_hash(one) != tree_hash(two)


# -- globs.expand ----------------------------------------------------------------------


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


def test_star_does_not_cross_slash(tmp_path: Path) -> None:
    touch(tmp_path, "a.py", "b.py", "src/c.py", "src/d/e.py", "notes.txt")
    assert globs.expand(tmp_path, "*.py") == ["a.py", "b.py"]
    assert globs.expand(tmp_path, "src/*.py") == ["src/c.py"]
    assert globs.expand(tmp_path, "*/*.py") == ["src/c.py"]


def test_question_mark_is_one_character_not_slash(tmp_path: Path) -> None:
    touch(tmp_path, "a1", "a22", "a/1", "ab")
    assert globs.expand(tmp_path, "a?") == ["a1", "ab"]
    assert globs.expand(tmp_path, "a??") == ["a22"]


def test_double_star_matches_zero_or_more_directories(tmp_path: Path) -> None:
    touch(tmp_path, "src/a.py", "src/x/b.py", "src/x/y/c.py", "src/x/y/c.txt", "other/d.py", "top.py")
    assert globs.expand(tmp_path, "src/**/*.py") == ["src/a.py", "src/x/b.py", "src/x/y/c.py"]
    assert globs.expand(tmp_path, "**/*.py") == ["other/d.py", "src/a.py", "src/x/b.py", "src/x/y/c.py", "top.py"]
    assert globs.expand(tmp_path, "src/**") == ["src/a.py", "src/x/b.py", "src/x/y/c.py", "src/x/y/c.txt"]
    assert globs.expand(tmp_path, "src/**/y/*") == ["src/x/y/c.py", "src/x/y/c.txt"]


def test_character_classes(tmp_path: Path) -> None:
    touch(tmp_path, "data/a.csv", "data/b.csv", "data/c.csv", "data/ab.csv")
    assert globs.expand(tmp_path, "data/[ab].csv") == ["data/a.csv", "data/b.csv"]
    assert globs.expand(tmp_path, "data/[!ab].csv") == ["data/c.csv"]
    assert globs.expand(tmp_path, "data/[a-b]*.csv") == ["data/a.csv", "data/ab.csv", "data/b.csv"]


def test_negated_character_class_does_not_cross_slash(tmp_path: Path) -> None:
    # `[...]` works within one path component: `a[!x]b` must not match `a/b`.
    touch(tmp_path, "a/b", "acb", "axb")
    assert globs.expand(tmp_path, "a[!x]b") == ["acb"]


def test_closing_bracket_first_in_a_class_is_a_member(tmp_path: Path) -> None:
    # As in fnmatch: a `]` right after `[` or `[!` is part of the class.
    touch(tmp_path, "a", "b", "]", "ba]")
    assert globs.expand(tmp_path, "[]a]") == ["]", "a"]
    assert globs.expand(tmp_path, "[!]a]") == ["b"]


def test_output_is_sorted(tmp_path: Path) -> None:
    names = ["z.txt", "b.txt", "a/z.txt", "a/a.txt", "A.txt", "y/b.txt"]
    touch(tmp_path, *names)
    found = globs.expand(tmp_path, "**/*.txt")
    assert found == sorted(names)


def test_dot_pivot_is_never_searched(tmp_path: Path) -> None:
    touch(tmp_path, ".pivot/statcache.txt", "sub/.pivot/journal.txt", "sub/real.txt", "real.txt")
    assert globs.expand(tmp_path, "**/*.txt") == ["real.txt", "sub/real.txt"]
    assert globs.expand(tmp_path, "**/.*/*.txt") == []
    assert globs.expand(tmp_path, ".*/*.txt") == []


def test_dot_pivot_is_not_searched_even_when_named(tmp_path: Path) -> None:
    # "Hidden directories are searched only if the pattern names them; `.pivot/` never is."
    touch(tmp_path, ".pivot/statcache.txt", "sub/.pivot/journal.txt")
    assert globs.expand(tmp_path, ".pivot/*") == []
    assert globs.expand(tmp_path, "sub/.pivot/*.txt") == []


def test_dotfiles_and_dot_dirs_skipped_unless_named(tmp_path: Path) -> None:
    touch(tmp_path, "src/.hidden.py", "src/.cache/x.py", "src/ok.py", ".github/ci.yml", "top.yml")
    assert globs.expand(tmp_path, "src/*.py") == ["src/ok.py"]
    assert globs.expand(tmp_path, "src/**/*.py") == ["src/ok.py"]
    assert globs.expand(tmp_path, "**/*.yml") == ["top.yml"]
    assert globs.expand(tmp_path, "src/.*.py") == ["src/.hidden.py"]
    assert globs.expand(tmp_path, "src/.cache/*.py") == ["src/.cache/x.py"]
    assert globs.expand(tmp_path, ".github/*.yml") == [".github/ci.yml"]


def test_absolute_pattern(tmp_path: Path) -> None:
    outside = (tmp_path / "outside").resolve()
    touch(outside, "x/a.h", "x/b.h", "x/c.c", "x/deep/d.h")
    root = tmp_path / "proj"
    root.mkdir()
    assert globs.expand(root, f"{outside}/x/*.h") == [f"{outside}/x/a.h", f"{outside}/x/b.h"]
    assert globs.expand(root, f"{outside}/**/*.h") == [f"{outside}/x/a.h", f"{outside}/x/b.h", f"{outside}/x/deep/d.h"]


def test_missing_base_directory_gives_empty_list(tmp_path: Path) -> None:
    assert globs.expand(tmp_path, "nope/*.py") == []
    assert globs.expand(tmp_path, "nope/deeper/**/*.py") == []
    assert globs.expand(tmp_path, f"{tmp_path}/nope/*.py") == []
    (tmp_path / "file").write_text("not a dir")
    assert globs.expand(tmp_path, "file/*.py") == []


def test_no_match_gives_empty_list(tmp_path: Path) -> None:
    touch(tmp_path, "src/a.txt")
    assert globs.expand(tmp_path, "src/*.py") == []


def test_symlinks_are_listed(tmp_path: Path) -> None:
    touch(tmp_path, "data/a.csv")
    os.symlink("a.csv", tmp_path / "data" / "b.csv")
    assert globs.expand(tmp_path, "data/*.csv") == ["data/a.csv", "data/b.csv"]


def test_special_regex_characters_are_literal(tmp_path: Path) -> None:
    touch(tmp_path, "a+b (1).txt", "aab (1).txt", "a.b", "axb")
    assert globs.expand(tmp_path, "a+b (?).txt") == ["a+b (1).txt"]
    assert globs.expand(tmp_path, "a.?") == ["a.b"]
