"""A Unix socket's address, for a path of any length.

`sun_path` holds some 104 to 108 bytes, and a project can sit deeper than
that.  Where Linux's /proc is, a longer path is reached through a short one:
`/proc/self/fd/N/NAME`, N an open descriptor of the socket's directory
(binding and connecting through it act on the socket in that directory).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_SHORT_ENOUGH = 100  # bytes: within sun_path on every system


def at_path(path: Path, op: Callable[[str], T]) -> T:
    """`op(address)`, the address `bind` or `connect` reaches `path` by.
    Raises OSError as they do (FileNotFoundError if the directory is missing)."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= _SHORT_ENOUGH or not os.path.isdir("/proc/self/fd"):
        return op(text)  # (too long without /proc: bind or connect says so)
    flags = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open(path.parent, flags)
    try:
        return op(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)
