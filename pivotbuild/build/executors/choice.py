"""Which executor runs a build's stages: `--executor`, else `[executor]` in
`.pivot/config.toml`, else this machine (STATE.md, Executors).

Chosen per build, by the engine, so every way into a build (the command
line, its fast path, watch mode, the API) chooses alike.  The Dask executor's
module, and Dask itself, are imported only when it is chosen.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pivotbuild.errors import PivotError
from pivotbuild.remote.config import Config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pivotbuild.build.engine import ExecutorFactory

DASK = "dask://"


class ExecutorError(PivotError):
    """The chosen executor cannot be used: a malformed choice, Dask not
    installed, no remote for it, or a scheduler that does not answer."""


NO_CHECKOUT_HERE = (
    "--no-checkout leaves the outputs on the remote, which only the dask executor fills;"
    " add --executor dask://HOST:PORT (or set [executor] in .pivot/config.toml), or drop --no-checkout"
)


def choose(flag: str | None, settings: Config, root: Path, *, no_checkout: bool = False) -> ExecutorFactory:
    """The factory of the executor `flag` (`--executor`) or else `settings`
    names, ready to make the build's executor (a Dask scheduler is connected
    to now: ExecutorError, one line, if it does not answer).  `no_checkout`
    (--no-checkout) needs an executor whose outputs are elsewhere."""
    if flag is not None:
        kind, address = _parse(flag)
    else:
        kind, address = settings.executor, settings.address
    if kind == "local" and no_checkout:
        raise ExecutorError(NO_CHECKOUT_HERE)
    if kind == "local":
        from pivotbuild.build.executors.local import LocalExecutor

        return LocalExecutor
    from pivotbuild.build.executors.dask import dask_factory

    return dask_factory(scheduler_address(address, "[executor] address"), settings, root)


def _parse(flag: str) -> tuple[str, str]:
    if flag == "local":
        return "local", ""
    if flag.startswith(DASK):
        return "dask", scheduler_address(flag, "--executor")
    raise ExecutorError(f"--executor {flag}: use local, or dask://HOST:PORT for a Dask scheduler")


def scheduler_address(address: str, where: str) -> str:
    """`dask://HOST:PORT` or `tcp://HOST:PORT` as Dask takes it (tcp://HOST:PORT)."""
    scheme, _, rest = address.partition("://")
    try:
        port = urlsplit(f"tcp://{rest}").port
    except ValueError:
        port = None
    if scheme not in ("dask", "tcp") or not rest or port is None or "/" in rest:
        raise ExecutorError(f"{where} {address}: name the Dask scheduler as dask://HOST:PORT (or tcp://HOST:PORT)")
    return f"tcp://{rest}"
