"""What a recorded dep or output is: the `kind` of a `FileRecord`.

Defined here, apart from the records, so that the no-op fast path (the seal)
can name them without importing dataclasses.  Not to be confused with the
kinds of entries inside a directory's manifest (`hashing.ENTRY_*`).
"""

ABSENT, FILE, DIR, GLOB = "absent", "file", "dir", "glob"
