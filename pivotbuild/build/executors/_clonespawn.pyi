"""Starting a process without waiting for its exec: _clonespawn.c (built at install where it can be)."""

from collections.abc import Sequence

API: int

def start(
    program: str,
    search: str | None,
    argv: Sequence[str],
    env: dict[str, str],
    unblock: bool,
    acts: Sequence[object],
    open_path: object,
    open_mode: object,
    defaults: int,
    shell: tuple[str, Sequence[str], dict[str, str] | None, int] | None,
    /,
) -> tuple[int, object]: ...
def outcome(block: object, /) -> tuple[int, bool]: ...
