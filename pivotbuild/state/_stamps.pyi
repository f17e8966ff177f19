"""The seal's stamps checked in one pass: _stamps.c (built at install where it can be)."""

API: int

def changed(names: list[bytes], flat: list[int], lo: int, hi: int, skip: set[int], /) -> list[int] | None: ...
