"""`os.environ` made another environment by what differs: a build server
takes each client's environment so (cli/server.py), and a `py:` stage's
runner its stage's (build/executors/pyrunner.py).  Imports nothing but `os`:
the runner imports little (a module it imports is the one its stage gets)."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # (not typing's)
if TYPE_CHECKING:
    from collections.abc import Mapping


def become(env: Mapping[str, str]) -> None:
    """`os.environ` made `env`, touching only what differs: each change is a
    `putenv` (a server's clearing and filling it again took 0.3 ms a build,
    for an environment the same but for a few variables, if any), and in a
    forked child every write to an object it shares copies a page."""
    environ = os.environ
    for key in [key for key in environ if key not in env]:
        del environ[key]
    for key, value in env.items():
        if environ.get(key) != value:
            environ[key] = value
