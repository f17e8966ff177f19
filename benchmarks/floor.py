#!/usr/bin/env python3
"""How fast can any build loop written in Python run compare.py's lattice?

pivotbuild's build loop is Python. This measures the floor under that: the
same lattice (compare.py's, `md5sum` or `cat` stages), run by loops that do
only what is named, each a fresh `python3` process started as pivotbuild's
is, beside ninja on the same tree, in interleaved rounds:

  spawn   decide by mtime as make does (a stat of every dep and output), start
          each stage with os.posix_spawn (its output file opened in the
          child, as a shell's `>` is; stdin /dev/null; stderr inherited),
          wait with os.waitpid: nothing a real build tool could leave out
          but following a stage's stderr
  +pipe   each stage's stderr through a pipe, followed with epoll, as a tool
          must to show it (pivotbuild, ninja and make all do)
  +hash   each output read and hashed (XXH3-128) when its stage ends: the
          least a build that decides by content does
  +record each stage's record (its deps' and outputs' hashes, msgpack)
          appended to a journal, and its small output appended to a pack:
          the least a build that keeps a record and a cached copy does
  +state  deciding by content as STATE.md asks: a lockfile (each stage's
          command and its deps' and output's hashes) and a stat cache
          (path -> size, mtime, inode, ctime, hash: a file is read only when
          its stat differs), each zstd-compressed msgpack with a magic and a
          checksum, read at the start and, after a build that ran stages,
          replaced atomically (temporary file, fsync, rename, fsync of the
          directory), a stamp the kernel's coarse clock had not passed when
          its file was read hashed again once it has (git's racy-clean
          entries; pivotbuild's StatCache.settle waits out a longer window,
          which also covers a write under way); no seal, no history, no run
          cache beyond the journal: the least a fresh process honouring the
          state contract does
  +contract +state with the rest of what pivotbuild promises for each stage,
          done with the same system calls pivotbuild makes, in a loop of its
          own: each old output removed first (an `lstat`, then an `unlink`)
          and its directory checked (a `stat`, as a redirect into /dev or
          /proc is refused); the job pool opened afresh for the stage and
          passed to it (a fifo's two ends, `MAKEFLAGS`, closed once it has
          started, as a stage's `O_NONBLOCK` must stay its own); its line in
          a lifeline table held in a shared mapping (marked before the start,
          the pid after, freed at the end) and the mark in its environment;
          its own session and default SIGPIPE; PIVOT_STAGE: what no design
          that keeps the contract can leave out, without the Python that
          carries it in pivotbuild (events, admission, retries, timeouts)

Each row is a clean build of a fresh copy and an incremental build (one
middle-layer source edited, as compare.py edits) of the loop's own copy;
seconds, medians, and the ratio to ninja's median in the same rounds; and
the loop's own CPU per stage in the clean build (from its first start to
its last stage's end, the stages' CPU not counted): what
`benchmarks/loopcpu.py`'s `loop` row measures of pivotbuild's.

    .venv/bin/python benchmarks/floor.py --shape small --rounds 5
    .venv/bin/python benchmarks/floor.py --levels +state --busy 150   # and with 150 us more CPU a stage

`--busy US` adds a row per level in which the loop also burns US
microseconds of CPU for each stage it ends: what a build loop's own CPU per
stage costs in wall time (on 2 cores at -j2, in a clean build of the small
shape, most of it shows: 300 us more a stage made +state's clean build 0.2
to 0.24 s longer, its incremental build 8 to 18 ms; the loop is the one
serial part).

With `--resident`, two rows more: `+state`'s loop run by one process that
stays between builds (floor_resident.py: its lockfile and stat cache kept in memory,
still written and fsync'ed each build, the racy stamps settled after the
answer), reached by a client in C (`resident`, compiled here with `cc`) and
by `python -S` (`resident-py`, with `_socket`): what a build server and its
client cost at the least, the floor under pivotbuild's server
(docs/server.md).

With `--pivotbuild`, pivotbuild itself builds the same lattice in the same
rounds (a fresh copy of a project of its own each time, as compare.py's
clean build), so the row under `+contract` is what pivotbuild's own code
costs beyond the contract's system calls.

(ninja from the venv: `pip install '.[test]'`.) Nothing here but that row
is pivotbuild: it is the reference for docs/performance.md's "What remains".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare
import floor_resident

LEVELS = ("spawn", "+pipe", "+hash", "+record", "+state", "+contract")

# The loop, run as its own process: argv = [level, jobs, command, stages file].
LOOP = textwrap.dedent(
    """
    import os, sys, select, time
    level, jobs, cmd, listing = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    PIPE, STATE, CONTRACT = level != "spawn", level in ("+state", "+contract"), level == "+contract"
    HASH, RECORD = level in ("+hash", "+record", "+state", "+contract"), level in ("+record", "+state", "+contract")
    if HASH:
        import xxhash
    if RECORD:
        import msgpack
        journal = open(".floor-journal", "ab", buffering=0)
        pack = open(".floor-pack", "ab", buffering=0)
    if STATE:
        # zstd's C backend loaded alone, as pivotbuild's state/framing.py
        # does: the `zstandard` package imports `platform` (and with it
        # `re`) to choose a backend, 9 to 10 ms of a fresh process; the
        # extension itself takes 1 to 2.
        # Resident (--resident): the process that runs this for each build
        # keeps what was saved (KEPT: path -> (its stamp, the object)) and the
        # backend (ZSTD); what a build leaves for after its answer goes in AFTER.
        kept, zstandard = globals().get("KEPT"), globals().get("ZSTD")
        if zstandard is None:
            from importlib.machinery import PathFinder
            package = PathFinder.find_spec("zstandard")
            spec = PathFinder.find_spec("zstandard.backend_c", package.submodule_search_locations)
            zstandard = spec.loader.create_module(spec)
            spec.loader.exec_module(zstandard)
        def stamp_of(name):
            st = os.stat(name)
            return st.st_ino, st.st_mtime_ns, st.st_size
        def load(name):  # a state file: magic, zstd(msgpack), checksum; {} if absent
            if kept is not None:  # resident: what this process saved, while the file is as it left it
                try:
                    hit = kept.get(os.path.abspath(name))
                    if hit and hit[0] == stamp_of(name):
                        return hit[1]
                except FileNotFoundError:
                    return {}
            try:
                with open(name, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                return {}
            payload = raw[8:-16]
            assert raw[:8] == b"FLOORv01" and xxhash.xxh3_128_digest(payload) == raw[-16:]
            return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(payload))
        def save(name, obj):  # replaced atomically: a temporary file, fsync, rename, fsync the directory
            payload = zstandard.ZstdCompressor(level=3).compress(msgpack.packb(obj))
            fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"FLOORv01" + payload + xxhash.xxh3_128_digest(payload))
            os.fsync(fd)
            os.close(fd)
            os.rename(name + ".tmp", name)
            fd = os.open(".", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            if kept is not None:
                kept[os.path.abspath(name)] = (stamp_of(name), obj)
        lock = load("floor.lock")  # out -> [command, [[dep, hash]...], out hash]
        statc = load(".floor-stat")  # path -> [size, mtime_ns, inode, ctime_ns, hash]
        hashes = {}
        # A stamp is racy (the file could change again unseen) until the
        # kernel's coarse clock, which stamps files here, has passed it: read
        # before the read the hash came from (as pivotbuild's stamps.is_racy).
        # Racy entries are hashed again at the end, once that clock has passed
        # them (looked at up to three times), else left out of the cache.
        tick = int(time.clock_getres(5) * 1e9)  # CLOCK_REALTIME_COARSE
        def clock():
            return time.clock_gettime_ns(5)
        racy = {}
        def note(p, st, h, before):
            statc[p] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, h]
            changed = max(st.st_mtime_ns, st.st_ctime_ns)
            if before <= changed:
                racy[p] = changed
        def settle():
            for _ in range(3):
                newest, now = max(racy.values(), default=0), clock()
                if newest < now:
                    break
                time.sleep((newest - now + tick + tick // 4) / 1e9)
            for p in racy:
                before = clock()
                st = os.stat(p)
                with open(p, "rb") as f:
                    h = xxhash.xxh3_128_hexdigest(f.read())
                if before > max(st.st_mtime_ns, st.st_ctime_ns):
                    statc[p] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, h]
                else:
                    statc.pop(p, None)
        def hashed(p):  # a file's hash by the stat cache, read only if its stat differs; None if missing
            h = hashes.get(p)
            if h is None:
                try:
                    st = os.stat(p)
                except FileNotFoundError:
                    return None
                e = statc.get(p)
                if e and e[0] == st.st_size and e[1] == st.st_mtime_ns and e[2] == st.st_ino and e[3] == st.st_ctime_ns:
                    h = e[4]
                else:
                    before = clock()
                    with open(p, "rb") as f:
                        h = xxhash.xxh3_128_hexdigest(f.read())
                    note(p, st, h, before)
                hashes[p] = h
            return h
    stages = [line.split() for line in open(listing).read().splitlines()]  # out dep...
    program = next(os.path.join(d, cmd) for d in os.environ["PATH"].split(":")
                   if os.access(os.path.join(d, cmd), os.X_OK))
    made = {s[0]: i for i, s in enumerate(stages)}
    users = [[] for _ in stages]
    waiting = [0] * len(stages)
    for i, s in enumerate(stages):
        for d in s[1:]:
            j = made.get(d)
            if j is not None:
                users[j].append(i)
                waiting[i] += 1
    # Decide as make does: a stage runs if its output is missing or older than a dep,
    # or a stage it depends on runs.
    mtime = {}
    def mt(p):
        t = mtime.get(p)
        if t is None:
            try:
                t = os.stat(p).st_mtime_ns
            except FileNotFoundError:
                t = -1
            mtime[p] = t
        return t
    dirty = [False] * len(stages)
    for i, s in enumerate(stages):  # (listed in layer order: deps first)
        if STATE:  # by content, as STATE.md says: the record, the deps' and the output's hashes
            rec = lock.get(s[0])
            dirty[i] = (rec is None or rec[0] != cmd or any(d in made and dirty[made[d]] for d in s[1:])
                        or [[d, hashed(d)] for d in s[1:]] != rec[1] or hashed(s[0]) != rec[2])
            continue
        out = mt(s[0])
        dirty[i] = out < 0 or any(mt(d) > out or (d in made and dirty[made[d]]) for d in s[1:])
    run = [i for i, s in enumerate(stages) if dirty[i]]
    left = {i for i in run}
    for i in run:
        waiting[i] = sum(1 for d in stages[i][1:] if d in made and made[d] in left)
    ready = [i for i in run if not waiting[i]]
    null = os.open("/dev/null", os.O_RDONLY)
    ep = select.epoll() if PIPE else None
    running = {}  # pid -> stage;
    pipes = {}  # read end -> pid
    if CONTRACT:
        import mmap, signal
        fifo = f"{os.environ.get('TMPDIR', '/tmp')}/floor-pool-{os.getpid()}"
        os.mkfifo(fifo, 0o600)
        keep = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # the pool's own ends, its tokens in it
        os.write(keep, b"+" * (jobs - 1))
        table_fd = os.open(".floor-lifeline", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(table_fd, 64 * 1024)
        table = mmap.mmap(table_fd, 64 * 1024)
        free_lines = list(range(1024))
        lines = {}  # pid -> its line in the table
        marks = 0
        dirs = {}  # (device, inode) of an output's directory -> outside /dev and /proc
        defaults = (signal.SIGPIPE, signal.SIGXFSZ)
        environ = dict(os.environ)
    def start(i):
        s = stages[i]
        actions = [(os.POSIX_SPAWN_DUP2, null, 0),
                   (os.POSIX_SPAWN_OPEN, 1, s[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)]
        if PIPE:
            r, w = os.pipe()
            actions.append((os.POSIX_SPAWN_DUP2, w, 2))
        if CONTRACT:
            global marks
            out, parent = s[0], os.path.dirname(s[0]) or "."
            try:
                os.lstat(out)
            except FileNotFoundError:
                pass
            else:
                os.unlink(out)
            st = os.stat(parent)
            if (st.st_dev, st.st_ino) not in dirs:
                dirs[st.st_dev, st.st_ino] = not os.path.realpath(parent).startswith(("/dev/", "/proc/"))
            marks += 1
            line = free_lines.pop()
            table[line * 64 : line * 64 + 64] = f"mark {marks:08x}".encode().ljust(64)
            pool_r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            pool_w = os.open(fifo, os.O_WRONLY)
            env = {**environ, "MAKEFLAGS": f" -j{jobs} --jobserver-auth={pool_r},{pool_w}",
                   "PIVOT_LIFELINE": f"{os.getpid()}.{marks:08x}", "PIVOT_STAGE": out}
            actions += [(os.POSIX_SPAWN_DUP2, pool_r, pool_r), (os.POSIX_SPAWN_DUP2, pool_w, pool_w)]
            pid = os.posix_spawn(program, [cmd, *s[1:]], env, file_actions=actions, setsid=True, setsigdef=defaults)
            os.close(pool_r)
            os.close(pool_w)
            table[line * 64 : line * 64 + 64] = f"group {pid}".encode().ljust(64)
            lines[pid] = line
        else:
            pid = os.posix_spawn(program, [cmd, *s[1:]], os.environ, file_actions=actions)
        if PIPE:
            os.close(w)
            pipes[r] = pid
            ep.register(r, select.EPOLLIN)
        running[pid] = i
    busy_ns = int(os.environ.get("FLOOR_BUSY_US", "0")) * 1000
    def ended(i):
        s = stages[i]
        if busy_ns:  # --busy: the loop's own CPU per stage, made longer
            until = time.thread_time_ns() + busy_ns
            while time.thread_time_ns() < until:
                pass
        if STATE:
            before = clock()
            st = os.stat(s[0])
        if HASH:
            with open(s[0], "rb") as f:
                data = f.read()
            digest = xxhash.xxh3_128_hexdigest(data)
        if STATE:
            note(s[0], st, digest, before)
            hashes[s[0]] = digest
            rec = lock[s[0]] = [cmd, [[d, hashed(d)] for d in s[1:]], digest]
            journal.write(msgpack.packb([s[0], rec]))
            pack.write(data)
        elif RECORD:
            deps = [(d, os.stat(d).st_mtime_ns) for d in s[1:]]
            journal.write(msgpack.packb([s[0], digest, deps]))
            pack.write(data)
        for u in users[i]:
            if u in left:
                waiting[u] -= 1
                if not waiting[u]:
                    ready.append(u)
    todo = len(run)
    cpu0 = time.process_time()  # the loop's own CPU (its children's not counted), for the report
    while todo:
        while ready and len(running) < jobs:
            start(ready.pop())
        if PIPE:
            for fd, _ in ep.poll():
                if os.read(fd, 65536):
                    continue
                ep.unregister(fd)
                os.close(fd)
                pid = pipes.pop(fd)
                _, status = os.waitpid(pid, 0)
                assert status == 0, status
                i = running.pop(pid)
                if CONTRACT:
                    line = lines.pop(pid)
                    table[line * 64 : line * 64 + 64] = bytes(64)
                    free_lines.append(line)
                ended(i)
                todo -= 1
        else:
            pid, status = os.waitpid(-1, 0)
            assert status == 0, status
            ended(running.pop(pid))
            todo -= 1
    print("loop-cpu", time.process_time() - cpu0, len(run), flush=True)
    if CONTRACT:
        os.unlink(fifo)
    if STATE and run:
        save("floor.lock", dict(sorted(lock.items())))
        if kept is not None:  # resident: the racy stamps settled once the client has its answer
            AFTER.append(lambda: (settle(), save(".floor-stat", statc)))
        else:
            settle()
            save(".floor-stat", statc)
    """
)


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=compare.COMMANDS, default="small")
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--levels", default=",".join(LEVELS))
    ap.add_argument(
        "--pivotbuild", action="store_true", help="pivotbuild itself builds the lattice too (a row of its own)"
    )
    ap.add_argument(
        "--resident",
        action="store_true",
        help="also `+state` run by one process kept between builds, reached by a client in C and one in Python",
    )
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="US",
        help="each loop also burns US microseconds of CPU per stage it ends (a row per level, `LEVEL+US`)",
    )
    args = ap.parse_args(argv)
    levels = args.levels.split(",")
    ninja = compare.find("ninja")
    if ninja is None:
        raise SystemExit("floor.py: ninja is not installed (pip install ninja)")
    stages = compare.lattice(args.width, args.depth)
    cmd = compare.COMMANDS[args.shape]
    with tempfile.TemporaryDirectory(prefix="pvfloor-") as tmp:
        scratch = Path(tmp)
        (scratch / "loop.py").write_text(LOOP)
        (scratch / "stages").write_text("".join(f"{s.out} {' '.join(s.deps)}\n" for s in stages))
        seed = scratch / "seed"
        compare.generate(seed, stages, "ninja", args.shape)
        commands = {"ninja": [ninja, "-j", str(args.jobs)]}
        envs: dict[str, dict[str, str]] = {}
        seeds = {"pivotbuild": scratch / "seed-pivotbuild"}
        if args.pivotbuild:
            compare.generate(seeds["pivotbuild"], stages, "pivotbuild", args.shape)
            commands["pivotbuild"] = [*compare.pivotbuild_command(), "-j", str(args.jobs), "-s"]
        for level in levels:
            loop = [str(scratch / "loop.py"), level, str(args.jobs), cmd, str(scratch / "stages")]
            commands[level] = [sys.executable, *loop]
            if args.busy:
                commands[f"{level}+{args.busy}"] = commands[level]
                envs[f"{level}+{args.busy}"] = {**os.environ, "FLOOR_BUSY_US": str(args.busy)}
        residents = floor_resident.start(scratch, args.jobs, cmd) if args.resident else {}
        for name, (command, _) in residents.items():
            commands[name] = command
        times: dict[str, dict[str, list[float]]] = {name: {"clean": [], "incr": []} for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}  # each clean build's loop CPU a stage
        for r in range(args.rounds):
            for name, command in commands.items():
                tree = scratch / f"t-{name}"
                shutil.rmtree(tree, ignore_errors=True)
                shutil.copytree(seeds.get(name, seed), tree, symlinks=True)
                wall, cpu = _timed(command, tree, envs.get(name))
                times[name]["clean"].append(wall)
                if cpu is not None:
                    cpus[name].append(cpu)
                compare.check_outputs(tree, stages, args.shape, name)
                compare.edit(tree, args.width, args.depth, r)
                times[name]["incr"].append(_timed(command, tree, envs.get(name))[0])
                compare.check_outputs(tree, stages, args.shape, name)
        for _, process in residents.values():
            process.kill()
            process.wait()
        base = {k: statistics.median(v) for k, v in times["ninja"].items()}
        print(f"{len(stages)} stages ({args.shape}), -j{args.jobs}, {args.rounds} rounds: medians, seconds (x ninja)")
        print(f"{'loop':<12}{'clean':>16}{'incremental':>18}{'loop CPU/stage':>16}")
        for name, t in times.items():
            c, i = statistics.median(t["clean"]), statistics.median(t["incr"])
            cpu = f"{statistics.median(cpus[name]):>13.0f} us" if cpus[name] else ""
            print(f"{name:<12}{c:>9.3f} ({c / base['clean']:.2f}x){i:>11.3f} ({i / base['incr']:.2f}x){cpu}")
    return 0


def _timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float | None]:
    """The command's wall time, and for one of our loops its own CPU per stage
    run in its loop (microseconds; None for ninja, or a run with no stage)."""
    t0 = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    wall = time.perf_counter() - t0
    for line in out.splitlines():
        if line.startswith("loop-cpu "):
            seconds, ran = line.split()[1:]
            return wall, float(seconds) * 1e6 / int(ran) if int(ran) else None
    return wall, None


if __name__ == "__main__":
    raise SystemExit(main())
