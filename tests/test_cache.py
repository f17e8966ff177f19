"""The content-addressed cache and the run cache, through the real command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import Project
from helpers import StoredObject, cache_digests, finished, statuses

from pivotbuild.cache import store as store_mod
from pivotbuild.cache.pack import PACK_MAX
from pivotbuild.cache.store import Cache, CorruptObject, Mode
from pivotbuild.state.hashing import hash_bytes, hash_file

PIPELINE = """
X = 1
stage make:
    deps: in.txt
    outs: out.txt
    run: echo "run $(cat in.txt) x=${X}" >> count.log && cat in.txt > $@ && echo ${X} >> $@
stage tree:
    deps: out.txt
    outs: tree/
    run:
        mkdir -p $@/sub
        cp $< $@/copy.txt
        echo deep > $@/sub/deep.txt
        ln -s copy.txt $@/link
"""


# An input that makes out.txt (and tree/copy.txt) too large for a pack: a file
# of its own under objects/, as tests of what happens to such files need.
LARGE = "x" * PACK_MAX + "\n"


def runs(project: Project) -> int:
    return len((project.root / "count.log").read_text().splitlines())


def built(project: Project, text: str = "hello\n") -> Project:
    project.pivotfile(PIPELINE)
    project.write("in.txt", text)
    r = project.run("--json")
    assert r.code == 0, r.err
    return project


def test_deleted_outputs_are_restored_not_rerun(project: Project) -> None:
    built(project)
    (project.root / "out.txt").unlink()
    os.system(f"rm -rf {project.root / 'tree'}")
    r = project.run("--json")
    assert r.code == 0, r.err
    done = finished(r.out)
    assert done["make"] == ("restored", "out out.txt missing")
    assert done["tree"][0] == "restored"
    assert runs(project) == 1
    assert (project.root / "out.txt").read_text() == "hello\n1\n"
    assert (project.root / "tree/sub/deep.txt").read_text() == "deep\n"
    assert os.readlink(project.root / "tree/link") == "copy.txt"
    assert project.run("-q").code == 0  # restored outputs are up to date


def run_entries(project: Project) -> int:
    """The run-cache entries (not the cache's copy of the lockfile beside them)."""
    from pivotbuild.cache.runcache import RunCache

    runs_ = RunCache(project.root / ".pivot/cache")
    return sum(len(runs_.entries(shard)) for shard in runs_.shards())


def test_inputs_seen_before_are_restored_from_the_run_cache(project: Project) -> None:
    built(project)
    assert run_entries(project) == 0  # the lockfile answers for the current inputs: no file per stage
    assert finished(project.run("X=2", "--json").out)["make"][0] == "ran"
    assert run_entries(project) == 2  # the records (make's, and tree's after it) that X=2's replaced
    back = finished(project.run("--json").out)  # X back to 1: that run is in the run cache
    assert back["make"][0] == "restored"
    assert runs(project) == 2
    assert (project.root / "out.txt").read_text() == "hello\n1\n"


def test_a_lost_lockfile_is_answered_by_the_caches_copy(project: Project) -> None:
    built(project)
    (project.root / "Pivotfile.lock").unlink()
    (project.root / "out.txt").unlink()
    done = finished(project.run("--json").out)
    assert {status for status, _ in done.values()} == {"restored"}
    assert runs(project) == 1
    assert (project.root / "out.txt").read_text() == "hello\n1\n"
    assert project.run("-q").code == 0


def test_a_rerun_on_the_same_inputs_wins_over_an_older_entry_for_them(project: Project) -> None:
    # make also reads extra.txt, which it does not declare: a -B rerun of the
    # same inputs gives other outputs, and a restore must bring back those.
    project.pivotfile(PIPELINE.replace("echo ${X} >> $@", "echo ${X} >> $@ && cat extra.txt >> $@"))
    project.write("in.txt", "hello\n")
    project.write("extra.txt", "old\n")
    assert project.run().code == 0
    assert project.run("X=2").code == 0  # X=1's record becomes a run-cache entry
    assert finished(project.run("--json").out)["make"][0] == "restored"
    project.write("extra.txt", "new\n")
    assert project.run("-B").code == 0
    (project.root / "out.txt").unlink()
    assert finished(project.run("--json").out)["make"][0] == "restored"
    assert (project.root / "out.txt").read_text() == "hello\n1\nnew\n"


def test_a_record_replaced_by_a_committed_no_commit_result_is_kept(project: Project) -> None:
    built(project)
    assert project.run("X=2", "--no-commit").code == 0
    assert project.run("commit", "X=2").code == 0
    assert finished(project.run("--json").out)["make"][0] == "restored"  # X back to 1
    assert runs(project) == 2


def test_a_record_replaced_by_a_no_cache_build_is_kept(project: Project) -> None:
    built(project)
    assert project.run("X=2", "--no-cache").code == 0
    assert finished(project.run("--json").out)["make"][0] == "restored"  # X back to 1: its objects are cached
    assert runs(project) == 2


def test_a_lockfile_put_back_by_git_still_restores_the_last_build(project: Project) -> None:
    built(project)
    first = (project.root / "Pivotfile.lock").read_bytes()
    assert project.run("X=2").code == 0
    (project.root / "Pivotfile.lock").write_bytes(first)  # `git checkout -- Pivotfile.lock`
    (project.root / "out.txt").unlink()
    assert finished(project.run("X=2", "--json").out)["make"][0] == "restored"  # from the cache's copy
    assert runs(project) == 2
    assert (project.root / "out.txt").read_text() == "hello\n2\n"


def test_no_cache_stores_nothing(project: Project) -> None:
    project.pivotfile(PIPELINE)
    project.write("in.txt", "hello\n")
    assert project.run("--no-cache").code == 0
    (project.root / "out.txt").unlink()
    assert finished(project.run("--json").out)["make"][0] == "ran"


def test_forced_stages_run_even_when_the_cache_could_restore_them(project: Project) -> None:
    built(project)
    (project.root / "out.txt").unlink()
    assert finished(project.run("-B", "make", "--json").out)["make"] == ("ran", "forced")


def test_uncached_outputs_are_never_restored(project: Project) -> None:
    project.pivotfile(PIPELINE.replace("outs: out.txt", "outs: out.txt (cache=false)"))
    project.write("in.txt", "hello\n")
    assert project.run().code == 0
    (project.root / "out.txt").unlink()
    assert finished(project.run("--json").out)["make"][0] == "ran"


def test_a_corrupt_cache_object_is_never_checked_out(project: Project) -> None:
    built(project)
    obj = StoredObject(project.root / ".pivot/cache", hash_file(project.root / "out.txt"))
    obj.write_bytes(b"tampered\n")
    (project.root / "out.txt").unlink()
    r = project.run("--json")
    assert r.code == 0
    assert finished(r.out)["make"][0] == "ran"  # rebuilt, not restored from the bad object
    assert "corrupt" in r.err
    assert (project.root / "out.txt").read_text() == "hello\n1\n"
    assert obj.intact() and obj.digest == hash_file(project.root / "out.txt")  # the rebuild healed the cache


@pytest.mark.parametrize("text", ["hello\n", LARGE], ids=["packed", "file"])
def test_storing_never_touches_the_workspace_copy(project: Project, text: str) -> None:
    built(project, text)
    out = project.root / "out.txt"
    obj = StoredObject(project.root / ".pivot/cache", hash_file(out))
    small = out.stat().st_size <= PACK_MAX
    assert obj.packed() == small  # a record in a pack, or (large) a file of its own
    holders = list((project.root / ".pivot/cache/packs").glob("*.pack")) if small else [obj.path]
    assert holders and all(h.stat().st_mode & 0o222 == 0 for h in holders)  # cache objects are read-only
    assert out.stat().st_mode & 0o200  # the workspace file is not


def test_checkout_modes_and_verification(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    src = tmp_path / "a.txt"
    src.write_text("content\n")
    digest = hash_file(src)
    assert cache.store_file(src, digest)
    for mode in Mode:
        dest = tmp_path / f"out-{mode.value}.txt"
        cache.checkout_file(digest, dest, mode)
        assert dest.read_text() == "content\n"
    assert (tmp_path / "out-symlink.txt").is_symlink()
    assert os.stat(tmp_path / "out-hardlink.txt").st_ino == os.stat(cache.path_of(digest)).st_ino
    assert not (tmp_path / "out-copy.txt").is_symlink()
    # A store of a file that changed since it was hashed keeps nothing.
    assert not cache.store_file(src, hash_bytes(b"something else"))
    cache.close()  # as a build ends
    bad = StoredObject(cache.dir, digest)  # packed, and a file too since it was linked
    assert bad.packed() and bad.path.is_file()
    bad.write_bytes(b"rot\n")
    try:
        cache.checkout_file(digest, tmp_path / "never.txt")
    except CorruptObject:
        pass
    else:
        raise AssertionError("a corrupt object was checked out")
    assert not bad.exists() and not (tmp_path / "never.txt").exists()  # every copy removed


ROLLBACK = """
N = 1
stage s:
    outs: s.txt
    run: echo v${N} > $@; test ${N} = 1
stage fresh:
    outs: f.txt
    run: echo new > $@; test ${N} = 1
"""


def test_a_failed_stage_rolls_its_outputs_back_to_the_recorded_version(project: Project) -> None:
    project.pivotfile(ROLLBACK.replace("stage fresh:", "stage fresh:\n    deps: s.txt"))
    assert project.run().code == 0
    failed = project.run("N=2")
    assert failed.code == 1
    assert (project.root / "s.txt").read_text() == "v1\n"  # not the half-made v2
    assert "rolled back" in failed.err
    assert project.run("verify").code == 0  # the workspace matches the lockfile again


def test_a_failed_stage_without_a_recorded_version_has_its_outputs_removed(project: Project) -> None:
    project.pivotfile(ROLLBACK)
    failed = project.run("N=2", "-k")
    assert failed.code == 1
    assert not (project.root / "f.txt").exists()
    assert "removed f.txt (no recorded version)" in failed.err


def test_an_incremental_output_starts_from_its_recorded_version(project: Project) -> None:
    project.pivotfile("N = 1\nstage log:\n    outs: log.txt (incremental)\n    run: echo line ${N} >> $@\n")
    assert project.run().code == 0
    assert project.run("N=2").code == 0
    log = project.root / "log.txt"
    assert log.read_text() == "line 1\nline 2\n"
    log.write_text(log.read_text() + "junk\n")  # not what the lockfile records
    assert project.run("N=3").code == 0
    assert log.read_text() == "line 1\nline 2\nline 3\n"


def test_gc_deletes_only_what_no_lockfile_needs(project: Project) -> None:
    built(project)
    assert project.run("X=2").code == 0  # the X=1 outputs are now referenced only by the run cache
    cache_dir = project.root / ".pivot/cache"
    before = cache_digests(cache_dir)
    listed = project.run("gc", "-n")
    assert listed.code == 0
    assert "would delete object" in listed.out
    assert cache_digests(cache_dir) == before  # -n deletes nothing

    kept = project.run("gc", "--keep-run-cache")
    assert "0 object(s)" in kept.err  # the run cache still needs them

    assert project.run("gc").code == 0
    assert cache_digests(cache_dir) < before
    assert project.run("verify").code == 0
    (project.root / "out.txt").unlink()
    os.system(f"rm -rf {project.root / 'tree'}")
    assert project.run("checkout").code == 0  # everything the lockfile (X=2) needs survived
    assert (project.root / "tree/sub/deep.txt").read_text() == "deep\n"
    assert finished(project.run("X=2", "--json").out)["make"][0] == "skipped"
    # The X=1 run-cache entry went with its objects: going back to X=1 runs again.
    assert finished(project.run("--json").out)["make"][0] == "ran"


def test_checkout_mode_from_the_config(project: Project) -> None:
    built(project)
    for mode, check in (
        ("hardlink", lambda p: p.stat().st_nlink == 2),
        ("symlink", lambda p: p.is_symlink() and ".pivot/cache/objects" in os.readlink(p)),
    ):
        project.write(".pivot/config.toml", f'[core]\ncheckout = "{mode}"\n')
        (project.root / "out.txt").unlink()
        assert project.run("checkout").code == 0
        out = project.root / "out.txt"
        assert check(out), mode
        assert out.stat().st_mode & 0o222 == 0  # read-only: an edit cannot reach the cache
        assert out.read_text() == "hello\n1\n"
        assert project.run("verify").code == 0
    project.write(".pivot/config.toml", '[core]\ncheckout = "teleport"\n')
    bad = project.run("checkout")
    assert bad.code == 2
    assert "use one of copy, reflink, hardlink, symlink" in bad.err


@pytest.mark.parametrize("text", ["hello\n", LARGE], ids=["packed", "file"])
def test_in_hardlink_mode_an_edit_cannot_reach_the_cache(project: Project, text: str) -> None:
    built(project, text)
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    out = project.root / "out.txt"
    want = out.read_text()
    out.unlink()
    assert project.run("checkout").code == 0
    obj = StoredObject(project.root / ".pivot/cache", hash_file(out))
    assert os.stat(out).st_ino == os.stat(obj.path).st_ino  # (a packed object too gets a file to link)
    # A user's edit is refused: the shared file is read-only (setpriv drops to an
    # ordinary user, since root ignores file permissions).
    project.root.chmod(0o777)
    edit = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", f"echo edit >> {out}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert edit.returncode != 0
    assert obj.intact()  # the cached object is intact
    # Even root, who can write through the link, cannot get a bad object checked out
    # (a small object's packed copy stays intact: restoring that is as good as refusing).
    two_copies = obj.packed()
    assert two_copies == (len(want) <= PACK_MAX)
    with open(out, "a") as f:
        f.write("root edit\n")
    out.unlink()
    r = project.run("checkout")
    assert "Traceback" not in r.err
    if two_copies:
        restored = out.exists()
        assert (r.code, out.read_text() if restored else None) in ((0, want), (1, None)), r
    else:
        restored = False
        assert r.code == 1
        assert not out.exists()
    rebuilt = finished(project.run("--json").out)
    assert rebuilt["make"][0] == ("skipped" if restored else "ran")  # and the next build heals the cache
    assert out.read_text() == want
    assert obj.intact()


@pytest.mark.parametrize("beside", ["", " log.txt (cache=false)"], ids=["alone", "beside-an-uncached-output"])
def test_in_hardlink_mode_an_output_written_to_after_its_stage_ended_does_not_stay_its_object(
    project: Project, beside: str
) -> None:
    """A process stage a left behind appends to a.txt 0.1 s after a ended, long
    after its hash and its racy window: the cache's object (the same file)
    changed with it.  The build says so before it ends and drops the object,
    so the next build runs a again instead of finding a corrupt object.  (An
    output of a's that is not cached changes nothing.)"""
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    project.write("late.sh", "sleep 0.1; chmod u+w a.txt; echo late >> a.txt\n")  # (0444 once linked)
    project.pivotfile(
        f"""
stage a:
    outs: a.txt{beside}
    run: echo made by a > a.txt; touch log.txt; (sh late.sh) </dev/null >/dev/null 2>&1 &
stage b:
    outs: b.txt
    run: sleep 1; echo b > b.txt
"""
    )
    r = project.run("-j2")
    assert r.code == 0, r
    assert f"{project.root / 'a.txt'} changed after a finished; the next build will see it" in r.err, r.err
    assert (project.root / "a.txt").read_text() == "made by a\nlate\n"
    assert hash_bytes(b"made by a\n") not in cache_digests(project.root / ".pivot/cache")
    again = project.run("--json", "-j2")
    assert again.code == 0, again
    assert "corrupt" not in again.err, again.err
    assert statuses(again) == {"a": "ran", "b": "skipped"}  # (up to date)


def test_hardlinks_across_filesystems_fall_back_to_copies_and_say_so_once(project: Project) -> None:
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))  # a tmpfs: another filesystem
    try:
        (project.root / ".pivot/cache").symlink_to(elsewhere)
        built(project)
        project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
        (project.root / "out.txt").unlink()
        os.system(f"rm -rf {project.root / 'tree'}")
        r = project.run("checkout")
        assert r.code == 0, r.err
        assert r.err.count("copying instead") == 1
        assert (project.root / "tree/sub/deep.txt").read_text() == "deep\n"
        assert (project.root / "out.txt").stat().st_nlink == 1
    finally:
        shutil.rmtree(elsewhere)


def test_large_outputs_of_every_alignment_come_back_byte_for_byte(project: Project) -> None:
    """Large objects are written with direct I/O in whole aligned chunks and the
    rest buffered: sizes on, just past and well off a chunk boundary, and a file
    whose last chunk is short, must all restore exactly."""
    sizes = {"exact": 2 << 20, "one_more": (2 << 20) + 1, "odd": 3 * (1 << 20) + 12345, "pages": 4096 * 300}
    lines = []
    for name, size in sizes.items():
        lines += [
            f"stage {name}:",
            f"    outs: {name}.bin",
            f"    run: head -c {size} /dev/urandom > $@",
        ]
    project.pivotfile("\n".join(lines) + "\n")
    r = project.run()
    assert r.code == 0, r.err
    made = {name: (project.root / f"{name}.bin").read_bytes() for name in sizes}
    assert {name: len(data) for name, data in made.items()} == sizes
    for name in sizes:
        (project.root / f"{name}.bin").unlink()
    r = project.run("--json")
    assert r.code == 0, r.err
    assert {s for s, _ in finished(r.out).values()} == {"restored"}
    for name, data in made.items():
        assert (project.root / f"{name}.bin").read_bytes() == data, name


def test_in_hardlink_mode_outputs_are_stored_by_link_not_copied(project: Project) -> None:
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    project.pivotfile(
        """
stage make:
    deps: in.txt
    outs: out.txt
    run: cat in.txt in.txt > $@
stage tool:
    deps: in.txt
    outs: tool.sh
    run: printf '#!/bin/sh\\necho hi\\n' > $@ && chmod +x $@
stage log:
    deps: in.txt
    outs: log.txt (persist)
    run: cat in.txt >> $@
"""
    )
    project.write("in.txt", "one\n")  # (out.txt doubles it: log.txt's copy must not be its object first)
    assert project.run().code == 0
    cache = Cache(project.root / ".pivot/cache")
    out = project.root / "out.txt"
    first = cache.path_of(hash_file(out))
    assert os.stat(out).st_ino == os.stat(first).st_ino  # the object is the output itself
    assert os.stat(out).st_mode & 0o777 == 0o444  # read-only, as hardlink mode promises
    # An executable keeps its mode and a persist output stays writable: both are copies.
    tool = project.root / "tool.sh"
    assert os.access(tool, os.X_OK) and os.stat(tool).st_nlink == 1
    log = project.root / "log.txt"
    assert os.stat(log).st_nlink == 1 and os.stat(log).st_mode & 0o200
    # Nothing to do next time, without reading a file.
    r = project.run("--json")
    summary = next(json.loads(line) for line in r.out.splitlines() if '"build_finished"' in line)
    assert summary["ran"] == 0 and summary["files_read"] == 0
    # A new input reruns the stage over the read-only output; the old object survives.
    project.write("in.txt", "two\n")
    assert project.run().code == 0
    assert out.read_text() == "two\ntwo\n"
    assert first.read_text() == "one\none\n" and hash_file(first) == first.parent.name + first.name
    assert log.read_text() == "one\ntwo\n"
    # And the old version comes back from the run cache by link.
    project.write("in.txt", "one\n")
    r = project.run("--json")
    assert finished(r.out)["make"][0] == "restored"
    assert os.stat(out).st_ino == os.stat(first).st_ino


# A large output goes to objects/, a small one to packs/: each blocked by a file.
@pytest.mark.parametrize(("blocked", "text"), [("objects", LARGE), ("packs", "x\n")], ids=["objects", "packs"])
def test_a_cache_that_cannot_be_written_warns_and_the_build_still_succeeds(
    project: Project, blocked: str, text: str
) -> None:
    project.pivotfile("stage make:\n    deps: in.txt\n    outs: out.txt\n    run: cat in.txt > $@\n")
    project.write("in.txt", text)
    project.write(f".pivot/cache/{blocked}", "a file where a directory of the cache should be\n")
    r = project.run()
    assert r.code == 0, r.err
    assert "could not store the outputs of make in the cache" in r.err
    assert "recorded, but not cached" in r.err
    assert (project.root / "out.txt").read_text() == text
    again = project.run("--json")  # the result was recorded all the same
    assert again.code == 0 and finished(again.out)["make"] == ("skipped", "up to date")
    (project.root / "out.txt").unlink()
    lost = project.run("--json")  # nothing in the cache to restore it from: it runs again
    assert lost.code == 0, lost.err
    assert finished(lost.out)["make"][0] == "ran"
    assert (project.root / "out.txt").read_text() == text


@pytest.mark.usefixtures("reads_cannot_wait")
def test_storing_a_deferred_output_confirms_it_only_outside_its_racy_window(tmp_path: Path) -> None:
    from pivotbuild.cache.outputs import OutputCache

    old = tmp_path / "old.bin"
    old.write_bytes(b"written a while ago\n")
    time.sleep(0.1)  # past its racy window (50 ms: stamps.FINE_WINDOW_NS)
    new = tmp_path / "new.bin"
    new.write_bytes(b"written just now\n")
    soon = time.time_ns() + 60_000_000_000  # (its window not passed, however slow this machine is now)
    os.utime(new, ns=(soon, soon))
    outputs = OutputCache(tmp_path, lambda _text: None)
    confirmed: list[str] = []
    changed = outputs.store_deferred(
        [(str(old), hash_file(old)), (str(new), hash_file(new)), (str(new), "0" * 32)],
        lambda path, _st, _digest: confirmed.append(path),
        lambda _seconds: None,  # no patience (the build is over): copy at once
    )
    assert changed == [str(new)]  # the one whose hash is not what was recorded
    assert confirmed == [str(old)]  # the fresh file may still change in its clock tick
    assert outputs.cache.has(hash_file(old)) and outputs.cache.has(hash_file(new))
    # With time to wait (while the build runs), a fresh file is copied once its
    # window has passed, and that read proves it.
    newer = tmp_path / "newer.bin"
    newer.write_bytes(b"written just now, again\n")
    assert outputs.store_deferred([(str(newer), hash_file(newer))], lambda p, _s, _d: confirmed.append(p)) == []
    assert confirmed == [str(old), str(newer)]


@pytest.mark.parametrize("beside", ["", " log.txt (cache=false)"], ids=["alone", "beside-an-uncached-output"])
def test_a_dropped_linked_object_is_stored_again_for_the_other_stage_that_counted_on_it(
    project: Project, beside: str
) -> None:
    """Stages a and b write the same bytes (b maybe beside an output it does
    not cache); a's output became the cache's object and b, finding it
    there, stored nothing of its own.  A process a left behind then writes
    to a.txt, and the build's end drops the object.  b counted on it too, so
    b is not sealed: the next build (where a now makes other bytes) stores
    b's output again, and a b.txt removed later comes back from the cache
    instead of b running again."""
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    project.write(
        "a.sh",
        "if [ -e once ]; then echo other > a.txt; exit; fi\n"
        "touch once; echo same > a.txt\n"
        "(sleep 1; chmod u+w a.txt; echo late >> a.txt) </dev/null >/dev/null 2>&1 &\n",
    )
    project.pivotfile(
        f"""
stage a:
    outs: a.txt
    run: sh a.sh
stage b:
    outs: b.txt{beside}
    run: sleep 0.5; echo same > b.txt; touch log.txt
stage c:
    outs: c.txt
    run: sleep 2; echo c > c.txt
"""
    )
    r = project.run("-j3")
    assert r.code == 0, r
    # (a's output became the object, 0.5 s before b's had the same bytes, and changed 1 s after a ended)
    assert "a.txt changed after a finished" in r.err, r.err
    assert hash_bytes(b"same\n") not in cache_digests(project.root / ".pivot/cache")
    again = project.run("--json", "-j3")
    assert again.code == 0, again
    assert statuses(again) == {"a": "ran", "b": "skipped", "c": "skipped"}
    assert hash_bytes(b"same\n") in cache_digests(project.root / ".pivot/cache")
    if beside:
        return  # (a stage with an output not cached cannot be restored from the cache)
    (project.root / "b.txt").unlink()
    restored = project.run("--json", "-j3")
    assert restored.code == 0, restored
    assert statuses(restored) == {"a": "skipped", "b": "restored", "c": "skipped"}
    assert (project.root / "b.txt").read_text() == "same\n"


@pytest.mark.usefixtures("reads_cannot_wait")
def test_rereading_to_confirm_copies_nothing_and_a_changed_linked_object_goes(tmp_path: Path) -> None:
    from pivotbuild.cache.outputs import OutputCache

    outputs = OutputCache(tmp_path, lambda _text: None)
    old = tmp_path / "old.bin"
    old.write_bytes(b"written a while ago\n")
    linked = tmp_path / "linked.bin"
    linked.write_bytes(b"stored by hard link\n")
    digest = outputs.cache.ingest_by_link(str(linked)).digest
    with open(linked, "r+b") as f:  # something still writing the output after the stage ended
        f.write(b"STORED")
    time.sleep(0.1)  # past the racy window
    new = tmp_path / "new.bin"
    new.write_bytes(b"written just now\n")
    confirmed: list[str] = []
    changed = outputs.store_deferred(
        [(str(old), hash_file(old)), (str(new), hash_file(new)), (str(linked), digest), (str(tmp_path / "gone"), "0")],
        lambda path, _st, _digest: confirmed.append(path),
        lambda _seconds: None,  # the build is over: what is still racy is left to its settling
        copy=False,
    )
    assert confirmed == [str(old)]
    assert changed == [str(linked)]
    assert not outputs.cache.has(hash_file(old))  # read, not copied
    assert not outputs.cache.has(digest)  # the object was the changed file itself


def test_a_linked_output_written_to_while_it_was_hashed_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something writes to an output while hardlink mode hashes it: the stamp
    it is recorded with is the one from before (which the file no longer
    has), and it is read again behind the build, which finds the change and
    drops the object (the same file) from the cache."""
    from pivotbuild.cache import store
    from pivotbuild.cache.outputs import OutputCache
    from pivotbuild.errors import Location
    from pivotbuild.model import Out, Stage, StageId
    from pivotbuild.state import stamps

    out = tmp_path / "out.bin"
    out.write_bytes(b"as the stage wrote it\n")
    real = store.hash_file

    def hash_then_write(path: str) -> str:
        digest = real(path)
        with open(out, "ab") as f:  # a process the stage left behind
            f.write(b"more\n")
        st = os.stat(out)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # its write's time, whatever the clock's tick
        return digest

    monkeypatch.setattr(store, "hash_file", hash_then_write)
    outputs = OutputCache(tmp_path, lambda _text: None)
    outputs.mode = Mode.HARDLINK
    stage = Stage(id=StageId("", "s"), base="s", loc=Location("Pivotfile", 1, 1), command=None, outs=(Out("out.bin"),))
    before = os.stat(out)
    captured = outputs.capture(stage, {}, True, defer=True)
    ((_, st, digest),) = captured.seen
    assert digest == hash_bytes(b"as the stage wrote it\n")
    assert (st.st_size, st.st_mtime_ns) == (before.st_size, before.st_mtime_ns)  # as it was hashed
    assert stamps.stamp(st) != stamps.stamp(os.stat(out))
    assert captured.confirm == ((str(out), digest),)
    monkeypatch.setattr(store, "hash_file", real)
    changed = outputs.store_deferred(captured.confirm, lambda *_: None, copy=False)  # (once past its racy window)
    assert changed == [str(out)]
    assert not outputs.cache.has(digest)


@pytest.mark.parametrize("proving", [True, False], ids=["reads-prove-stamps", "reads-cannot-wait"])
def test_a_small_output_is_stored_as_it_was_hashed_though_it_changed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proving: bool
) -> None:
    """Where the read that hashed a small output as its stage ended proved
    its stamp (ext4, tmpfs), the cache stores those very bytes, behind the
    build, without reading the file again: a process the stage left behind
    that rewrites the file meanwhile changes neither the stored object nor
    the record's hash (the stat cache sees the new stamp next build).
    Where the read proves nothing, the file is read again once its racy
    window has passed, and a change found then is reported, as before."""
    from pivotbuild.cache.outputs import OutputCache
    from pivotbuild.errors import Location
    from pivotbuild.model import Out, Stage, StageId
    from pivotbuild.state import stamps

    out = tmp_path / "out.txt"
    out.write_bytes(b"as the stage wrote it\n")
    dev = os.stat(out).st_dev
    monkeypatch.setattr(stamps, "_multigrain", [frozenset({dev})])
    monkeypatch.setattr(stamps, "_proving", [frozenset({dev} if proving else ())])
    outputs = OutputCache(tmp_path, lambda _text: None)
    stage = Stage(id=StageId("", "s"), base="s", loc=Location("Pivotfile", 1, 1), command=None, outs=(Out("out.txt"),))
    captured = outputs.capture(stage, {}, True, defer=True)
    digest = hash_bytes(b"as the stage wrote it\n")
    assert captured.outs[0].hash == digest
    assert captured.deferred == ((str(out), digest),)
    assert dict(captured.contents) == ({str(out): b"as the stage wrote it\n"} if proving else {})
    out.write_bytes(b"rewritten after the stage\n")  # (before the storer's copy)
    confirmed: list[str] = []
    changed = outputs.store_deferred(
        captured.deferred, lambda path, _st, _d: confirmed.append(path), lambda _s: None, contents=captured.contents
    )
    if proving:
        assert changed == []
        assert outputs.cache.read(digest) == b"as the stage wrote it\n"
    else:
        assert changed == [str(out)]
        assert not outputs.cache.has(digest)
    assert confirmed == []


def test_a_stage_whose_storing_failed_is_stored_by_the_next_build(project: Project) -> None:
    """The cache cannot take the stage's output (its objects directory is a
    file): the stage is recorded, not cached, and not sealed, so the next
    build, with the cache usable again, stores the output; removed later,
    the output comes back from the cache instead of the stage running."""
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    project.pivotfile("stage make:\n    deps: in.txt\n    outs: out.txt\n    run: cat in.txt > $@; sleep 0.3\n")
    project.write("in.txt", "x\n")
    project.write(".pivot/cache/objects", "blocked\n")
    time.sleep(0.3)  # (in.txt past its racy window: the stage could be sealed)
    r = project.run()
    assert r.code == 0, r
    assert "recorded, but not cached" in r.err, r.err
    os.unlink(project.root / ".pivot/cache/objects")
    again = project.run("--json")
    assert again.code == 0, again
    assert statuses(again) == {"make": "skipped"}
    (project.root / "out.txt").unlink()
    lost = project.run("--json")
    assert lost.code == 0, lost
    assert statuses(lost) == {"make": "restored"}
    assert (project.root / "out.txt").read_text() == "x\n"


def test_a_stage_whose_storing_fails_half_way_is_not_stored_and_its_linked_output_is_still_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hardlink mode links a stage's first output into the cache, then the disk
    fills up before its second is stored.  The stage is recorded without the
    cache (a warning says so) and counts as not stored, so the next build
    stores what the cache lacks; the first output is still the cache's
    object, so the build's end looks at it like any other linked output,
    and drops it once a process the stage left behind has written to it."""
    from pivotbuild.build.executors import runner, stagework
    from pivotbuild.cache.outputs import OutputCache
    from pivotbuild.cache.storer import Storer
    from pivotbuild.errors import Location
    from pivotbuild.events import Event, Message
    from pivotbuild.model import Out, Stage, StageId

    (tmp_path / "a.bin").write_bytes(b"first output\n")
    (tmp_path / "b.bin").write_bytes(b"second output\n")
    warnings: list[str] = []
    outputs = OutputCache(tmp_path, warnings.append)
    outputs.mode = Mode.HARDLINK
    real = outputs.cache.ingest_by_link
    calls: list[str] = []

    def disk_full_on_the_second(src: str) -> store_mod.Linked:
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src)

    monkeypatch.setattr(outputs.cache, "ingest_by_link", disk_full_on_the_second)
    stage = Stage(
        id=StageId("", "s"),
        base="s",
        loc=Location("Pivotfile", 1, 1),
        command=None,
        outs=(Out("a.bin"), Out("b.bin")),
    )
    events: list[Event] = []
    ok = runner.RunResult(0, None, False, False, (), 0.0)
    result, captured = stagework.capture(stage, ok, outputs=outputs, known={}, store=True, label="s", put=events.append)
    assert result.ok and captured is not None
    assert [e.text for e in events if isinstance(e, Message)] == [
        "could not store the outputs of s in the cache (No space left on device); recorded, but not cached"
    ]
    first = hash_bytes(b"first output\n")
    assert [o.hash for o in captured.outs] == [first, hash_bytes(b"second output\n")]
    assert captured.uncached and not captured.stored
    assert [(path, digest) for path, digest, _ in captured.linked] == [(str(tmp_path / "a.bin"), first)]
    assert outputs.cache.has(first)
    storer = Storer(outputs, warnings.append, lambda *proof: None)
    storer.put(stage, None, (), "s", linked=captured.linked, holds=captured.seen, failed=captured.uncached)
    os.chmod(tmp_path / "a.bin", 0o644)
    with open(tmp_path / "a.bin", "ab") as f:  # a process the stage left behind
        f.write(b"late\n")
    storer.finish()
    assert storer.unstored == {stage.id}
    assert not outputs.cache.has(first)
    assert warnings == [f"{tmp_path / 'a.bin'} changed after s finished; the next build will see it"]


def test_a_linked_output_rewritten_while_it_was_hashed_with_its_mtime_put_back_is_not_proven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something rewrites an output in place (the same size) just after hardlink
    mode read it, and puts its mtime back, as `touch -r` or `cp -p` would: its
    size, mtime and inode are what they were, but its ctime is not.  Its stamp
    must not pass for proof of the hash read before (even where changes after
    a `stat` always show), and reading it again finds the change."""
    from pivotbuild.cache import store
    from pivotbuild.cache.outputs import OutputCache
    from pivotbuild.state import stamps

    out = tmp_path / "out.bin"
    out.write_bytes(b"as the stage wrote it\n")
    monkeypatch.setattr(stamps, "_multigrain", [frozenset({os.stat(out).st_dev})])
    real = store.hash_file

    def hash_then_rewrite(path: str) -> str:
        digest = real(path)
        st = os.stat(out)
        with open(out, "r+b") as f:
            f.write(b"AS THE STAGE WROTE IT\n")
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        return digest

    monkeypatch.setattr(store, "hash_file", hash_then_rewrite)
    outputs = OutputCache(tmp_path, lambda _text: None)
    linked = outputs.cache.ingest_by_link(str(out))
    monkeypatch.setattr(store, "hash_file", real)
    assert linked.digest == hash_bytes(b"as the stage wrote it\n")
    assert not linked.proven
    changed = outputs.store_deferred([(str(out), linked.digest)], lambda *_: None, copy=False)
    assert changed == [str(out)]
    assert not outputs.cache.has(linked.digest)


def _directories_thread() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cache directories"]


def test_the_first_link_into_a_fresh_cache_makes_its_object_directories_on_a_thread(tmp_path: Path) -> None:
    """Hardlink mode links outputs from the build loop: the 256 `objects/ab/`
    directories a fresh cache lacks are made by a thread, not one at a time
    by the loop as objects need them (Cache._shards_ahead)."""
    cache = Cache(tmp_path / "cache")
    outs = []
    for i in range(40):
        out = tmp_path / f"out{i}.txt"
        out.write_text(f"output {i}\n")
        outs.append(out)
    linked = [cache.ingest_by_link(str(out)) for out in outs]
    for thread in _directories_thread():
        thread.join(timeout=60)
    shards = sorted(p.name for p in cache.objects.iterdir() if p.is_dir())
    assert shards == [f"{i:02x}" for i in range(256)]
    for out, link in zip(outs, linked, strict=True):  # each output is its object, whichever made its directory
        assert link.is_object and os.path.samefile(cache.path_of(link.digest), out)
    # a cache that has them all starts no thread
    again = Cache(tmp_path / "cache")
    more = tmp_path / "more.txt"
    more.write_text("more\n")
    again.ingest_by_link(str(more))
    assert not _directories_thread()


def copy_chain(project: Project, b_first: str = "") -> None:
    """in.txt -> a.txt -> b.txt, each a `cp` (b's after `b_first`)."""
    project.pivotfile(
        f"""
stage a:
    deps: in.txt
    outs: a.txt
    run: cp $< $@
stage b:
    deps: a.txt
    outs: b.txt
    run: {b_first}cp $< $@
"""
    )
    project.write("in.txt", "x\n")


@pytest.mark.usefixtures("reads_cannot_wait")
@pytest.mark.parametrize("mode", ["copy", "hardlink", "no-cache"])
def test_outputs_are_proven_while_the_build_runs_not_reread_at_its_end(
    project: Project, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage a's output is read again behind the build once its racy window has
    passed (b is still running), so the stat cache's settling at the end of the
    build rereads only b's.  (The build runs in-process, to see what settling reads.)"""
    from pivotbuild.cli import main
    from pivotbuild.state import statcache

    if mode == "hardlink":
        project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    copy_chain(project, "sleep 0.5; ")
    settled: list[str] = []
    real = statcache.hash_proving

    def spy(path: str, st: os.stat_result) -> tuple[str, bool]:
        settled.append(os.path.basename(path))
        return real(path, st)

    monkeypatch.setattr(statcache, "hash_proving", spy)
    monkeypatch.chdir(project.root)
    assert main(["-s", *(["--no-cache"] if mode == "no-cache" else [])]) == 0
    assert (project.root / "b.txt").read_text() == "x\n"
    assert "a.txt" not in settled, settled
    assert project.run("-q").code == 0


@pytest.mark.parametrize("mode", ["copy", "no-cache"])
def test_where_a_read_waits_for_a_write_under_way_a_build_ends_without_waiting_or_reading_again(
    project: Project, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a read can wait for a `write` under way and a change after a
    `stat` always shows (ext4 and tmpfs from Linux 6.13, as on this
    project's machines; said so here for the project's file system, whatever
    the kernel), the first read of each file proves its stamp: the end of
    the build neither sleeps out a racy window nor reads any file again, and
    the next build is a no-op that reads nothing.  (In-process, to see the
    sleeps and the reads.)"""
    from pivotbuild.cli import main
    from pivotbuild.state import stamps, statcache

    dev = os.stat(project.root).st_dev
    monkeypatch.setattr(stamps, "_multigrain", [frozenset({dev})])
    monkeypatch.setattr(stamps, "_proving", [frozenset({dev})])
    monkeypatch.setattr(stamps, "forget_mounts", lambda: None)  # (what a build would read again)
    copy_chain(project)
    read: list[str] = []
    prove = statcache.hash_proving
    monkeypatch.setattr(statcache, "hash_proving", lambda p, st: (read.append(os.path.basename(p)), prove(p, st))[1])
    slept: list[float] = []
    monkeypatch.setattr(statcache.time, "sleep", slept.append)
    monkeypatch.chdir(project.root)
    no_cache = ["--no-cache"] if mode == "no-cache" else []
    assert main(["-s", *no_cache]) == 0
    assert (project.root / "b.txt").read_text() == "x\n"
    assert slept == []
    assert read == ["in.txt"]  # decided by it, once; each output read once, as its stage ended
    entries = statcache.StatCache(project.root / ".pivot/statcache").entries
    assert sorted(os.path.basename(p) for p in entries) == ["a.txt", "b.txt", "in.txt"]
    assert all(e.trusted for e in entries.values()), entries
    del read[:]
    assert main(["-s", *no_cache]) == 0
    assert read == [] and slept == []


@pytest.mark.usefixtures("reads_cannot_wait")
def test_in_hardlink_mode_where_changes_after_a_stat_show_each_output_is_hashed_once(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system whose changes after a `stat` always show in the stamp
    (Linux 6.13's multigrain timestamps; here said to be so for the project's,
    whatever this machine's kernel), hardlink mode's stamp, taken before the
    link, proves an output's hash at once: nothing reads the output again to
    prove it, behind the build or at its end, and the next build is a no-op
    that reads nothing.  (The build runs in-process, to count the reads.)"""
    from pivotbuild.cache import outputs, store
    from pivotbuild.cli import main
    from pivotbuild.state import stamps, statcache

    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    copy_chain(project)
    monkeypatch.setattr(stamps, "_multigrain", [frozenset({os.stat(project.root).st_dev})])
    monkeypatch.setattr(stamps, "forget_mounts", lambda: None)  # (what a build would read again)
    read: list[str] = []
    real = store.hash_file
    monkeypatch.setattr(store, "hash_file", lambda p: (read.append(os.path.basename(p)), real(p))[1])
    for module in (outputs, statcache):
        prove = module.hash_proving
        monkeypatch.setattr(
            module, "hash_proving", lambda p, st, prove=prove: (read.append(os.path.basename(p)), prove(p, st))[1]
        )
    monkeypatch.chdir(project.root)
    assert main(["-s"]) == 0
    assert (project.root / "b.txt").read_text() == "x\n"
    # each output once, by its link in the cache (in.txt, written just now, is read again at the end)
    assert len([n for n in read if n != "in.txt"]) == 2, read
    entries = statcache.StatCache(project.root / ".pivot/statcache").entries
    assert all(e.trusted for e in entries.values()), entries
    del read[:]
    assert main(["-s"]) == 0
    assert read == []


def test_hardlink_mode_never_links_a_file_that_is_not_the_stages_own(project: Project, tmp_path: Path) -> None:
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    outside = tmp_path / "outside.txt"
    outside.write_text("elsewhere\n")
    project.pivotfile(
        f"""
stage same:
    deps: in.txt
    outs: same.txt
    run: ln in.txt $@
stage rel:
    deps: in.txt
    outs: rel.txt
    run: ln -s in.txt $@
stage abs:
    outs: abs.txt
    run: ln -s {outside} $@
"""
    )
    project.write("in.txt", "source\n")
    r = project.run()
    assert r.code == 0, r.err
    assert "could not store" not in r.err, r.err
    src = project.root / "in.txt"
    cache_dir = project.root / ".pivot/cache"
    # The source a stage hard-linked as its output is left as it was: writable, not an object.
    assert os.stat(src).st_mode & 0o200
    same = StoredObject(cache_dir, hash_file(src))
    assert same.intact()
    assert not same.path.exists() or os.stat(src).st_ino != os.stat(same.path).st_ino
    # Symlinked outputs are stored by content; what they point at is not touched.
    assert StoredObject(cache_dir, hash_file(project.root / "rel.txt")).read_bytes() == b"source\n"
    obj = StoredObject(cache_dir, hash_file(outside))
    assert not obj.path.is_symlink() and obj.read_bytes() == b"elsewhere\n"
    assert os.stat(outside).st_mode & 0o200


def test_a_torn_run_cache_entry_is_ignored_then_replaced(project: Project) -> None:
    """Entries are appended to a log in place, so a build killed mid-write can
    leave one cut short: it must never be believed (it is said, once), and the
    next record of those inputs must replace it."""
    built(project)
    assert finished(project.run("X=2", "--json").out)["make"][0] == "ran"
    logs = sorted((project.root / ".pivot/cache/runs").glob("?.log"))
    assert logs and not list((project.root / ".pivot/cache/runs").glob("??/*"))  # (no file per entry)
    for log in logs:
        log.write_bytes(log.read_bytes()[:-5])  # every log's last entry torn
    r = project.run("--json")  # X back to 1: the entry does not decode
    back = finished(r.out)
    assert back["make"][0] == "ran"
    assert "damaged or torn entr" in r.err and r.err.count(".pivot/cache/runs/") == len(logs), r.err
    assert runs(project) == 3
    # X=2's record, replaced just now, is an entry of its own (whole): restored.
    assert finished(project.run("X=2", "--json").out)["make"][0] == "restored"
    assert finished(project.run("--json").out)["make"][0] == "restored"  # X=1's entry was rewritten whole
    assert runs(project) == 3
    assert (project.root / "out.txt").read_text() == "hello\n1\n"


def test_run_cache_misses_open_no_entry_and_hits_see_this_builds_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pivotbuild.cache.runcache import RunCache
    from pivotbuild.model import StageId
    from pivotbuild.state.records import FileRecord

    earlier = RunCache(tmp_path)
    deps = (FileRecord("in.txt", "file", "a" * 32),)
    outs = (FileRecord("out.txt", "file", "b" * 32),)
    earlier.record(StageId("", "s0"), "fp", deps, outs)
    opened: list[str] = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: (opened.append(self.name), real(self))[1])
    runs_ = RunCache(tmp_path)
    assert all(runs_.lookup(StageId("", f"s{i}"), "fp", deps) is None for i in range(1, 200))
    assert opened == []  # each folder listed once; a miss reads nothing
    assert runs_.lookup(StageId("", "s0"), "fp", deps) == outs  # an earlier build's entry
    runs_.record(StageId("", "s7"), "fp", deps, outs)
    assert runs_.lookup(StageId("", "s7"), "fp", deps) == outs  # and one this build recorded


def test_an_empty_run_cache_answers_a_first_builds_lookups_from_one_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project's first build: the run cache holds nothing, so a lookup lists
    # runs/ once and hashes nothing (not even the stage's name); an entry this
    # build records is still found, and so is one another build put there.
    from pivotbuild.cache import runcache
    from pivotbuild.cache.runcache import RunCache
    from pivotbuild.model import StageId
    from pivotbuild.state.records import FileRecord

    deps = (FileRecord("in.txt", "file", "a" * 32),)
    outs = (FileRecord("out.txt", "file", "b" * 32),)
    keyed: list[StageId] = []
    real_key = runcache.stage_key
    monkeypatch.setattr(runcache, "stage_key", lambda sid: (keyed.append(sid), real_key(sid))[1])
    listed: list[str] = []
    real_listdir = runcache.os.listdir
    monkeypatch.setattr(runcache.os, "listdir", lambda path: (listed.append(str(path)), real_listdir(path))[1])
    first = RunCache(tmp_path)
    assert all(first.lookup(StageId("", f"s{i}"), "fp", deps) is None for i in range(50))
    assert keyed == [] and len(listed) == 1
    first.record(StageId("", "s7"), "fp", deps, outs)
    assert first.lookup(StageId("", "s7"), "fp", deps) == outs
    assert RunCache(tmp_path).lookup(StageId("", "s7"), "fp", deps) == outs  # (the next build)


def test_recording_a_run_twice_keeps_one_whole_entry(tmp_path: Path) -> None:
    from pivotbuild.cache.runcache import RunCache
    from pivotbuild.cache.runlog import read_log
    from pivotbuild.model import StageId
    from pivotbuild.state.files import _umask
    from pivotbuild.state.records import FileRecord

    runs_ = RunCache(tmp_path)
    sid, deps = StageId("", "s"), (FileRecord("in.txt", "file", "a" * 32),)
    one, two = (FileRecord("out.txt", "file", "b" * 32),), (FileRecord("out.txt", "file", "c" * 32),)
    runs_.record(sid, "fp", deps, one)
    runs_.record(sid, "fp", deps, one)  # already there: left as it is
    (log,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(read_log(log.read_bytes())[0]) == 1 and log.name.endswith(".log")
    written = log.read_bytes()
    assert RunCache(tmp_path).lookup(sid, "fp", deps) == one  # (another build: read from the log)
    assert runs_.lookup(sid, "fp", deps) == one
    RunCache(tmp_path).record(sid, "fp", deps, one)  # another build, the same result: nothing appended
    assert log.read_bytes() == written
    runs_.record(sid, "fp", deps, two)  # the same inputs gave other outputs: the newest wins
    assert runs_.lookup(sid, "fp", deps) == two
    assert RunCache(tmp_path).lookup(sid, "fp", deps) == two
    log.write_bytes(b"\x81")  # torn
    torn = RunCache(tmp_path)
    assert torn.lookup(sid, "fp", deps) is None
    torn.record(sid, "fp", deps, one)
    assert RunCache(tmp_path).lookup(sid, "fp", deps) == one
    assert oct(log.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_entries_of_many_stages_share_sixteen_logs(tmp_path: Path) -> None:
    """A build appends to a log of sixteen folders (creating a file costs what
    a small stage does): 300 entries, 16 files; each read back whole."""
    from pivotbuild.cache.runcache import RunCache
    from pivotbuild.model import StageId
    from pivotbuild.state.records import FileRecord

    runs_ = RunCache(tmp_path)
    deps = (FileRecord("in.txt", "file", "a" * 32),)
    for i in range(300):
        runs_.record(StageId("", f"s{i}"), "fp", deps, (FileRecord("out.txt", "file", f"{i:032x}"),))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 16 and all(p.suffix == ".log" for p in files)
    again = RunCache(tmp_path)
    assert all(
        again.lookup(StageId("", f"s{i}"), "fp", deps) == (FileRecord("out.txt", "file", f"{i:032x}"),)
        for i in range(300)
    )
    assert sum(len(again.entries(shard)) for shard in again.shards()) == 300
    assert all(  # (and looked up again, once every log was read whole)
        again.lookup(StageId("", f"s{i}"), "fp", deps) == (FileRecord("out.txt", "file", f"{i:032x}"),)
        for i in range(300)
    )


def test_reflink_mode_copies_where_the_filesystem_cannot_and_says_so_once(project: Project) -> None:
    # Three files in the cache: out.txt and tree/copy.txt (one object, large: a
    # file of its own, which a checkout would reflink) and tree/sub/deep.txt (a
    # small one: packed, written from memory, never a reflink).
    built(project, LARGE)
    project.write(".pivot/config.toml", '[core]\ncheckout = "reflink"\n')
    (project.root / "out.txt").unlink()
    shutil.rmtree(project.root / "tree")
    r = project.run("checkout")  # this ext4 has no reflinks: every file is copied
    assert r.code == 0, r.err
    assert r.err.count("cannot reflink") == 1
    assert (project.root / "tree/sub/deep.txt").read_text() == "deep\n"
    assert (project.root / "out.txt").stat().st_mode & 0o200  # a copy of its own, writable
    assert project.run("verify").code == 0
    (project.root / "out.txt").unlink()
    shutil.rmtree(project.root / "tree")
    b = project.run("--json")  # a build that restores says it once too
    assert b.code == 0, b.err
    assert set(finished(b.out).values()) == {("restored", "out out.txt missing"), ("restored", "out tree missing")}
    assert b.err.count("cannot reflink") == 1


def test_reflink_mode_is_silent_where_the_filesystem_shares_extents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pivotbuild.cache import copying

    notices: list[str] = []
    cache = Cache(tmp_path / "cache", notices.append)
    digests = []
    for i in range(3):
        src = tmp_path / f"{i}.txt"
        src.write_text(f"content {i}\n" * (PACK_MAX // 8))  # too large for a pack: a file to reflink
        digests.append(hash_file(src))
        assert cache.store_file(src, digests[-1])

    clones: list[int] = []

    def shared(src_fd: int, dest_fd: int) -> bool:  # a filesystem with reflinks, as far as checkout can tell
        clones.append(dest_fd)
        os.sendfile(dest_fd, src_fd, 0, os.fstat(src_fd).st_size)
        return True

    monkeypatch.setattr(copying, "reflink", shared)
    for i, digest in enumerate(digests):
        cache.checkout_file(digest, tmp_path / f"reflinked-{i}.txt", Mode.REFLINK)
        assert (tmp_path / f"reflinked-{i}.txt").read_text() == f"content {i}\n" * (PACK_MAX // 8)
    assert len(clones) == 3 and notices == []

    monkeypatch.setattr(copying, "reflink", lambda src_fd, dest_fd: False)
    for i, digest in enumerate(digests):
        cache.checkout_file(digest, tmp_path / f"copied-{i}.txt", Mode.REFLINK)
        cache.checkout_file(digest, tmp_path / f"plain-{i}.txt", Mode.COPY)  # copy mode never says it
        assert (tmp_path / f"copied-{i}.txt").read_text() == f"content {i}\n" * (PACK_MAX // 8)
    assert len(notices) == 1 and "cannot reflink" in notices[0]


def test_a_damaged_run_cache_entry_is_reported_once_and_removed(tmp_path: Path) -> None:
    from pivotbuild.cache.runcache import RunCache, encode_entry, entry_rel, inputs_key, stage_key
    from pivotbuild.model import StageId
    from pivotbuild.state.records import FileRecord

    said: list[str] = []
    cache_dir = tmp_path / ".pivot" / "cache"
    sid, deps = StageId("", "s"), (FileRecord("in.txt", "file", "a" * 32),)
    outs = (FileRecord("out.txt", "file", "b" * 32),)
    RunCache(cache_dir).record(sid, "fp", deps, outs)
    (log,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    blob = bytearray(log.read_bytes())
    blob[blob.index(b"b" * 32)] ^= 0x01  # a hash digit: still valid msgpack, but not what was written
    log.write_bytes(bytes(blob))
    runs_ = RunCache(cache_dir, said.append)
    assert runs_.lookup(sid, "fp", deps) is None
    assert len(said) == 1 and said[0].startswith(f".pivot/cache/runs/{log.name}: a damaged"), said
    assert not log.exists()  # (it held nothing else)
    assert RunCache(cache_dir, said.append).lookup(sid, "fp", deps) is None
    assert len(said) == 1
    runs_.record(sid, "fp", deps, outs)
    assert RunCache(cache_dir).lookup(sid, "fp", deps) == outs

    # An entry that is a file of its own (as pull writes them): its own checksum.
    other = StageId("", "t")
    entry = cache_dir / entry_rel(stage_key(other), inputs_key("fp", deps))
    entry.parent.mkdir(parents=True)
    damaged = bytearray(encode_entry(outs))
    damaged[damaged.index(b"b" * 32)] ^= 0x01
    entry.write_bytes(bytes(damaged))
    assert RunCache(cache_dir, said.append).lookup(other, "fp", deps) is None
    assert len(said) == 2 and said[1].startswith(".pivot/cache/runs/") and "checksum mismatch" in said[1], said
    assert not entry.exists()
    entry.write_bytes(encode_entry(outs))
    assert RunCache(cache_dir).lookup(other, "fp", deps) == outs  # (read from its file)


# -- checkout modes and directories ----------------------------------------------------------------

DIRS = """
stage tree:
    outs: tree/
    run:
        mkdir -p $@/sub
        echo one > $@/one.txt
        echo one > $@/sub/same.txt
        printf '#!/bin/sh\\necho hi\\n' > $@/tool.sh
        chmod +x $@/tool.sh
        ln -s one.txt $@/link
stage file:
    outs: single.txt
    run: echo single > $@
"""


def _check_out_in(project: Project, mode: str) -> Path:
    project.pivotfile(DIRS)
    assert project.run().code == 0
    project.write(".pivot/config.toml", f'[core]\ncheckout = "{mode}"\n')
    shutil.rmtree(project.root / "tree")
    (project.root / "single.txt").unlink()
    r = project.run("checkout")
    assert r.code == 0, r.err
    v = project.run("verify")
    assert v.code == 0, v.out + v.err
    r = project.run("--json")
    assert r.code == 0, r.err
    assert set(statuses(r).values()) == {"skipped"}
    tree = project.root / "tree"
    assert os.access(tree / "tool.sh", os.X_OK)
    assert os.readlink(tree / "link") == "one.txt"
    assert (tree / "sub/same.txt").read_text() == "one\n"
    for f in ("one.txt", "sub/same.txt", "tool.sh"):
        assert not (tree / f).is_symlink()
        assert (tree / f).stat().st_mode & 0o222 == 0, f  # read-only: edits cannot reach the cache
    return tree


def test_hardlink_mode_checks_out_directories_that_verify(project: Project) -> None:
    tree = _check_out_in(project, "hardlink")
    assert (tree / "one.txt").stat().st_nlink > 1  # still linked to the cache
    assert (project.root / "single.txt").stat().st_nlink > 1


def test_symlink_mode_checks_out_directories_that_verify(project: Project) -> None:
    _check_out_in(project, "symlink")
    assert (project.root / "single.txt").is_symlink()


def test_a_directory_restored_in_symlink_mode_is_up_to_date(project: Project) -> None:
    project.pivotfile(DIRS)
    project.write(".pivot/config.toml", '[core]\ncheckout = "symlink"\n')
    assert project.run().code == 0
    shutil.rmtree(project.root / "tree")
    r = project.run("--json")
    assert statuses(r)["tree"] == "restored"
    assert project.run("verify").code == 0
    assert set(statuses(project.run("--json")).values()) == {"skipped"}


def test_a_digest_too_short_to_name_an_object_is_never_held(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    src = tmp_path / "big.txt"
    src.write_text("x" * (PACK_MAX + 1))  # (a file of its own: its shard directory exists)
    digest = hash_file(src)
    assert cache.store_file(src, digest) and cache.has(digest)
    assert not cache.has("") and not cache.has(digest[:2]) and not cache.has(digest[:1])


@pytest.mark.usefixtures("reads_cannot_wait")
def test_reading_an_output_again_skips_one_removed_while_it_settled(tmp_path: Path) -> None:
    """An output read again (hardlink mode's proof, `copy=False`) that a later
    stage removed while the storer waited out its racy window is left to the
    end of the build, as one removed before: no "could not store" warning,
    no stage left unstored."""
    from pivotbuild.cache.outputs import OutputCache

    (tmp_path / ".pivot").mkdir()
    out = tmp_path / "out.bin"
    out.write_bytes(b"written\n")
    soon = time.time_ns() + 5_000_000  # (stamped in the racy window, however slow this test runs)
    os.utime(out, ns=(soon, soon))
    outputs = OutputCache(tmp_path, lambda _text: None)
    paused: list[float] = []

    def pause(seconds: float) -> None:
        paused.append(seconds)
        out.unlink()

    changed = outputs.store_deferred([(str(out), hash_file(out))], lambda *_: None, pause, copy=False)
    assert paused and changed == []


@pytest.mark.parametrize(
    ("stated", "now"), [(40, 100), (100, 40), (10, store_mod.SMALL + 10), (store_mod.SMALL + 10, 10)]
)
def test_ingest_given_a_stale_size_stores_the_file_as_it_is(tmp_path: Path, stated: int, now: int) -> None:
    """The size a caller's stat found only says how much to read first: a
    file that grew or shrank since is stored whole, as it is now."""
    data = bytes(range(256)) * (now // 256) + b"x" * (now % 256)
    src = tmp_path / "out.bin"
    src.write_bytes(data)
    cache = Cache(tmp_path / "cache")
    digest = cache.ingest(str(src), stated)
    assert digest == hash_bytes(data)
    assert cache.read(digest) == data


def test_a_builds_run_cache_writes_each_log_once_when_the_build_ends(tmp_path: Path) -> None:
    """A build's run cache (deferred) answers for what it recorded at once,
    and appends it when the build ends: one write a log, each entry a frame,
    found by the next build."""
    from pivotbuild.cache.runcache import RunCache
    from pivotbuild.cache.runlog import read_log
    from pivotbuild.model import StageId
    from pivotbuild.state.records import FileRecord

    deps = (FileRecord("in.txt", "file", "a" * 32),)
    building = RunCache(tmp_path, deferred=True)
    recorded = {}
    for i in range(40):
        outs = (FileRecord(f"out{i}.txt", "file", f"{i:032x}"),)
        building.record(StageId("", f"s{i}"), "fp", deps, outs)
        recorded[f"s{i}"] = outs
    assert building.lookup(StageId("", "s3"), "fp", deps) == recorded["s3"]
    assert not list(tmp_path.rglob("*.log"))  # nothing written yet
    building.flush()
    logs = list(tmp_path.rglob("*.log"))
    assert 1 < len(logs) <= 16 and sum(len(read_log(p.read_bytes())[0]) for p in logs) == 40
    after = RunCache(tmp_path)
    assert all(after.lookup(StageId("", name), "fp", deps) == outs for name, outs in recorded.items())
