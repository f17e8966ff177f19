"""Remotes and CI restoration, through the real command: push from one clone,
`pivotbuild pull && pivotbuild` in a fresh one runs nothing."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project
from helpers import REMOTE_PIPELINE, StoredObject, cache_digests, fresh_clone, statuses

from pivotbuild.cache.store import Cache
from pivotbuild.remote.config import ConfigError, toml_string
from pivotbuild.state.hashing import hash_file

PIPELINE = REMOTE_PIPELINE


def first_clone(tmp_path: Path, pipeline: str = PIPELINE) -> tuple[Project, Path]:
    """A built project with a default remote (not pushed yet), and the remote's directory."""
    share = tmp_path / "share"
    share.mkdir()
    p = Project(tmp_path / "one")
    (p.root / ".pivot").mkdir(parents=True)
    p.pivotfile(pipeline)
    p.write("in.txt", "data\n")
    assert p.run().code == 0
    assert p.run("remote", "add", "--default", "team", str(share)).code == 0
    return p, share


def test_pull_then_build_on_a_fresh_clone_runs_nothing(tmp_path: Path) -> None:
    one, _ = first_clone(tmp_path)
    pushed = one.run("push")
    assert pushed.code == 0, pushed.err
    two = fresh_clone(one, tmp_path)
    pulled = two.run("pull")
    assert pulled.code == 0, pulled.err
    build = two.run("--json")
    assert build.code == 0
    assert set(statuses(build.out).values()) == {"skipped"}
    assert not (two.root / "runs.log").exists()  # nothing ran in the fresh clone
    assert (two.root / "tree/sub/copy.txt").read_text() == "data\n"
    assert two.run("verify").code == 0


def test_a_fresh_clone_restores_from_the_cache_after_fetch(tmp_path: Path) -> None:
    one, _ = first_clone(tmp_path)
    assert one.run("push").code == 0
    two = fresh_clone(one, tmp_path)
    assert two.run("fetch").code == 0
    assert not (two.root / "a.txt").exists()  # fetch leaves the workspace alone
    build = two.run("--json")
    assert set(statuses(build.out).values()) == {"restored"}
    assert not (two.root / "runs.log").exists()


def test_push_sends_only_what_the_remote_lacks(tmp_path: Path) -> None:
    one, share = first_clone(tmp_path)
    first = one.run("push")
    assert "0 already there" in first.err
    again = one.run("push")
    assert "0 object(s) pushed" in again.err
    assert not list(share.rglob(".tmp-*"))


def test_an_interrupted_push_leaves_no_truncated_object_and_a_rerun_completes_it(tmp_path: Path) -> None:
    one, share = first_clone(tmp_path)
    assert one.run("push").code == 0
    # Simulate a push killed mid-transfer: an object missing, a partial temporary file beside it.
    digest = hash_file(one.root / "a.txt")
    obj = share / "objects" / digest[:2] / digest[2:]
    obj.chmod(0o644)
    obj.unlink()
    (obj.parent / ".tmp-partial").write_text("da")
    assert one.run("push").code == 0
    assert hash_file(obj) == digest
    for path in (share / "objects").rglob("*"):
        if path.is_file() and not path.name.startswith(".tmp-"):
            assert hash_file(path) == path.parent.name + path.name  # every object whole


def test_a_corrupt_object_on_the_remote_is_reported_and_not_kept(tmp_path: Path) -> None:
    one, share = first_clone(tmp_path)
    assert one.run("push").code == 0
    digest = hash_file(one.root / "a.txt")
    obj = share / "objects" / digest[:2] / digest[2:]
    obj.chmod(0o644)
    obj.write_text("rotten\n")
    two = fresh_clone(one, tmp_path)
    fetched = two.run("fetch")
    assert fetched.code == 1
    assert "corrupt" in fetched.err
    assert not StoredObject(two.root / ".pivot/cache", digest).exists()
    build = two.run("--json")  # the stage whose object was bad is rebuilt
    assert statuses(build.out)["a"] == "ran"
    assert build.code == 0


def test_remote_configuration(tmp_path: Path) -> None:
    one, share = first_clone(tmp_path)
    listed = one.run("remote", "list")
    assert f"team\t{share} (default)" in listed.out
    elsewhere = tmp_path / "not-mounted"
    assert one.run("remote", "add", "other", f"file://{elsewhere}").code == 0
    assert f"other\tfile://{elsewhere}" in one.run("remote", "list").out
    assert one.run("push", "-r", "nope").code == 2
    assert one.run("remote", "remove", "team").code == 0
    unmounted = one.run("push")  # the one remote left is used; its directory does not exist
    assert unmounted.code == 2
    assert f"{elsewhere} is not a directory" in unmounted.err
    assert not elsewhere.exists()


def test_a_fresh_clone_without_a_lockfile_restores_through_the_shared_run_cache(tmp_path: Path) -> None:
    one, _ = first_clone(tmp_path)
    assert one.run("push").code == 0
    two = fresh_clone(one, tmp_path)
    (two.root / "Pivotfile.lock").unlink()  # the teammate's results were never committed
    assert two.run("fetch").code == 0
    build = two.run("--json")
    assert build.code == 0
    assert set(statuses(build.out).values()) == {"restored"}
    assert not (two.root / "runs.log").exists()
    assert (two.root / "tree/sub/copy.txt").read_text() == "data\n"


def test_a_push_killed_mid_transfer_leaves_no_truncated_object(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    p = Project(tmp_path / "big")
    (p.root / ".pivot").mkdir(parents=True)
    # A big output, so the push is still copying when it is killed.
    p.pivotfile("stage big:\n    outs: big.bin\n    run: head -c 400000000 /dev/zero > $@\n")
    assert p.run("-s").code == 0
    assert p.run("remote", "add", "--default", "team", str(share)).code == 0
    proc = subprocess.Popen([*PIVOTBUILD, "push"], cwd=p.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(share.rglob(".tmp-*")):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-transfer, not finished
    digest = hash_file(p.root / "big.bin")
    obj = share / "objects" / digest[:2] / digest[2:]
    assert not obj.exists() or hash_file(obj) == digest  # never a truncated object under its name
    again = p.run("push")
    assert again.code == 0, again.err
    assert hash_file(obj) == digest


def test_a_torn_run_cache_entry_is_never_pushed_and_its_rebuilt_one_is(tmp_path: Path) -> None:
    """Run-cache entries are appended to a log in place, so a build killed
    mid-write can leave one cut short.  push must not send it: the remote
    would then hold it for good (push skips what the remote has) instead of
    the whole one.  The remote keeps a file per entry."""
    from pivotbuild.cache.runcache import RunCache, log_rel
    from pivotbuild.cache.runlog import LOG, read_log

    one, share = first_clone(tmp_path)
    one.write("in.txt", "changed\n")
    assert one.run().code == 0  # the first records, pushed out of the lockfile, are run-cache entries now
    runs_ = RunCache(one.root / ".pivot/cache")
    entries = sorted((shard, name, blob) for shard in runs_.shards() for name, blob in runs_.entries(shard))
    assert len(entries) == 2
    shard, name, whole = entries[0]
    log = one.root / ".pivot/cache" / log_rel(shard)
    frames = log.read_bytes()
    at = frames.index(whole)
    log.write_bytes(frames[:at] + whole[:3] + frames[at + len(whole) :])  # torn (in place: its frame no longer checks)
    assert one.run("push").code == 0
    remote_entries = {p.relative_to(share) for p in (share / "runs").rglob("*") if p.is_file()}
    assert Path(f"runs/{shard}/{name}") not in remote_entries
    assert Path(f"runs/{entries[1][0]}/{entries[1][1]}") in remote_entries
    assert len(remote_entries) == 3  # the other, and those of the two current records, which push wrote
    with open(log, "ab") as f:
        f.write(LOG.dump([name, whole]))  # as the next record of those inputs writes it
    assert read_log(log.read_bytes())[0][name] == whole
    assert one.run("push").code == 0
    assert (share / f"runs/{shard}/{name}").read_bytes() == whole


def test_a_build_carries_on_past_a_broken_config_but_push_stops_naming_where(tmp_path: Path) -> None:
    one, _ = first_clone(tmp_path)
    config = one.root / ".pivot/config.toml"
    config.write_text(config.read_text().replace('url = "', "url = "))  # a value no longer quoted
    one.write("in.txt", "changed\n")
    built = one.run()
    assert built.code == 0, built.err
    assert (one.root / "a.txt").read_text() == "changed\n"
    (warning,) = [line for line in built.err.splitlines() if "warning" in line]
    assert "config.toml: not valid TOML" in warning and "(at line " in warning
    assert "builds use the default settings" in warning
    pushed = one.run("push")
    assert pushed.code == 2
    (line,) = pushed.err.splitlines()
    assert line.startswith("pivotbuild: ") and str(config) in line and "(at line " in line
    config.write_bytes(b'[core]\nremote = "t\xffam"\n')
    listed = one.run("remote", "list")
    assert listed.code == 2
    assert listed.err == f"pivotbuild: {config}: not UTF-8 (at line 2, column 12); fix or remove it\n"


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


def test_remote_add_keeps_the_executor_setting(project: Project, tmp_path: Path) -> None:
    project.write(".pivot/config.toml", '[executor]\nkind = "dask"\naddress = "tcp://scheduler:8786"\n')
    assert project.run("remote", "add", "shared", str(tmp_path)).code == 0
    data = tomllib.loads((project.root / ".pivot/config.toml").read_text("utf-8"))
    assert data["executor"] == {"kind": "dask", "address": "tcp://scheduler:8786"}
    assert data["remote"]["shared"]["url"] == str(tmp_path)


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
        ('[executor]\nkind = "ssh"\n', "[executor] kind = 'ssh'; use one of local, dask"),
        ('[executor]\nkind = "dask"\n', '[executor] kind = "dask" needs address'),
        ('[executor]\nkind = "dask"\nadress = "tcp://h:1"\n', "[executor] has unknown key adress"),
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
    objs = [StoredObject(cache.dir, d) for d in cache_digests(cache.dir)]
    (manifest,) = (obj for obj in objs if obj.read_bytes().startswith(b"f "))
    manifest.write_bytes(b"rot\n")
    r = two.run("fetch")
    assert r.code == 0, r.err
    assert manifest.intact()  # healed from the remote
    assert cache.read_manifest(manifest.digest)
    assert two.run("checkout").code == 0
    assert (two.root / "tree/sub/copy.txt").read_text() == "data\n"


UNCACHED = """
stage a:
    deps: in.txt
    outs: a.txt scratch.txt (cache=false)
    run: cat $< > a.txt && echo scratch > scratch.txt && echo ran >> runs.log
"""


def test_pull_then_build_with_an_uncached_output(tmp_path: Path) -> None:
    one, _ = first_clone(tmp_path, UNCACHED)
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
    StoredObject(one.root / ".pivot/cache", hash_file(one.root / "a.txt")).write_bytes(b"rot\n")
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
    for where in ("objects", "packs"):  # (small objects are packed: both must be blocked)
        (two.root / ".pivot/cache" / where).write_text("not a directory\n")
    for command in ("fetch", "pull"):
        r = two.run(command)
        assert r.code == 1, r.err
        assert "internal error" not in r.err
        assert "pivotbuild: cannot fetch object" in r.err
    for where in ("objects", "packs"):
        (two.root / ".pivot/cache" / where).unlink()
    assert two.run("pull").code == 0
    build = two.run("--json")
    assert set(statuses(build.out).values()) == {"skipped"}
