"""Remotes: where cache objects and run-cache entries go to be shared.

A remote is anything with the operations of `Remote`, addressed by
paths in the cache's own layout (`objects/ab/cdef...`, `runs/<ab>/<stage>-<inputs>`).
`DirectoryRemote` is the first; an object-store backend implements the same
Protocol and nothing that calls it changes.
"""

from __future__ import annotations

from pathlib import Path

from pivotbuild.structs import Protocol


class Remote(Protocol):
    def exists(self, rel: str) -> bool:
        """Whether the remote holds the file `rel`."""

    def size(self, rel: str) -> int | None:
        """The size of the file `rel`, or None if the remote does not hold it."""

    def list_dir(self, rel: str) -> list[str]:
        """Names in the remote directory `rel` (empty if there is none)."""

    def put(self, src: Path, rel: str) -> None:
        """Upload `src` as `rel`, atomically: never a partial `rel`."""

    def write(self, rel: str, data: bytes) -> None:
        """Upload `data` as `rel`, atomically (a small object: see `put`)."""

    def get(self, rel: str, dest: Path) -> None:
        """Download `rel` to the local path `dest`."""

    def read(self, rel: str) -> bytes:
        """The whole of the file `rel` (a small one: see `size`)."""

    def remove(self, rel: str) -> None:
        """Delete the file `rel` (a corrupt object, so that a push replaces it);
        nothing if it is not there."""


def open_remote(root: Path, name: str, url: str, settings: dict[str, str]) -> Remote:
    """The remote `url` names, checked usable (ConfigError or RemoteError, one
    line, if not): a directory that exists, or an object store that answers."""
    from pivotbuild.remote import config

    config.check_url(url, root, settings)
    if config.is_object_store(url):
        from pivotbuild.remote.objectstore import ObjectStoreRemote

        store = ObjectStoreRemote(name, url, settings)
        store.check()
        return store
    from pivotbuild.remote.directory import DirectoryRemote

    where = config.directory_of(url, root)
    if not where.is_dir():
        raise config.ConfigError(f"remote {name}: {where} is not a directory; create it, or mount the share")
    return DirectoryRemote(where)
