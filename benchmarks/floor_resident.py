"""floor.py --resident: its `+state` loop run for each build by one process
that stays between builds, its state kept in memory (the loop's KEPT, ZSTD
and AFTER hooks), reached by a client in C and by `python -S`: the floor
under a build server and its client (docs/server.md).  The loop itself is
floor.py's, written to `scratch/loop.py` before `start`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

# --resident: the loop above, at `+state`, run for each build by one process
# that keeps its state in memory between builds (argv: the loop's file, the
# socket).  A request: the client's directory and the loop's arguments,
# NUL-separated; the answer: one byte, the status.
RESIDENT = textwrap.dedent(
    """
    import os, socket, sys
    import msgpack, select, xxhash
    from importlib.machinery import PathFinder
    loop, where = sys.argv[1], sys.argv[2]
    code = compile(open(loop).read(), loop, "exec")
    package = PathFinder.find_spec("zstandard")
    spec = PathFinder.find_spec("zstandard.backend_c", package.submodule_search_locations)
    zstd = spec.loader.create_module(spec)
    spec.loader.exec_module(zstd)
    kept = {}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(where)
    server.listen(4)
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # (the loop's own lines, `loop-cpu`, go nowhere)
    while True:
        conn, _ = server.accept()
        request = b""
        while chunk := conn.recv(65536):
            request += chunk
        here, *args = request.decode().split("\\0")
        os.chdir(here)
        sys.argv = [loop, *args]
        after = []
        try:
            exec(code, {"__name__": "__main__", "KEPT": kept, "ZSTD": zstd, "AFTER": after})
            status = 0
        except BaseException as exc:
            print("resident:", repr(exc), file=sys.stderr, flush=True)
            status = 1
        conn.sendall(bytes([status]))
        conn.close()
        for work in after:
            work()
    """
)

# Its clients: one in C (compiled here with `cc`, where there is one), as a
# build tool's would be, and one in Python without `site` (`_socket`: the
# `socket` module's import costs more than the request).
CLIENT_C = textwrap.dedent(
    """
    #include <string.h>
    #include <sys/socket.h>
    #include <sys/un.h>
    #include <unistd.h>
    int main(int argc, char **argv) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
        if (connect(s, (struct sockaddr *)&a, sizeof a))
            return 2;
        char here[4096];
        if (!getcwd(here, sizeof here))
            return 2;
        write(s, here, strlen(here));
        for (int i = 2; i < argc; i++)
            write(s, "", 1), write(s, argv[i], strlen(argv[i]));
        shutdown(s, SHUT_WR);
        unsigned char status;
        return read(s, &status, 1) == 1 ? status : 3;
    }
    """
)
CLIENT_PY = (
    "import os, sys, _socket\n"
    "s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
    "s.connect(sys.argv[1])\n"
    "s.sendall(b'\\0'.join(os.fsencode(a) for a in [os.getcwd(), *sys.argv[2:]]))\n"
    "s.shutdown(_socket.SHUT_WR)\n"
    "sys.exit(s.recv(1)[0])\n"
)


def start(scratch: Path, jobs: int, cmd: str) -> dict[str, tuple[list[str], subprocess.Popen[str]]]:
    """--resident: a resident loop (RESIDENT) for each client, started and
    ready, and the command that builds through it: "resident" (the client in
    C, where `cc` is) and "resident-py" (`python -S`)."""
    (scratch / "resident.py").write_text(RESIDENT)
    clients = {"resident-py": [sys.executable, "-S", "-c", CLIENT_PY]}
    if shutil.which("cc"):
        (scratch / "client.c").write_text(CLIENT_C)
        subprocess.run(["cc", "-O2", "-o", str(scratch / "client"), str(scratch / "client.c")], check=True)
        clients = {"resident": [str(scratch / "client")], **clients}
    found = {}
    for name, client in clients.items():
        where = str(scratch / f"{name}.sock")
        process = subprocess.Popen(
            [sys.executable, str(scratch / "resident.py"), str(scratch / "loop.py"), where],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        process.stdout.close()
        found[name] = ([*client, where, "+state", str(jobs), cmd, str(scratch / "stages")], process)
    return found
