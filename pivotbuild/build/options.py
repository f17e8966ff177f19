"""The options of one build, as the command line (or a later caller) gives them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pivotbuild.structs import field, struct


@struct(frozen=True, slots=True)
class BuildOptions:
    """How to build: the command line's flags (CLI.md), `cwd` the directory targets are named from."""

    cwd: Path
    file: Path | None = None
    targets: tuple[str, ...] = ()
    overrides: Mapping[str, str] = field(default_factory=dict)
    jobs: int | None = None  # None: the number of CPUs
    load_average: float | None = None
    mem_limit: int | None = None  # bytes the running stages may reserve (mem:) in all; None: no limit of ours
    keep_going: bool = False
    dry_run: bool = False
    question: bool = False
    always_make: bool = False
    watch: bool = False
    serve: bool = False  # with watch: the agent server
    restart: bool = False  # with watch: a change kills the running stages it affects
    debounce: int | None = None  # with watch: ms of quiet before a batch of changes counts (None: 50)
    all_pipelines: bool = False
    explain: bool = False
    json: bool = False
    quiet: bool = False
    verbose: bool = False
    no_cache: bool = False
    no_commit: bool = False
    no_checkout: bool = False  # with the dask executor: outputs left on the remote (docs/dask.md)
    no_wait: bool = False
    executor: str | None = None  # `--executor`: local or dask://HOST:PORT (None: the project's config says)
