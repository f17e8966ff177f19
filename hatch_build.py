"""Hatchling build hook: compiles pivotbuild's C parts where it can.

Four of them, each optional, each with a Python equivalent:

- `pivotbuild/build/executors/_clonespawn.c`, an extension module, starts a
  stage's process without making the build wait for its exec (spawn.py says
  why that matters).  It is compiled here with `$CC`, else the compiler
  Python was built with, into the package beside its source, so that both an
  installed wheel and an editable install (`pip install -e .`: run it again
  after editing the C file) find it.  Where it cannot be compiled (no C
  compiler or Python headers, not Linux on x86-64 or AArch64) the wheel is
  built without it, and pivotbuild starts stages with posix_spawn instead:
  the same processes, slower (docs/performance.md).
  `PIVOTBUILD_NO_EXTENSION=1` builds without it on purpose.
- `pivotbuild/state/_stamps.c`, an extension module, checks a seal's stamps
  against the file system in one pass (stamptable.py): the no-op's one real
  cost, 2.5 times faster than in Python.  Built and left out as the first.
- `pivotbuild/build/executors/_nearwake.c`, an extension module, is the
  build loop's wait (poller.py): the loop is woken on the core a stage's exit
  leaves free, not queued behind the other stage (the C file says how and
  why).  Built and left out as the first.
- `bin/launcher.c`, a program: the `pivotbuild` command itself, which hands a
  build to a build server without starting Python (docs/server.md, "The
  launcher") and otherwise runs the Python program, `bin/pivotbuild`,
  installed beside it as `pivotbuild-python`.  Compiled into
  `build/launcher/pivotbuild`; where it cannot be (or with
  `PIVOTBUILD_NO_LAUNCHER=1`), `bin/pivotbuild` is installed as `pivotbuild`,
  as it was before the launcher.

Run as a script, `python hatch_build.py [TREE]` compiles it in place in TREE
(default: this checkout) without hatchling, as an editable install does:
after editing the C file, or for a source tree run from its directory
(benchmarks/ab.py does it for each version it times).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # (run as a script, below: hatchling is only in an install's build environment)
    BuildHookInterface = object

SOURCE = Path("pivotbuild/build/executors/_clonespawn.c")
STAMPS_SOURCE = Path("pivotbuild/state/_stamps.c")
NEARWAKE_SOURCE = Path("pivotbuild/build/executors/_nearwake.c")
# Each extension, and what pivotbuild does where it is not built.
EXTENSIONS = {
    SOURCE: "stages start by posix_spawn",
    STAMPS_SOURCE: "stamps are checked in Python",
    NEARWAKE_SOURCE: "the build loop waits in select.epoll",
}
LAUNCHER_SOURCE = Path("bin/launcher.c")
LAUNCHER = Path("build/launcher/pivotbuild")


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        if os.environ.get("PIVOTBUILD_NO_LAUNCHER") != "1" and sys.platform.startswith("linux"):
            if compile_launcher(root):
                # (keyed by source, as pyproject's shared-scripts: this replaces its `pivotbuild`)
                build_data["shared_scripts"][LAUNCHER.as_posix()] = "pivotbuild"
                build_data["shared_scripts"]["bin/pivotbuild"] = "pivotbuild-python"
                build_data["pure_python"] = False
                build_data["infer_tag"] = True
        if os.environ.get("PIVOTBUILD_NO_EXTENSION") == "1" or not sys.platform.startswith("linux"):
            return
        for source in EXTENSIONS:
            built = built_path(source)
            if _compile(root / source, root / built) and version != "editable":
                build_data["artifacts"].append(built.as_posix())
                build_data["pure_python"] = False
                build_data["infer_tag"] = True


def built_path(source: Path = SOURCE) -> Path:
    """Where an extension goes, relative to the tree: beside its source."""
    return source.with_name(source.stem + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))


def compile_launcher(root: Path) -> bool:
    """The launcher compiled into `root / LAUNCHER`; False, saying why, where it cannot be."""
    target = root / LAUNCHER
    target.parent.mkdir(parents=True, exist_ok=True)
    return _built(
        ["-O2", "-Wall", str(root / LAUNCHER_SOURCE)], target, "the launcher", "`pivotbuild` is the Python program"
    )


def _compile(source: Path, target: Path) -> bool:
    """`source` (an extension) compiled and linked into `target`; False, saying why, where it cannot be."""
    include = sysconfig.get_paths()["include"]
    flags = [
        "-shared",
        "-fPIC",
        "-O2",
        "-fno-stack-protector",  # (the child's code reads no TLS: see the C file)
        "-Wall",
        "-pthread",  # (_stamps: its second thread of stats; _nearwake: its thread that waits for exits)
        f"-I{include}",
        str(source),
    ]
    otherwise = {path.name: why for path, why in EXTENSIONS.items()}.get(source.name, "")
    return _built(flags, target, source.stem, otherwise)


def _built(flags: list[str], target: Path, what: str, otherwise: str) -> bool:
    """The C compiler run with `flags` into `target`; False, saying why and
    what pivotbuild does `otherwise`, where it fails (no `target` left then:
    not an older build of it, in an editable tree)."""
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")  # (CC first, as setuptools)
    try:
        done = subprocess.run(
            [*compiler, *flags, "-o", str(target)], capture_output=True, text=True, check=False, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    else:
        if done.returncode == 0:
            return True
        why = done.stderr
    print(f"pivotbuild: {what} not built; {otherwise}:\n{why}", file=sys.stderr)
    target.unlink(missing_ok=True)
    return False


if __name__ == "__main__":
    tree = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    built = [_compile(tree / source, tree / built_path(source)) for source in EXTENSIONS if (tree / source).is_file()]
    sys.exit(0 if all(built) else 1)
