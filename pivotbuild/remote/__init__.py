"""Remotes: where cache objects and run-cache entries go to be shared.

A remote is anything with the four operations of `Remote`, addressed by
paths in the cache's own layout (`objects/ab/cdef...`, `runs/<ab>/<stage>-<inputs>`).
`DirectoryRemote` is the first; an object-store backend implements the same
Protocol and nothing that calls it changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Remote(Protocol):
    def exists(self, rel: str) -> bool:
        """Whether the remote holds the file `rel`."""
        ...

    def list_dir(self, rel: str) -> list[str]:
        """Names in the remote directory `rel` (empty if there is none)."""
        ...

    def put(self, src: Path, rel: str) -> None:
        """Upload `src` as `rel`, atomically: never a partial `rel`."""
        ...

    def get(self, rel: str, dest: Path) -> None:
        """Download `rel` to the local path `dest`."""
        ...

    def remove(self, rel: str) -> None:
        """Delete the file `rel` (a corrupt object, so that a push replaces it);
        nothing if it is not there."""
        ...
