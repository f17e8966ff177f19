"""Review fixes for remotes and config.toml, through the real command."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from conftest import Project
from test_remote import finished, first_clone, fresh_clone

from pivotbuild.cache.store import Cache
from pivotbuild.remote.config import ConfigError, toml_string
from pivotbuild.state.hashing import hash_file


def run_entries(share: Path) -> list[Path]:
    return [p for p in (share / "runs").rglob("*") if p.is_file()] if (share / "runs").is_dir() else []


# -- config.toml -----------------------------------------------------------------------------------


def test_remote_add_writes_valid_toml_for_any_unicode(project: Project, tmp_path: Path) -> None:
    share = tmp_path / "partagé 🗄️ \x7f"
    share.mkdir()
    r = project.run("remote", "add", "--default", "équipe🚀", str(share))
    assert r.code == 0, r.err
    data = tomllib.loads((project.root / ".pivot/config.toml").read_text("utf-8"))
    assert data["core"]["remote"] == "équipe🚀"
    assert data["remote"]["équipe🚀"]["url"] == str(share)
    listed = project.run("remote", "list")
    assert listed.code == 0, listed.err
    assert f"équipe🚀\t{share} (default)" in listed.out


@pytest.mark.parametrize(
    "text",
    ["plain", 'quote " and \\ backslash', "tab\tnewline\nbell\x07 del\x7f", "astral 🚀 \U0010ffff", ""],
)
def test_toml_strings_read_back_as_written(text: str) -> None:
    assert tomllib.loads(f"v = {toml_string(text)}\n")["v"] == text


def test_text_that_is_not_unicode_cannot_go_in_the_config() -> None:
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        toml_string("bad \udcff byte")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('remote = "shared"\n', "'remote' must be a table"),
        ('core = "x"\n', "'core' must be a table"),
        ("[core]\nremote = 3\n", "[core] remote = 3"),
        ('[remote]\nshared = "/mnt"\n', "[remote.shared] needs url"),
        ("[core]\ncheckout = 3\n", "[core] checkout = 3"),
    ],
)
def test_a_malformed_config_is_a_clear_error(project: Project, text: str, key: str) -> None:
    project.pivotfile("stage a:\n    outs: a.txt\n    run: echo a > $@\n")
    project.write(".pivot/config.toml", text)
    for args in (("push",), ("remote", "list"), ("checkout",)):
        r = project.run(*args)
        assert r.code == 2, (args, r.err)
        assert "internal error" not in r.err
        assert r.err.startswith("pivotbuild: ")
        assert "config.toml" in r.err and key in r.err, r.err


# -- fetch, push, pull -----------------------------------------------------------------------------


def test_fetch_refetches_a_corrupt_local_directory_manifest(tmp_path: Path) -> None:
    one, _ = first_clone(tmp_path)
    assert one.run("push").code == 0
    two = fresh_clone(one, tmp_path)
    assert two.run("fetch").code == 0
    cache = Cache(two.root / ".pivot/cache")
    manifest = next(
        p for p in (two.root / ".pivot/cache/objects").rglob("*") if p.is_file() and p.read_bytes().startswith(b"f ")
    )
    manifest.chmod(0o644)
    manifest.write_text("rot\n")
    r = two.run("fetch")
    assert r.code == 0, r.err
    assert hash_file(manifest) == manifest.parent.name + manifest.name  # healed from the remote
    assert cache.read_manifest(manifest.parent.name + manifest.name)
    assert two.run("checkout").code == 0
    assert (two.root / "tree/sub/copy.txt").read_text() == "data\n"


UNCACHED = """
stage a:
    deps: in.txt
    outs: a.txt scratch.txt (cache=false)
    run: cat $< > a.txt && echo scratch > scratch.txt && echo ran >> runs.log
"""


def test_pull_then_build_with_an_uncached_output(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    one = Project(tmp_path / "one")
    (one.root / ".pivot").mkdir(parents=True)
    one.pivotfile(UNCACHED)
    one.write("in.txt", "data\n")
    assert one.run().code == 0
    assert one.run("remote", "add", "--default", "team", str(share)).code == 0
    assert one.run("push").code == 0
    two = fresh_clone(one, tmp_path)
    pulled = two.run("pull")
    assert pulled.code == 0, pulled.err
    assert (two.root / "a.txt").read_text() == "data\n"
    build = two.run("--json")
    assert build.code == 0, build.err
    assert (two.root / "scratch.txt").read_text() == "scratch\n"  # made by the build, not the cache


def test_push_holds_back_run_cache_entries_whose_objects_failed_to_send(tmp_path: Path) -> None:
    one, share = first_clone(tmp_path)
    obj = Cache(one.root / ".pivot/cache").path_of(hash_file(one.root / "a.txt"))
    obj.chmod(0o644)
    obj.write_text("rot\n")
    r = one.run("push")
    assert r.code == 1
    assert "corrupt" in r.err
    assert "run-cache entr(ies) not pushed" in r.err
    assert run_entries(share) == []  # both stages name the bad object (b copies a.txt)
    assert one.run("-B").code == 0  # the rebuild heals the cache; now everything goes
    assert one.run("push").code == 0
    assert len(run_entries(share)) == 2


def test_an_unwritable_remote_stops_push_with_a_message(tmp_path: Path) -> None:
    one, share = first_clone(tmp_path)
    (share / "objects").write_text("not a directory\n")
    r = one.run("push")
    assert r.code == 1, r.err
    assert "internal error" not in r.err
    assert "Traceback" not in r.err
    assert "pivotbuild: cannot send object" in r.err
    assert run_entries(share) == []


def test_a_vanished_remote_is_not_recreated(tmp_path: Path) -> None:
    one, share = first_clone(tmp_path)
    from pivotbuild.remote.directory import DirectoryRemote

    shutil.rmtree(share)
    with pytest.raises(FileNotFoundError):
        DirectoryRemote(share).put(one.root / "a.txt", "objects/ab/cdef")
    assert not share.exists()


def test_an_unwritable_cache_stops_fetch_with_a_message(tmp_path: Path) -> None:
    one, _ = first_clone(tmp_path)
    assert one.run("push").code == 0
    two = fresh_clone(one, tmp_path)
    (two.root / ".pivot/cache").mkdir()
    (two.root / ".pivot/cache/objects").write_text("not a directory\n")
    for command in ("fetch", "pull"):
        r = two.run(command)
        assert r.code == 1, r.err
        assert "internal error" not in r.err
        assert "pivotbuild: cannot fetch object" in r.err
    (two.root / ".pivot/cache/objects").unlink()
    assert two.run("pull").code == 0
    build = two.run("--json")
    assert set(finished(build.out).values()) == {"skipped"}
