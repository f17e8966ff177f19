"""A real local Dask cluster for the tests: one scheduler and its workers on
loopback, each process in a directory of its own (its TMPDIR too, so a stage
that prints `pwd` shows where it ran).  The `cluster` fixture (conftest.py)
starts one per test module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import s3server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Every worker can read and write the test S3 server's bucket, as a worker of
# a real cluster would have its keys in its environment.
_S3_KEYS = {"AWS_ACCESS_KEY_ID": s3server.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3server.SECRET_KEY}


class Cluster:
    """A scheduler and its workers on loopback, each process in a directory
    of its own under `base` (its TMPDIR too) and a process group of its own;
    `env` is added to their environment (benchmarks/dask_stages.py gives a
    baseline's cluster its own PYTHONPATH)."""

    def __init__(self, base: Path, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.env = env or {}
        self.tcp = f"tcp://127.0.0.1:{free_port()}"
        self.address = self.tcp.replace("tcp://", "dask://")  # as --executor takes it
        self.workers: list[Path] = []  # each worker's directory
        self.procs: list[subprocess.Popen[bytes]] = []
        self.homes: dict[int, Path] = {}  # each process's directory, by its pid
        self._start("scheduler", ["scheduler", "--port", self.tcp.rpartition(":")[2]])
        self._wait_for_scheduler()

    def add_worker(self) -> Path:
        name = f"worker{len(self.workers) + 1}"
        home = self._start(name, ["worker", self.tcp, "--nthreads", "1", "--no-nanny", "--name", name])
        self.workers.append(home)
        return home

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client

        with Client(self.tcp, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(count, timeout=60)

    def _wait_for_scheduler(self) -> None:
        """Until the scheduler listens (a test may connect before any worker does)."""
        port = int(self.tcp.rpartition(":")[2])
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.procs[0].poll() is not None:
                    raise RuntimeError(
                        f"the Dask scheduler did not start: see {self.base / 'scheduler/log.txt'}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the processes' groups (a clean shutdown keeps nothing worth the
        seconds a worker may take to close beside its closing scheduler)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _start(self, name: str, argv: list[str]) -> Path:
        home = self.base / name
        (home / "tmp").mkdir(parents=True)
        with open(home / "log.txt", "wb") as log:  # (the process has its own descriptor)
            self.procs.append(
                subprocess.Popen(
                    [str(Path(sys.executable).with_name("dask")), *argv, "--host", "127.0.0.1", "--no-dashboard"],
                    cwd=home,
                    env={**os.environ, **_S3_KEYS, **self.env, "TMPDIR": str(home / "tmp")},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        self.homes[self.procs[-1].pid] = home
        return home
