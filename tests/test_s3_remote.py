"""s3:// remotes (remote/objectstore.py) against a real S3 server (SeaweedFS,
tests/s3server.py), through the real command: push, pull on a fresh clone,
fetch of a subset, gc, a killed push resumed, and the one-line errors."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest
import s3server
from conftest import PIVOTBUILD, Project
from helpers import REMOTE_PIPELINE, fresh_clone, statuses
from obstore.store import S3Store

PIPELINE = REMOTE_PIPELINE


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.S3Server]:
    with s3server.running(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test identity's keys, from the environment only, as a user would set them."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3server.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3server.SECRET_KEY)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A prefix of the bucket of this test's own, so tests share one server."""
    return f"{request.node.name}-{time.monotonic_ns()}"


def store(s3: s3server.S3Server, prefix: str) -> S3Store:
    return S3Store(
        s3.bucket,
        prefix=prefix,
        endpoint=s3.endpoint,
        region="us-east-1",
        access_key_id=s3server.ACCESS_KEY,
        secret_access_key=s3server.SECRET_KEY,
        client_options={"allow_http": True},
    )


def remote_objects(s3: s3server.S3Server, prefix: str) -> list[str]:
    return [o["path"] for batch in obstore.list(store(s3, prefix), "objects") for o in batch]


def built(tmp_path: Path, s3: s3server.S3Server, prefix: str, pipeline: str = PIPELINE) -> Project:
    """A built project whose default remote is the bucket under `prefix`."""
    p = Project(tmp_path / "one")
    (p.root / ".pivot").mkdir(parents=True)
    p.pivotfile(pipeline)
    p.write("in.txt", "data\n")
    assert p.run().code == 0
    added = p.run("remote", "add", "--default", "team", f"s3://{s3.bucket}/{prefix}", "--endpoint-url", s3.endpoint)
    assert added.code == 0, added.err
    return p


@pytest.mark.usefixtures("credentials")
def test_push_then_pull_and_build_on_a_fresh_clone_runs_nothing(
    tmp_path: Path, s3: s3server.S3Server, prefix: str
) -> None:
    one = built(tmp_path, s3, prefix)
    pushed = one.run("push")
    assert pushed.code == 0, pushed.err
    assert "0 already there" in pushed.err
    assert remote_objects(s3, prefix)
    config = (one.root / ".pivot/config.toml").read_text()
    assert s3server.SECRET_KEY not in config and s3server.ACCESS_KEY not in config
    again = one.run("push")
    assert "0 object(s) pushed" in again.err  # only what the bucket lacks
    two = fresh_clone(one, tmp_path)
    pulled = two.run("pull")
    assert pulled.code == 0, pulled.err
    build = two.run("--json")
    assert build.code == 0
    assert set(statuses(build.out).values()) == {"skipped"}
    assert not (two.root / "runs.log").exists()
    assert (two.root / "tree/sub/copy.txt").read_text() == "data\n"
    assert two.run("verify").code == 0


@pytest.mark.usefixtures("credentials")
def test_run_cache_entries_are_shared_through_the_bucket(tmp_path: Path, s3: s3server.S3Server, prefix: str) -> None:
    one = built(tmp_path, s3, prefix)
    assert one.run("push").code == 0
    two = fresh_clone(one, tmp_path)
    (two.root / "Pivotfile.lock").unlink()  # the teammate's results were never committed
    assert two.run("fetch").code == 0
    build = two.run("--json")
    assert set(statuses(build.out).values()) == {"restored"}
    assert not (two.root / "runs.log").exists()


@pytest.mark.usefixtures("credentials")
def test_fetch_of_a_subset_brings_only_its_objects(tmp_path: Path, s3: s3server.S3Server, prefix: str) -> None:
    one = built(tmp_path, s3, prefix)
    assert one.run("push").code == 0
    two = fresh_clone(one, tmp_path)
    fetched = two.run("fetch", "a")
    assert fetched.code == 0, fetched.err
    assert "1 object(s) fetched" in fetched.err  # a.txt, not b's tree
    build = two.run("--json")
    assert statuses(build.out) == {"a": "restored", "b": "ran"}


@pytest.mark.usefixtures("credentials")
def test_what_gc_deletes_locally_comes_back_from_the_bucket(tmp_path: Path, s3: s3server.S3Server, prefix: str) -> None:
    one = built(tmp_path, s3, prefix)
    assert one.run("push").code == 0
    old_lock = (one.root / "Pivotfile.lock").read_bytes()
    one.write("in.txt", "new data\n")
    assert one.run().code == 0
    collected = one.run("gc")
    assert collected.code == 0, collected.err
    (one.root / "Pivotfile.lock").write_bytes(old_lock)  # back to the pushed results (a git checkout)
    one.write("in.txt", "data\n")
    (one.root / "a.txt").unlink()  # the outputs of the new data are in the cache, not the bucket
    shutil.rmtree(one.root / "tree")
    pulled = one.run("pull")
    assert pulled.code == 0, pulled.err
    assert "0 already there" in pulled.err  # gc had deleted them all
    build = one.run("--json")
    assert set(statuses(build.out).values()) == {"skipped"}
    assert (one.root / "tree/sub/copy.txt").read_text() == "data\n"


@pytest.mark.usefixtures("credentials")
def test_a_killed_push_resumed_sends_only_the_rest(tmp_path: Path, s3: s3server.S3Server, prefix: str) -> None:
    many = """
    stage many:
        outs: files/
        run: mkdir -p $@ && for i in $(seq 300); do head -c 300000 /dev/urandom > $@/f$i; done
    """
    one = built(tmp_path, s3, prefix, many)
    proc = subprocess.Popen(
        [*PIVOTBUILD, "push", "-j", "1"], cwd=one.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(remote_objects(s3, prefix)) < 5:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-transfer, not finished
    sent = len(remote_objects(s3, prefix))
    assert 5 <= sent < 301  # 300 files and the directory's manifest
    again = one.run("push")
    assert again.code == 0, again.err
    moved = int(again.err.split(" object(s) pushed")[0].rsplit(" ", 1)[-1])
    already = int(again.err.split(" already there")[0].rsplit(" ", 1)[-1])
    assert already >= sent and moved == 301 - already
    assert len(remote_objects(s3, prefix)) == 301
    two = fresh_clone(one, tmp_path)
    assert two.run("pull").code == 0
    assert two.run("verify").code == 0


@pytest.mark.usefixtures("credentials")
def test_refused_credentials_are_one_line(
    tmp_path: Path, s3: s3server.S3Server, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = built(tmp_path, s3, prefix)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    pushed = one.run("push")
    assert pushed.code == 2
    assert pushed.err.startswith("pivotbuild: remote team: ")
    assert "refused the credentials" in pushed.err and "AWS_SECRET_ACCESS_KEY" in pushed.err
    assert len(pushed.err.strip().splitlines()) == 1


@pytest.mark.usefixtures("credentials")
def test_a_missing_bucket_is_one_line(tmp_path: Path, s3: s3server.S3Server, prefix: str) -> None:
    one = built(tmp_path, s3, prefix)
    assert one.run("remote", "add", "gone", "s3://no-such-bucket/x", "--endpoint-url", s3.endpoint).code == 0
    pushed = one.run("push", "-r", "gone")
    assert pushed.code == 2
    assert "pivotbuild: remote gone: the bucket of s3://no-such-bucket/x does not exist" in pushed.err
    assert len(pushed.err.strip().splitlines()) == 1


@pytest.mark.usefixtures("credentials")
def test_an_unreachable_endpoint_is_one_line_and_quick(tmp_path: Path, s3: s3server.S3Server, prefix: str) -> None:
    one = built(tmp_path, s3, prefix)
    closed = s3server.free_ports(1)[0]  # nothing listens there
    endpoint = f"http://127.0.0.1:{closed}"
    assert one.run("remote", "add", "down", f"s3://{s3.bucket}/x", "--endpoint-url", endpoint).code == 0
    for command in ("push", "fetch"):
        result = one.run(command, "-r", "down", timeout=30)  # bounded retries: never a hang
        assert result.code == 2
        assert result.err.strip() == (
            f"pivotbuild: remote down: cannot reach {endpoint} (connection refused);"
            " check endpoint_url in .pivot/config.toml and the network"
        )


def test_credentials_in_the_config_are_refused(project: Project) -> None:
    project.write(".pivot/config.toml", '[remote.b]\nurl = "s3://b/p"\nsecret_access_key = "x"\n')
    project.pivotfile("stage a:\n    outs: a.txt\n    run: touch $@\n")
    pushed = project.run("push")
    assert pushed.code == 2
    assert "secret_access_key is a credential" in pushed.err


def test_credentials_come_from_the_named_profile(
    tmp_path: Path, s3: s3server.S3Server, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    shared = tmp_path / "aws-credentials"
    shared.write_text(
        f"[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n"
        f"[team]\naws_access_key_id = {s3server.ACCESS_KEY}\naws_secret_access_key = {s3server.SECRET_KEY}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    one = built(tmp_path, s3, prefix)
    refused = one.run("push")  # the default profile's keys are wrong
    assert refused.code == 2 and "refused the credentials" in refused.err
    url = f"s3://{s3.bucket}/{prefix}"
    added = one.run("remote", "add", "team", url, "--endpoint-url", s3.endpoint, "--profile", "team")
    assert added.code == 0, added.err
    assert 'profile = "team"' in (one.root / ".pivot/config.toml").read_text()
    pushed = one.run("push")
    assert pushed.code == 0, pushed.err
    assert remote_objects(s3, prefix)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("s3:///prefix",), "name the bucket, like s3://BUCKET/PREFIX"),
        (("share", "--region", "eu-west-1"), "region apply to s3:// remotes only"),
        (("gs://bucket/p", "--endpoint-url", "http://127.0.0.1:9"), "endpoint_url apply to s3:// remotes only"),
        (("ftp://host/p",), "use a directory (a path or file://) or an object store (s3://, gs://, az://)"),
    ],
)
def test_remote_add_refuses_what_no_remote_takes(project: Project, args: tuple[str, ...], message: str) -> None:
    added = project.run("remote", "add", "team", *args)
    assert added.code == 2
    assert message in added.err
    assert not (project.root / ".pivot/config.toml").exists()
